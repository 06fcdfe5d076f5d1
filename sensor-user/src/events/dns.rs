//! The questions of a DNS query, from the first bytes of a UDP payload the
//! kernel copied. The bytes come from any process on the box (and so from
//! an attacker): every read is bounds-checked, compression pointers are
//! followed a bounded number of times, and garbage is an error, never a
//! panic.

/// Questions reported per query at most (real queries carry one).
const MAX_QUESTIONS: usize = 4;
/// RFC 1035: a name is at most 255 bytes on the wire.
const MAX_NAME: usize = 255;
/// Compression pointers followed per name at most.
const MAX_JUMPS: usize = 16;
const HEADER_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQuestion {
    /// Dotted name; bytes outside printable ASCII (and `.` or `\` inside a
    /// label) escaped as `\DDD`, as dig prints them.
    pub name: String,
    pub qtype: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("shorter than a DNS header ({0} bytes)")]
    NoHeader(usize),
    #[error("a DNS response, not a query")]
    Response,
    #[error("no question in the query")]
    NoQuestion,
    #[error("cut off after {parsed} question(s) (only the start of the datagram is copied)")]
    Truncated { parsed: usize },
    #[error("malformed name: {0}")]
    BadName(&'static str),
}

/// The questions of `payload`. `Err(Truncated)` still means the ones
/// before the cut were parsed: they are returned by [`parse_query_lossy`].
pub fn parse_query(payload: &[u8]) -> Result<Vec<DnsQuestion>, DnsError> {
    let (questions, error) = parse_query_lossy(payload);
    match error {
        Some(e) => Err(e),
        None => Ok(questions),
    }
}

/// What could be parsed, and the reason parsing stopped early, if any.
pub fn parse_query_lossy(payload: &[u8]) -> (Vec<DnsQuestion>, Option<DnsError>) {
    let mut questions = Vec::new();
    let Some(header) = payload.get(..HEADER_LEN) else {
        return (questions, Some(DnsError::NoHeader(payload.len())));
    };
    if header[2] & 0x80 != 0 {
        return (questions, Some(DnsError::Response));
    }
    let qdcount = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if qdcount == 0 {
        return (questions, Some(DnsError::NoQuestion));
    }
    let mut pos = HEADER_LEN;
    for _ in 0..qdcount.min(MAX_QUESTIONS) {
        let parsed = questions.len();
        let (name, next) = match read_name(payload, pos) {
            Ok(v) => v,
            Err(NameError::Short) => return (questions, Some(DnsError::Truncated { parsed })),
            Err(NameError::Bad(why)) => return (questions, Some(DnsError::BadName(why))),
        };
        let Some(t) = payload.get(next..next + 4) else {
            return (questions, Some(DnsError::Truncated { parsed }));
        };
        questions.push(DnsQuestion {
            name,
            qtype: u16::from_be_bytes([t[0], t[1]]),
        });
        pos = next + 4;
    }
    (questions, None)
}

enum NameError {
    /// Ran past the copied bytes.
    Short,
    Bad(&'static str),
}

/// The name at `start` and the offset just after it (after the first
/// pointer, if the name is compressed).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), NameError> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut pos = start;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(NameError::Short)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let after = end.unwrap_or(pos + 1);
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((name, after));
            }
            0x00 => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(NameError::Short)?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME {
                    return Err(NameError::Bad("longer than 255 bytes"));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                escape_label(&mut name, label);
                pos += 1 + label.len();
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(NameError::Short)?;
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(NameError::Bad("compression loop"));
                }
                end.get_or_insert(pos + 2);
                pos = (usize::from(len & 0x3f) << 8) | usize::from(low);
            }
            _ => return Err(NameError::Bad("reserved label type")),
        }
    }
}

fn escape_label(out: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
}

/// The usual name of a query type, else `TYPE<n>` (RFC 3597).
pub fn type_name(qtype: u16) -> String {
    let known = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{qtype}"),
    };
    known.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a resolver library sends it.
    pub fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn parses_a_query() {
        let q = parse_query(&query("pos.example.com", 28)).unwrap();
        assert_eq!(
            q,
            [DnsQuestion {
                name: "pos.example.com".into(),
                qtype: 28
            }]
        );
        assert_eq!(type_name(28), "AAAA");
        assert_eq!(type_name(999), "TYPE999");
        assert_eq!(parse_query(&query("", 2)).unwrap()[0].name, ".");
    }

    #[test]
    fn odd_bytes_are_escaped() {
        let mut q = query("ab.c", 1);
        q[13] = 0x1b; // ESC inside the first label
        assert_eq!(parse_query(&q).unwrap()[0].name, "\\027b.c");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse_query(&[1, 2, 3]), Err(DnsError::NoHeader(3)));
        let mut response = query("a.b", 1);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(DnsError::Response));
        let mut none = query("a.b", 1);
        none[5] = 0;
        assert_eq!(parse_query(&none), Err(DnsError::NoQuestion));
        let full = query("kiosk.example.org", 1);
        for cut in HEADER_LEN..full.len() {
            assert_eq!(
                parse_query(&full[..cut]),
                Err(DnsError::Truncated { parsed: 0 }),
                "cut at {cut}"
            );
        }
        // A pointer to itself.
        let mut looped = query("", 1);
        looped.truncate(HEADER_LEN);
        looped.extend_from_slice(&[0xc0, HEADER_LEN as u8, 0, 1, 0, 1]);
        assert_eq!(
            parse_query(&looped),
            Err(DnsError::BadName("compression loop"))
        );
        let mut reserved = query("a", 1);
        reserved[HEADER_LEN] = 0x80;
        assert!(matches!(parse_query(&reserved), Err(DnsError::BadName(_))));
        // Labels adding up past 255 bytes.
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            parse_query(&query(&long, 1)),
            Err(DnsError::BadName("longer than 255 bytes"))
        );
    }

    #[test]
    fn every_prefix_and_random_bytes_are_safe() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32 * 7) & 0xff) as u8)
                .collect();
            let _ = parse_query_lossy(&bytes);
        }
    }

    #[test]
    fn several_questions_and_pointers() {
        let mut q = query("a.example", 1);
        q[5] = 2;
        // Second question: "www" + pointer to "example" (offset 14).
        q.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, 14, 0, 28, 0, 1]);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].name, "www.example");
        assert_eq!(parsed[1].qtype, 28);
    }
}
