//! One field's test in a detection item, compiled once at load from its
//! values and modifiers: nothing is parsed or compiled per event.

use std::net::IpAddr;

use regex::Regex;

use crate::field::Field;

/// What a string value is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Anchor {
    Exact,
    Prefix,
    Suffix,
    Contains,
}

/// One value of a field item.
#[derive(Debug)]
pub(crate) enum ValueMatcher {
    /// Plain text (no wildcards): compared with the lowercased field, or
    /// the field as is with `cased`.
    Text {
        anchor: Anchor,
        needle: String,
        /// The value as the rule wrote it (before lowercasing): a path to
        /// watch keeps its case (`crate::paths`).
        written: String,
        cased: bool,
        /// Its index in the field's [`Prefilter`] (set when the rule set is
        /// built; None: cased or empty, checked directly).
        id: Option<usize>,
    },
    /// A value with `*` / `?` wildcards, or a `re` value.
    Regex(Regex),
    /// `cidr`: the field parsed as an address.
    Cidr(Cidr),
    /// `null`: the field is absent or empty.
    Null,
    /// `exists: true|false`.
    Exists(bool),
}

#[derive(Debug)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { net, prefix })
    }

    fn contains(&self, addr: &str) -> bool {
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return false;
        };
        // IPv4-mapped IPv6 peers (as the sensor shows them) match v4 nets.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The field's value as the evaluator hands it over: as is and lowercased.
pub(crate) struct Value<'v> {
    pub raw: &'v str,
    pub lower: &'v str,
    /// Bit `id` set: prefilter needle `id` occurs in `lower` (empty when
    /// the field has no prefilter).
    pub present: &'v [u64],
}

/// One pass over a field finds every case-insensitive text needle of every
/// rule that occurs in it (Aho-Corasick): a needle that does not occur
/// fails its exact, prefix, suffix or contains test without a search of its
/// own, so a long command line is scanned once, not once per needle.
#[derive(Debug)]
pub(crate) struct Prefilter {
    automaton: aho_corasick::AhoCorasick,
    words: usize,
}

impl Prefilter {
    /// None when there are no needles (or the automaton cannot be built:
    /// the matchers then search on their own, as without a prefilter).
    pub(crate) fn new(needles: &[String]) -> Option<Self> {
        if needles.is_empty() {
            return None;
        }
        // A DFA: a few hundred needles, built once per load; the fastest scan.
        let automaton = aho_corasick::AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(needles)
            .ok()?;
        Some(Self {
            automaton,
            words: needles.len().div_ceil(64),
        })
    }

    /// Sets in `present` (resized) the bits of the needles in `lower`.
    pub(crate) fn scan(&self, lower: &str, present: &mut Vec<u64>) {
        present.clear();
        present.resize(self.words, 0);
        for m in self.automaton.find_overlapping_iter(lower) {
            let id = m.pattern().as_usize();
            present[id / 64] |= 1 << (id % 64);
        }
    }
}

fn has(present: &[u64], id: usize) -> bool {
    present
        .get(id / 64)
        .is_some_and(|w| w & (1 << (id % 64)) != 0)
}

impl ValueMatcher {
    /// `value` is None when the event lacks the field.
    pub(crate) fn matches(&self, value: Option<&Value<'_>>) -> bool {
        match self {
            ValueMatcher::Null => value.is_none_or(|v| v.raw.is_empty()),
            ValueMatcher::Exists(want) => value.is_some() == *want,
            ValueMatcher::Text {
                anchor,
                needle,
                cased,
                id,
                ..
            } => value.is_some_and(|v| {
                let hay = if *cased { v.raw } else { v.lower };
                if let Some(id) = id {
                    if !has(v.present, *id) {
                        return false;
                    }
                    if *anchor == Anchor::Contains {
                        return true;
                    }
                }
                match anchor {
                    Anchor::Exact => hay == needle,
                    Anchor::Prefix => hay.starts_with(needle.as_str()),
                    Anchor::Suffix => hay.ends_with(needle.as_str()),
                    Anchor::Contains => hay.contains(needle.as_str()),
                }
            }),
            ValueMatcher::Regex(re) => value.is_some_and(|v| re.is_match(v.raw)),
            ValueMatcher::Cidr(net) => value.is_some_and(|v| net.contains(v.raw)),
        }
    }
}

