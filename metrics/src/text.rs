//! Writing the text exposition format.

use std::fmt::Write;

/// A metric family's type, as Prometheus knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset by a restart); the name should end in `_total`.
    Counter,
    /// Any value now: depths, states, `*_info` families set to 1.
    Gauge,
    /// `_sum` and `_count` samples (no quantiles): an average over any range.
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Summary => "summary",
        }
    }
}

/// A sample's value; integers stay exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Self::Int(v as u64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Self::Int(u64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

/// A page of metrics being written: open a family, then write its samples.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
    family: String,
}

impl Text {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name` (`[a-zA-Z_:][a-zA-Z0-9_:]*`, fixed in our code)
    /// with its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "metric name {name:?}");
        self.family.clear();
        self.family.push_str(name);
        let _ = write!(self.out, "# HELP {name} ");
        escape_into(&mut self.out, help, false);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.sample_suffixed("", labels, value)
    }

    /// One sample named the family's name plus `suffix` (`_sum`, `_count`).
    pub fn sample_suffixed(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        self.out.push_str(&self.family);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(valid_name(name) && !name.contains(':'), "label {name:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape_into(&mut self.out, value, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::Int(v) => _ = write!(self.out, "{v}"),
            Value::Float(v) if v.is_nan() => self.out.push_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => self.out.push_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => self.out.push_str("-Inf"),
            Value::Float(v) => _ = write!(self.out, "{v}"),
        }
        self.out.push('\n');
        self
    }

    /// A one-sample family.
    pub fn single(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        value: impl Into<Value>,
    ) -> &mut Self {
        self.family(name, kind, help).sample(&[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Backslash and newline are escaped in help text; label values also
/// escape the double quote.
fn escape_into(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut t = Text::new();
        t.family("x_events_total", Kind::Counter, "Events\\seen\nby kind")
            .sample(&[("kind", "exec")], 3u64)
            .sample(&[("kind", "a\"b\\c\nd"), ("x", "")], 0u64);
        t.single("x_up", Kind::Gauge, "Up.", true);
        t.family("x_latency_seconds", Kind::Summary, "Latency.")
            .sample_suffixed("_sum", &[], 0.25)
            .sample_suffixed("_count", &[], 2u64)
            .sample(&[], f64::NAN)
            .sample(&[], f64::INFINITY);
        assert_eq!(
            t.finish(),
            "# HELP x_events_total Events\\\\seen\\nby kind\n\
             # TYPE x_events_total counter\n\
             x_events_total{kind=\"exec\"} 3\n\
             x_events_total{kind=\"a\\\"b\\\\c\\nd\",x=\"\"} 0\n\
             # HELP x_up Up.\n\
             # TYPE x_up gauge\n\
             x_up 1\n\
             # HELP x_latency_seconds Latency.\n\
             # TYPE x_latency_seconds summary\n\
             x_latency_seconds_sum 0.25\n\
             x_latency_seconds_count 2\n\
             x_latency_seconds NaN\n\
             x_latency_seconds +Inf\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("rxsentry_sensor_events_total"));
        assert!(valid_name("_a:b"));
        assert!(!valid_name("9a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
