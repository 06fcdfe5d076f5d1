//! Recorded events read back: the JSON lines `rxsentry tail --json` and
//! `rxsentry events --json` print, as protobuf events again (exec, file
//! and network events: what rules look at). The keys and the names of
//! kinds and operations come from the renderer itself (`json::key`, and
//! each name list inverted), so the two cannot drift apart.

use proto::telemetry::v1::{
    Event, ExecEvent, FileEvent, NetworkEvent, Process, event::Kind, file_event::Operation,
    network_event,
};
use serde_json::Value;

use super::{file_operation, json, json::key, kind_and_process};

/// Why a line is not a recorded event rules can look at.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Valid, but not an exec, file or network event (a record, an alert).
    OtherKind(String),
    /// Not JSON, or a field with the wrong type.
    Invalid(String),
}

/// One JSON line as an event.
pub fn parse_line(line: &str) -> Result<Event, Skip> {
    let v: Value = serde_json::from_str(line).map_err(|e| Skip::Invalid(e.to_string()))?;
    parse(&v)
}

fn parse(v: &Value) -> Result<Event, Skip> {
    let kind = text(v, key::KIND)?;
    let process = match v.get(key::PROCESS) {
        Some(p) if p.is_object() => Some(Process {
            pid: number(p, key::PID)?,
            ppid: number(p, key::PPID)?,
            uid: number(p, key::UID)?,
            comm: text(p, key::COMM)?,
            exe: text(p, key::EXE)?,
            ..Process::default()
        }),
        _ => None,
    };
    let kind = match kind_named(&kind) {
        Some(Kind::Exec(_)) => Kind::Exec(ExecEvent {
            process,
            filename: text(v, key::FILENAME)?,
            argv: match v.get(key::ARGV) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| wrong(key::ARGV))?,
                _ => Vec::new(),
            },
            ..ExecEvent::default()
        }),
        Some(Kind::File(_)) => {
            let op = text(v, key::OPERATION)?;
            let operation = file_operation_named(&op).ok_or_else(|| wrong(key::OPERATION))?;
            Kind::File(FileEvent {
                process,
                operation: operation as i32,
                path: text(v, key::PATH)?,
                new_path: text(v, key::NEW_PATH)?,
                result: number(v, key::RESULT)?,
                repeats: number(v, key::REPEATS)?,
                ..FileEvent::default()
            })
        }
        Some(Kind::Network(_)) => {
            let op = text(v, key::OP)?;
            let protocol = text(v, key::PROTOCOL)?;
            Kind::Network(NetworkEvent {
                process,
                op: named(NETWORK_OPS, json::network_op, &op).ok_or_else(|| wrong(key::OP))? as i32,
                protocol: named(PROTOCOLS, json::network_protocol, &protocol)
                    .ok_or_else(|| wrong(key::PROTOCOL))? as i32,
                local_address: text(v, key::LOCAL_ADDRESS)?,
                local_port: number(v, key::LOCAL_PORT)?,
                remote_address: text(v, key::REMOTE_ADDRESS)?,
                remote_port: number(v, key::REMOTE_PORT)?,
                result: text(v, key::RESULT)?,
                ..NetworkEvent::default()
            })
        }
        _ => return Err(Skip::OtherKind(kind)),
    };
    Ok(Event {
        timestamp_ns: number(v, key::TIMESTAMP_NS)?,
        kind: Some(kind),
        ..Event::default()
    })
}

fn wrong(key: &str) -> Skip {
    Skip::Invalid(format!("field `{key}` has an unexpected value"))
}

/// A string field; absent or null is empty.
fn text(v: &Value, key: &str) -> Result<String, Skip> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong(key)),
    }
}

/// An integer field; absent or null is 0.
fn number<T: TryFrom<i64>>(v: &Value, key: &str) -> Result<T, Skip> {
    let n = match v.get(key) {
        None | Some(Value::Null) => 0,
        Some(n) => n.as_i64().ok_or_else(|| wrong(key))?,
    };
    T::try_from(n).map_err(|_| wrong(key))
}