/// A field item: `Field|mods: value(s)`.
#[derive(Debug)]
pub(crate) struct FieldMatcher {
    pub field: Field,
    pub values: Vec<ValueMatcher>,
    /// `all`: every value must match (else any one).
    pub all: bool,
    /// When every value is a prefiltered needle: their bits, by word. Then
    /// one AND per word rejects the item without looking at each value.
    pub needle_bits: Option<Vec<(usize, u64)>>,
}

impl FieldMatcher {
    /// Sets [`Self::needle_bits`] if every value has a prefilter id.
    pub(crate) fn collect_needle_bits(&mut self) {
        let mut bits: Vec<(usize, u64)> = Vec::new();
        for v in &self.values {
            let ValueMatcher::Text { id: Some(id), .. } = v else {
                self.needle_bits = None;
                return;
            };
            let (word, bit) = (id / 64, 1u64 << (id % 64));
            match bits.iter_mut().find(|(w, _)| *w == word) {
                Some((_, mask)) => *mask |= bit,
                None => bits.push((word, bit)),
            }
        }
        self.needle_bits = Some(bits);
    }

    pub(crate) fn matches(&self, value: Option<&Value<'_>>) -> bool {
        if let (Some(bits), Some(v)) = (&self.needle_bits, value) {
            let word = |w: usize| v.present.get(w).copied().unwrap_or(0);
            let possible = if self.all {
                bits.iter().all(|&(w, mask)| word(w) & mask == mask)
            } else {
                bits.iter().any(|&(w, mask)| word(w) & mask != 0)
            };
            if !possible {
                return false;
            }
        }
        if self.all {
            self.values.iter().all(|m| m.matches(value))
        } else {
            self.values.iter().any(|m| m.matches(value))
        }
    }
}

/// A YAML scalar of a detection item, as Sigma reads it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Text(String),
    Null,
}

/// The modifiers of one field item.
#[derive(Debug, Default)]
pub(crate) struct Modifiers {
    anchor: Option<Anchor>,
    pub all: bool,
    re: bool,
    re_flags: String,
    cidr: bool,
    windash: bool,
    cased: bool,
    exists: bool,
}

