//! How subscribe responses are shown: a live table for people, JSON lines
//! for scripts. Pure functions of the response, so they are unit-tested.

mod json;
pub mod recorded;
mod table;
mod time;

use proto::telemetry::v1::{
    Event, FileEvent, HostIdentity, Process, SubscribeResponse, event, file_event,
};

/// Output style of `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Turns each response into one line (no trailing newline).
#[derive(Debug, Clone, Copy)]
pub struct Renderer {
    format: Format,
}

impl Renderer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    /// The table header, printed once before any item; none for JSON.
    pub fn header(&self) -> Option<String> {
        match self.format {
            Format::Table => Some(table::header()),
            Format::Json => None,
        }
    }

    pub fn render(&self, response: &SubscribeResponse) -> String {
        match self.format {
            Format::Table => table::render(response),
            Format::Json => json::render(response).to_string(),
        }
    }
}

/// Lower-case kind name and the process of an event, whatever its kind.
fn kind_and_process(event: &Event) -> (&'static str, Option<&Process>) {
    match &event.kind {
        Some(event::Kind::Exec(e)) => ("exec", e.process.as_ref()),
        Some(event::Kind::Fork(f)) => ("fork", f.process.as_ref()),
        Some(event::Kind::Exit(x)) => ("exit", x.process.as_ref()),
        Some(event::Kind::Policy(p)) => ("policy", p.process.as_ref()),
        Some(event::Kind::File(f)) => ("file", f.process.as_ref()),
        Some(event::Kind::Network(n)) => ("net", n.process.as_ref()),
        Some(event::Kind::Alert(a)) => ("alert", a.process.as_ref()),
        Some(event::Kind::Isolation(_)) => ("isolation", None),
        Some(event::Kind::Tamper(t)) => ("tamper", t.process.as_ref()),
        Some(event::Kind::Response(_)) => ("response", None),
        None => ("unknown", None),
    }
}

/// The kind of event an alert matched, named as the table names kinds.
fn matched_kind(a: &proto::telemetry::v1::AlertEvent) -> &'static str {
    use proto::telemetry::v1::EventKind;
    match a.matched_kind() {
        EventKind::Exec => "exec",
        EventKind::File => "file",
        EventKind::Network => "net",
        _ => "event",
    }
}

/// Lower-case name of a file operation, as `--json` and the table print it.
fn file_operation(f: &FileEvent) -> &'static str {
    match f.operation() {
        file_event::Operation::OpenRead => "read",
        file_event::Operation::OpenWrite => "write",
        file_event::Operation::Unlink => "unlink",
        file_event::Operation::Rename => "rename",
        file_event::Operation::Chmod => "chmod",
        file_event::Operation::Chown => "chown",
        file_event::Operation::Exec => "exec",
        file_event::Operation::Link => "link",
        file_event::Operation::IoUringSetup => "io_uring_setup",
        file_event::Operation::Unspecified => "unknown",
    }
}

fn host_id(host: Option<&HostIdentity>) -> &str {
    host.map_or("?", |h| h.host_id.as_str())
}

