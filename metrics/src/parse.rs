//! Reading the text exposition format back (samples only; `# ` lines are
//! skipped): for `rxsentry-sensor status` and the tests.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not a sample.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: &'static str,
}

/// Every sample of a page, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The samples of family `name` (exact name, suffixes included).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample of `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.named(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
    }

    /// The sum over every sample of `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.named(name).map(|s| s.value).sum()
    }
}

/// Parses a page; a malformed sample line is an error, never skipped.
pub fn parse(text: &str) -> Result<Samples, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why| ParseError { line: i + 1, why };
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .ok_or(err("no value"))?;
        let (name, mut rest) = line.split_at(name_end);
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = parse_labels(after, &mut labels).ok_or(err("bad labels"))?;
        }
        let value = rest
            .split_ascii_whitespace()
            .next()
            .ok_or(err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(Samples(samples))
}

/// Parses `a="x",b="y"}` and returns what follows the brace.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim().to_owned();
        let body = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut chars = body.char_indices();
        let mut value = String::new();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '"' => break at,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        };
        out.push((name, value));
        s = body[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Text};

    #[test]
    fn what_text_writes_parses_back_with_escapes_undone() {
        let odd = "a\"b\\c\nd}e,f=\"";
        let mut t = Text::new();
        t.family("m_total", Kind::Counter, "help \\ \n")
            .sample(&[("rule", odd), ("engine", "sigma")], 7u64)
            .sample(&[("rule", "")], 1u64);
        t.single("g", Kind::Gauge, "g", 0.5);
        let s = parse(&t.finish()).unwrap();
        assert_eq!(s.0.len(), 3);
        assert_eq!(s.0[0].label("rule"), Some(odd));
        assert_eq!(s.get("m_total", &[("engine", "sigma")]), Some(7.0));
        assert_eq!(s.get("m_total", &[("rule", "")]), Some(1.0));
        assert_eq!(s.sum("m_total"), 8.0);
        assert_eq!(s.get("g", &[]), Some(0.5));
        assert_eq!(s.get("missing", &[]), None);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(parse("a").unwrap_err().why, "no value");
        assert_eq!(parse("# c\na{b=\"x} 1").unwrap_err().line, 2);
        assert_eq!(parse("a x").unwrap_err().why, "bad value");
        assert_eq!(parse("a{b} 1").unwrap_err().why, "bad labels");
        assert_eq!(parse("a +Inf 123").unwrap().0[0].value, f64::INFINITY);
    }
}