impl Modifiers {
    /// Parses `contains|all` etc.; `Err` names the unsupported modifier.
    pub(crate) fn parse<'m>(mods: impl Iterator<Item = &'m str>) -> Result<Self, String> {
        let mut m = Modifiers::default();
        for name in mods {
            let anchor = |m: &mut Modifiers, a| {
                if m.anchor.is_some() {
                    return Err(format!(
                        "modifier `{name}` after another of contains/startswith/endswith"
                    ));
                }
                m.anchor = Some(a);
                Ok(())
            };
            match name {
                "contains" => anchor(&mut m, Anchor::Contains)?,
                "startswith" => anchor(&mut m, Anchor::Prefix)?,
                "endswith" => anchor(&mut m, Anchor::Suffix)?,
                "all" => m.all = true,
                "re" => m.re = true,
                "i" | "m" | "s" if m.re => m.re_flags.push_str(name),
                "cidr" => m.cidr = true,
                "windash" => m.windash = true,
                "cased" => m.cased = true,
                "exists" => m.exists = true,
                other => return Err(format!("modifier `{other}` is not supported")),
            }
        }
        let exclusive = [m.re, m.cidr, m.exists].iter().filter(|b| **b).count();
        if exclusive > 1 || (exclusive == 1 && (m.anchor.is_some() || m.windash)) {
            return Err("modifiers re, cidr and exists combine with no other".into());
        }
        Ok(m)
    }

    /// Compiles one value. `Err` says why it cannot be used.
    pub(crate) fn compile(&self, value: &Scalar) -> Result<Vec<ValueMatcher>, String> {
        let text = match value {
            Scalar::Null if self.anchor.is_none() && !self.re && !self.cidr && !self.exists => {
                return Ok(vec![ValueMatcher::Null]);
            }
            Scalar::Null => return Err("null with a modifier".into()),
            Scalar::Text(t) => t,
        };
        if self.exists {
            return match text.as_str() {
                "true" => Ok(vec![ValueMatcher::Exists(true)]),
                "false" => Ok(vec![ValueMatcher::Exists(false)]),
                _ => Err(format!("exists needs true or false, not `{text}`")),
            };
        }
        if self.cidr {
            return Cidr::parse(text)
                .map(|c| vec![ValueMatcher::Cidr(c)])
                .ok_or_else(|| format!("`{text}` is not a network (a.b.c.d/n)"));
        }
        if self.re {
            let flags = if self.re_flags.is_empty() {
                String::new()
            } else {
                format!("(?{})", self.re_flags)
            };
            return Regex::new(&format!("{flags}{text}"))
                .map(|r| vec![ValueMatcher::Regex(r)])
                .map_err(|e| format!("bad regular expression: {e}"));
        }
        let variants = if self.windash {
            windash_variants(text)
        } else {
            vec![text.clone()]
        };
        variants
            .iter()
            .map(|v| self.compile_text(v))
            .collect::<Result<Vec<_>, _>>()
    }

    fn compile_text(&self, text: &str) -> Result<ValueMatcher, String> {
        let anchor = self.anchor.unwrap_or(Anchor::Exact);
        match parse_wildcards(text) {
            Pattern::Literal(lit) => Ok(ValueMatcher::Text {
                anchor,
                needle: if self.cased {
                    lit.clone()
                } else {
                    lit.to_lowercase()
                },
                written: lit,
                cased: self.cased,
                id: None,
            }),
            Pattern::Wild(body) => {
                let (pre, post) = match anchor {
                    Anchor::Exact => ("^", "$"),
                    Anchor::Prefix => ("^", ""),
                    Anchor::Suffix => ("", "$"),
                    Anchor::Contains => ("", ""),
                };
                let flags = if self.cased { "(?s)" } else { "(?is)" };
                Regex::new(&format!("{flags}{pre}{body}{post}"))
                    .map(ValueMatcher::Regex)
                    .map_err(|e| format!("bad wildcard value `{text}`: {e}"))
            }
        }
    }
}

enum Pattern {
    Literal(String),
    /// A regex body (unanchored) for a value with wildcards.
    Wild(String),
}

/// Sigma's value syntax: `*` any string, `?` one character, `\*` `\?`
/// `\\` the character itself; any other backslash is literal.
fn parse_wildcards(text: &str) -> Pattern {
    let mut literal = String::with_capacity(text.len());
    let mut re = String::with_capacity(text.len() * 2);
    let mut wild = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ ('*' | '?' | '\\')) => {
                    chars.next();
                    literal.push(n);
                    re.push_str(&regex::escape(&n.to_string()));
                }
                _ => {
                    literal.push('\\');
                    re.push_str(r"\\");
                }
            },
            '*' => {
                wild = true;
                re.push_str(".*");
            }
            '?' => {
                wild = true;
                re.push('.');
            }
            c => {
                literal.push(c);
                re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
            }
        }
    }
    if wild {
        Pattern::Wild(re)
    } else {
        Pattern::Literal(literal)
    }
}

/// Most dash variants one windash value may expand to (each dash doubles).
const WINDASH_MAX: usize = 64;