/// The host as an analyst knows it: its hostname, else its id.
fn host_name(host: Option<&HostIdentity>) -> &str {
    match host {
        Some(h) if !h.hostname.is_empty() => &h.hostname,
        _ => host_id(host),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Responses as the collector sends them, built on the collector's
    //! own test builders.

    use collector::testkit;
    use proto::telemetry::v1::{
        DropCounters, HostEvent, HostRecord, SequenceRecord, host_record, sequence_record,
        subscribe_response,
    };

    use super::*;

    pub fn host() -> HostIdentity {
        HostIdentity {
            hostname: "kiosk-42".into(),
            sensor_instance_id: "inst-7".into(),
            ..testkit::host("store-0042", "inst-7")
        }
    }

    /// When the fixtures' collector received their batch:
    /// 2026-12-04T12:00:00Z plus 1 h 30 s (the sensor's wall times are
    /// [`testkit::BOOTED_AT_UNIX_NS`] plus their boot stamps).
    pub const RECEIVED_UNIX_NS: u64 = testkit::BOOTED_AT_UNIX_NS + 3_630_000_000_000;

    fn wrap(timestamp_ns: u64, mut event: Event) -> SubscribeResponse {
        event.timestamp_ns = timestamp_ns;
        event.boot_time_unix_ns = testkit::BOOTED_AT_UNIX_NS;
        SubscribeResponse {
            item: Some(subscribe_response::Item::Event(HostEvent {
                host: Some(host()),
                batch_sequence: 3,
                event: Some(event),
                received_unix_ns: RECEIVED_UNIX_NS,
                store_id: 0,
            })),
        }
    }

    /// An exec from a sensor older than `boot_time_unix_ns`.
    pub fn exec_without_wall_time() -> SubscribeResponse {
        let mut response = exec(&["curl"], false);
        if let Some(subscribe_response::Item::Event(e)) = &mut response.item
            && let Some(event) = &mut e.event
        {
            event.boot_time_unix_ns = 0;
        }
        response
    }

    /// An event of a host that reported no hostname.
    pub fn fork_of_unnamed_host() -> SubscribeResponse {
        let mut response = fork();
        if let Some(subscribe_response::Item::Event(e)) = &mut response.item
            && let Some(host) = &mut e.host
        {
            host.hostname.clear();
        }
        response
    }

    pub fn exec(argv: &[&str], truncated: bool) -> SubscribeResponse {
        let mut e = testkit::exec_event(4242, "curl", "/usr/bin/curl", argv);
        if let Some(event::Kind::Exec(x)) = &mut e.kind {
            x.argv_truncated = truncated;
            x.sha256 = "0123456789abcdef".repeat(4);
        }
        wrap(12_345_678_901_234, e)
    }

    pub fn fork() -> SubscribeResponse {
        wrap(1_500_000_000, testkit::fork_event(4243, 4242, "bash"))
    }

    pub fn exit(exit_code: Option<i32>, signal: Option<i32>) -> SubscribeResponse {
        let mut e = testkit::exit_event(4243, "bash", exit_code, signal);
        if let Some(event::Kind::Exit(x)) = &mut e.kind {
            x.duration_ns = 500_000_000;
            if let Some(p) = &mut x.process {
                p.ppid = 4242;
            }
        }
        wrap(2_000_000_000, e)
    }

    /// An event without its kind yet, and the process it is about.
    fn event_of(pid: u32, comm: &str) -> (Event, Option<proto::telemetry::v1::Process>) {
        let mut e = testkit::fork_event(pid, 1, comm);
        let process = match e.kind.take() {
            Some(event::Kind::Fork(f)) => f.process,
            _ => None,
        };
        (e, process)
    }

    /// The default pack's /tmp rule matched an exec of /tmp/x.
    pub fn alert() -> SubscribeResponse {
        use proto::telemetry::v1::{AlertEvent, EventKind};
        let (mut e, process) = event_of(4242, "x");
        e.kind = Some(event::Kind::Alert(AlertEvent {
            process,
            rule_id: "6f1c2b0e".into(),
            rule_title: "Execution From a World-Writable Directory".into(),
            level: "high".into(),
            rule_author: "rxsentry".into(),
            rule_source: "builtin:exec_world_writable.yml".into(),
            tags: vec!["attack.execution".into(), "attack.t1204.002".into()],
            attack_ids: vec!["T1204.002".into()],
            matched_kind: EventKind::Exec as i32,
            matched_subject: "/tmp/x".into(),
            ..AlertEvent::default()
        }));
        wrap(3_000_000_000, e)
    }

    /// A sequence rule's kill response, carried out.
    pub fn response_event() -> SubscribeResponse {
        use proto::telemetry::v1::ResponseEvent;
        let (mut e, _) = event_of(1, "rxsentry-sensor");
        e.kind = Some(event::Kind::Response(ResponseEvent {
            action: "kill_tree".into(),
            requester: "detection:PHI Read Followed by an Outbound Connection".into(),
            rule_source: "builtin:phi_read_then_connection.yml".into(),
            reason: "/var/lib/pharmacy/phi/p.json then 10.9.0.2:443 within 60 s".into(),
            target_pid: 4242,
            killed_pids: vec![4242, 4243],
            ..ResponseEvent::default()
        }));
        wrap(3_000_000_000, e)
    }

    pub fn network(
        op: proto::telemetry::v1::network_event::Op,
        remote: &str,
        dns: Option<&str>,
    ) -> SubscribeResponse {
        use proto::telemetry::v1::{DnsQuestion, NetworkEvent, network_event};
        let (mut e, process) = event_of(4242, "curl");
        e.kind = Some(event::Kind::Network(NetworkEvent {
            process,
            op: op as i32,
            protocol: network_event::Protocol::Tcp as i32,
            family: network_event::Family::Ipv4 as i32,
            local_address: "10.0.0.2".into(),
            local_port: 40000,
            remote_address: remote.into(),
            remote_port: 443,
            result: "established".into(),
            bytes_sent: 1200,
            bytes_received: 34000,
            dns_questions: dns
                .map(|name| DnsQuestion {
                    name: name.into(),
                    qtype: 1,
                    type_name: "A".into(),
                })
                .into_iter()
                .collect(),
            dns_error: String::new(),
        }));
        wrap(3_000_000_000, e)
    }

    /// A read of the PHI database; with `repeats`, the summary of its
    /// coalesced repeats.
    pub fn file_read(repeats: u64) -> SubscribeResponse {
        use proto::telemetry::v1::{FileEvent, file_event};
        let (mut e, process) = event_of(4242, "pos-app");
        e.kind = Some(event::Kind::File(FileEvent {
            process,
            operation: file_event::Operation::OpenRead as i32,
            path: "/var/lib/pharmacy/rx.db".into(),
            flags: 0o2000000,
            result: if repeats > 0 { 0 } else { 3 },
            repeats,
            repeat_first_ns: if repeats > 0 { 4_000_000_000 } else { 0 },
            repeat_last_ns: if repeats > 0 { 4_900_000_000 } else { 0 },
            ..FileEvent::default()
        }));
        wrap(4_900_000_000, e)
    }

    pub fn sequence(kind: sequence_record::Kind, first: u64, last: u64) -> SubscribeResponse {
        record(host_record::Record::Sequence(SequenceRecord {
            kind: kind as i32,
            first,
            last,
        }))
    }

    pub fn drops() -> SubscribeResponse {
        record(host_record::Record::Drops(DropCounters {
            kernel_ringbuf_full: 12,
            userspace_events_dropped: 3,
            ..Default::default()
        }))
    }

    fn record(record: host_record::Record) -> SubscribeResponse {
        SubscribeResponse {
            item: Some(subscribe_response::Item::Record(HostRecord {
                host: Some(host()),
                record: Some(record),
                ..HostRecord::default()
            })),
        }
    }

    pub fn lagged(n: u64) -> SubscribeResponse {
        SubscribeResponse {
            item: Some(subscribe_response::Item::SubscriberLagged(n)),
        }
    }
}