/// The kind the renderer names `name`, among those rules look at.
fn kind_named(name: &str) -> Option<Kind> {
    [
        Kind::Exec(ExecEvent::default()),
        Kind::File(FileEvent::default()),
        Kind::Network(NetworkEvent::default()),
    ]
    .into_iter()
    .find(|k| {
        let e = Event {
            kind: Some(k.clone()),
            ..Event::default()
        };
        kind_and_process(&e).0 == name
    })
}

const FILE_OPS: &[Operation] = &[
    Operation::OpenRead,
    Operation::OpenWrite,
    Operation::Unlink,
    Operation::Rename,
    Operation::Chmod,
    Operation::Chown,
    Operation::Exec,
    Operation::Link,
    Operation::IoUringSetup,
];

fn file_operation_named(name: &str) -> Option<Operation> {
    named(
        FILE_OPS,
        |op| {
            file_operation(&FileEvent {
                operation: op as i32,
                ..FileEvent::default()
            })
        },
        name,
    )
}

const NETWORK_OPS: &[network_event::Op] = &[
    network_event::Op::Connect,
    network_event::Op::Accept,
    network_event::Op::Listen,
    network_event::Op::Close,
    network_event::Op::UdpConnect,
    network_event::Op::UdpSend,
    network_event::Op::DnsQuery,
];

const PROTOCOLS: &[network_event::Protocol] =
    &[network_event::Protocol::Tcp, network_event::Protocol::Udp];

/// The value among `all` that `name_of` names `name`.
fn named<T: Copy>(all: &[T], name_of: impl Fn(T) -> &'static str, name: &str) -> Option<T> {
    all.iter().copied().find(|v| name_of(*v) == name)
}

#[cfg(test)]
mod tests {
    use proto::telemetry::v1::{HostEvent, SubscribeResponse, subscribe_response};

    use super::*;

    fn round_trip(event: Event) -> Event {
        let response = SubscribeResponse {
            item: Some(subscribe_response::Item::Event(HostEvent {
                event: Some(event),
                ..HostEvent::default()
            })),
        };
        let line = json::render(&response).to_string();
        parse_line(&line).expect("reads back")
    }

    fn process() -> Process {
        Process {
            pid: 42,
            ppid: 7,
            uid: 1000,
            comm: "bash".into(),
            exe: "/usr/bin/bash".into(),
            ..Process::default()
        }
    }

    #[test]
    fn what_json_prints_reads_back() {
        let events = [
            Kind::Exec(ExecEvent {
                process: Some(process()),
                filename: "/tmp/x".into(),
                argv: vec!["x".into(), "-c".into()],
                ..ExecEvent::default()
            }),
            Kind::File(FileEvent {
                process: Some(process()),
                operation: Operation::Rename as i32,
                path: "/a".into(),
                new_path: "/b".into(),
                result: -2,
                repeats: 3,
                ..FileEvent::default()
            }),
            Kind::Network(NetworkEvent {
                process: Some(process()),
                op: network_event::Op::DnsQuery as i32,
                protocol: network_event::Protocol::Udp as i32,
                local_address: "127.0.0.1".into(),
                local_port: 5000,
                remote_address: "127.0.0.53".into(),
                remote_port: 53,
                ..NetworkEvent::default()
            }),
        ];
        for kind in events {
            let event = Event {
                timestamp_ns: 99,
                kind: Some(kind),
                ..Event::default()
            };
            assert_eq!(round_trip(event.clone()), event);
        }
    }

    #[test]
    fn other_kinds_and_bad_lines_are_told_apart() {
        assert_eq!(
            parse_line(r#"{"type":"event","kind":"fork"}"#),
            Err(Skip::OtherKind("fork".into()))
        );
        assert!(matches!(parse_line("not json"), Err(Skip::Invalid(_))));
        let bad = r#"{"kind":"exec","filename":7}"#;
        assert_eq!(
            parse_line(bad),
            Err(Skip::Invalid(
                "field `filename` has an unexpected value".into()
            ))
        );
    }
}