/// `windash`: every `-` or `/` starting a word may be any of the dashes
/// (and the slash) a Windows program accepts.
fn windash_variants(text: &str) -> Vec<String> {
    const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];
    let mut out = vec![String::new()];
    let mut prev_space = true;
    for c in text.chars() {
        if prev_space && DASHES.contains(&c) && out.len() * DASHES.len() <= WINDASH_MAX {
            out = out
                .iter()
                .flat_map(|s| {
                    DASHES.iter().map(move |d| {
                        let mut s = s.clone();
                        s.push(*d);
                        s
                    })
                })
                .collect();
        } else {
            out.iter_mut().for_each(|s| s.push(c));
        }
        prev_space = c.is_whitespace();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(mods: &str, value: &str) -> Vec<ValueMatcher> {
        let m = Modifiers::parse(mods.split('|').filter(|s| !s.is_empty())).expect("modifiers");
        m.compile(&Scalar::Text(value.into())).expect("compiles")
    }

    fn hit(ms: &[ValueMatcher], field: &str) -> bool {
        let lower = field.to_lowercase();
        let v = Value {
            raw: field,
            lower: &lower,
            present: &[],
        };
        ms.iter().any(|m| m.matches(Some(&v)))
    }

    #[test]
    fn plain_values_are_whole_case_insensitive_and_wildcarded() {
        assert!(hit(&one("", "/usr/bin/Curl"), "/usr/bin/curl"));
        assert!(!hit(&one("", "/usr/bin/curl"), "/usr/bin/curl2"));
        assert!(hit(&one("", "/usr/*/curl"), "/usr/local/bin/curl"));
        assert!(hit(&one("", "/tmp/?.sh"), "/tmp/x.sh"));
        assert!(!hit(&one("", "/tmp/?.sh"), "/tmp/xy.sh"));
        // Escaped wildcards are literal.
        assert!(hit(&one("", r"a\*b"), "a*b"));
        assert!(!hit(&one("", r"a\*b"), "axxb"));
        // Regex metacharacters in a wildcard value are literal.
        assert!(hit(&one("contains", "(x)*[y]"), "pre (x) and [y] post"));
    }

    #[test]
    fn anchors_cased_and_windash() {
        assert!(hit(&one("startswith", "/TMP/"), "/tmp/a"));
        assert!(!hit(&one("startswith", "/tmp/"), "/var/tmp/a"));
        assert!(hit(&one("endswith", "/nc"), "/usr/bin/nc"));
        assert!(!hit(&one("endswith", "/nc"), "/usr/bin/ncat"));
        assert!(hit(&one("contains", "-E "), "grep -e x"));
        assert!(!hit(&one("contains|cased", "-E "), "grep -e x"));
        assert!(hit(&one("contains|cased", "-E "), "grep -E x"));
        let w = one("contains|windash", " -enc ");
        assert!(hit(&w, "ps /enc x"));
        assert!(hit(&w, "ps \u{2013}enc x"));
        assert!(hit(&w, "ps -enc x"));
        assert!(!hit(&w, "ps enc x"));
    }

    #[test]
    fn regex_is_cased_unless_flagged_and_cidr_matches_mapped_addresses() {
        assert!(hit(&one("re", "^nc .*-e"), "nc 1.2.3.4 -e /bin/sh"));
        assert!(!hit(&one("re", "^NC"), "nc x"));
        assert!(hit(&one("re|i", "^NC"), "nc x"));
        let net = one("cidr", "10.0.0.0/8");
        assert!(hit(&net, "10.2.3.4"));
        assert!(hit(&net, "::ffff:10.2.3.4"));
        assert!(!hit(&net, "11.0.0.1"));
        assert!(!hit(&net, "not an address"));
        assert!(hit(&one("cidr", "fe80::/10"), "fe80::1"));
        assert!(hit(&one("cidr", "0.0.0.0/0"), "8.8.8.8"));
    }

    #[test]
    fn refusals_say_why() {
        let err = |mods: &str| Modifiers::parse(mods.split('|')).expect_err("refused");
        assert_eq!(
            err("base64offset"),
            "modifier `base64offset` is not supported"
        );
        assert!(err("re|contains").contains("combine"));
        assert!(err("contains|endswith").contains("after another"));
        let m = Modifiers::parse(["re"].into_iter()).expect("re");
        assert!(m.compile(&Scalar::Text("(".into())).is_err());
        let m = Modifiers::parse(["cidr"].into_iter()).expect("cidr");
        assert!(m.compile(&Scalar::Text("10.0.0.0/33".into())).is_err());
    }

    #[test]
    fn null_and_exists() {
        let m = Modifiers::parse(std::iter::empty()).expect("none");
        let null = m.compile(&Scalar::Null).expect("null");
        assert!(null[0].matches(None));
        let v = Value {
            raw: "",
            lower: "",
            present: &[],
        };
        assert!(null[0].matches(Some(&v)));
        let v = Value {
            raw: "x",
            lower: "x",
            present: &[],
        };
        assert!(!null[0].matches(Some(&v)));
        let ex = one("exists", "true");
        assert!(ex[0].matches(Some(&v)) && !ex[0].matches(None));
    }
}
