//! One JSON object per item, for scripts (`jq`). Field names are
//! snake_case and stable: renaming one breaks someone's pipeline. Every
//! object has a `type`: event, gap, duplicate, restart, drops, lagged.

use proto::telemetry::v1::{
    AlertEngine, HostEvent, HostIdentity, HostRecord, Process, SubscribeResponse, event,
    host_record, host_status, isolation_event, network_event, policy_event, sequence_record,
    subscribe_response,
};
use serde_json::{Map, Value, json};

use super::{file_operation, kind_and_process, matched_kind, time};

/// The keys `--json` prints that `rules test` reads back
/// (`render::recorded`): one spelling for both.
pub(super) mod key {
    pub const KIND: &str = "kind";
    pub const TIMESTAMP_NS: &str = "timestamp_ns";
    pub const PROCESS: &str = "process";
    pub const PID: &str = "pid";
    pub const PPID: &str = "ppid";
    pub const UID: &str = "uid";
    pub const COMM: &str = "comm";
    pub const EXE: &str = "exe";
    pub const FILENAME: &str = "filename";
    pub const ARGV: &str = "argv";
    pub const OPERATION: &str = "operation";
    pub const PATH: &str = "path";
    pub const NEW_PATH: &str = "new_path";
    pub const RESULT: &str = "result";
    pub const REPEATS: &str = "repeats";
    pub const OP: &str = "op";
    pub const PROTOCOL: &str = "protocol";
    pub const LOCAL_ADDRESS: &str = "local_address";
    pub const LOCAL_PORT: &str = "local_port";
    pub const REMOTE_ADDRESS: &str = "remote_address";
    pub const REMOTE_PORT: &str = "remote_port";
}

pub fn render(response: &SubscribeResponse) -> Value {
    match &response.item {
        Some(subscribe_response::Item::Event(e)) => with_store_id(event_json(e), e.store_id, 0),
        Some(subscribe_response::Item::Record(r)) => {
            with_store_id(record_json(r), r.store_id, r.recorded_unix_ns)
        }
        Some(subscribe_response::Item::SubscriberLagged(n)) => {
            json!({ "type": "lagged", "skipped": n })
        }
        None => json!({ "type": "empty" }),
    }
}

/// The store's position (and a record's time) when the collector has a
/// store; absent otherwise, so a store-less collector's lines stay as
/// they were.
fn with_store_id(mut value: Value, store_id: u64, recorded_unix_ns: u64) -> Value {
    if let Value::Object(m) = &mut value {
        if store_id != 0 {
            m.insert("store_id".into(), store_id.into());
        }
        if recorded_unix_ns != 0 {
            m.insert("recorded_unix_ns".into(), recorded_unix_ns.into());
            m.insert("recorded_time".into(), time::utc(recorded_unix_ns).into());
        }
    }
    value
}

/// `host_id` and `hostname` first, as every host-related object has them.
fn with_host(kind: &str, host: Option<&HostIdentity>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    m.insert(
        "host_id".into(),
        host.map_or("", |h| h.host_id.as_str()).into(),
    );
    m.insert(
        "hostname".into(),
        host.map_or("", |h| h.hostname.as_str()).into(),
    );
    m
}

fn process_json(p: &Process) -> Value {
    json!({
        (key::PID): p.pid,
        "tid": p.tid,
        (key::PPID): p.ppid,
        (key::UID): p.uid,
        "gid": p.gid,
        "euid": p.euid,
        "egid": p.egid,
        (key::COMM): p.comm,
        (key::EXE): p.exe,
        "cgroup_id": p.cgroup_id,
        "lineage": p.lineage,
        "start_time_ns": p.start_time_ns,
    })
}

fn event_json(e: &HostEvent) -> Value {
    let mut m = with_host("event", e.host.as_ref());
    m.insert("batch_sequence".into(), e.batch_sequence.into());
    m.insert("received_unix_ns".into(), e.received_unix_ns.into());
    m.insert(
        "received_time".into(),
        time::utc_if_known(e.received_unix_ns).into(),
    );
    let Some(event) = &e.event else {
        m.insert("kind".into(), "unknown".into());
        return m.into();
    };
    let (kind, process) = kind_and_process(event);
    m.insert(key::TIMESTAMP_NS.into(), event.timestamp_ns.into());
    m.insert("boot_time_unix_ns".into(), event.boot_time_unix_ns.into());
    let wall = event.wall_time_unix_ns();
    m.insert("wall_time_unix_ns".into(), wall.unwrap_or(0).into());
    m.insert("time".into(), wall.and_then(time::utc_if_known).into());
    m.insert(key::KIND.into(), kind.into());
    m.insert(
        key::PROCESS.into(),
        process.map_or(Value::Null, process_json),
    );
    let extra = match &event.kind {
        Some(event::Kind::Exec(x)) => json!({
            (key::FILENAME): x.filename,
            (key::ARGV): x.argv,
            "argv_truncated": x.argv_truncated,
            "sha256": x.sha256,
            "hash_error": x.hash_error,
            "file_device": x.file.map(|f| f.device),
            "file_inode": x.file.map(|f| f.inode),
        }),
        Some(event::Kind::Exit(x)) => json!({
            "exit_code": x.exit_code,
            "signal": x.signal,
            "core_dumped": x.core_dumped,
            "duration_ns": x.duration_ns,
        }),
        Some(event::Kind::Policy(p)) => json!({
            "action": match p.action() {
                policy_event::Action::Blocked => "blocked",
                policy_event::Action::WouldBlock => "would_block",
                policy_event::Action::Unspecified => "unknown",
            },
            "reason": match p.reason() {
                policy_event::Reason::NotAllowed => "not_allowed",
                policy_event::Reason::Modified => "modified",
                policy_event::Reason::DeniedContext => "denied_context",
                policy_event::Reason::Unspecified => "unknown",
            },
            "path": p.path,
            "sha256": p.sha256,
            "hash_error": p.hash_error,
            "rule": p.rule,
            "mode": p.mode,
            "backend": p.backend,
            "policy_generation": p.policy_generation,
            "file_device": p.file.map(|f| f.device),
            "file_inode": p.file.map(|f| f.inode),
        }),
        Some(event::Kind::File(f)) => json!({
            (key::OPERATION): file_operation(f),
            (key::PATH): f.path,
            (key::NEW_PATH): (!f.new_path.is_empty()).then_some(&f.new_path),
            "path_truncated": f.path_truncated,
            "flags": f.flags,
            (key::RESULT): f.result,
            "mode": f.mode,
            "uid": f.uid,
            "gid": f.gid,
            "file_device": f.file.map(|f| f.device),
            "file_inode": f.file.map(|f| f.inode),
            (key::REPEATS): f.repeats,
            "repeat_first_ns": f.repeat_first_ns,
            "repeat_last_ns": f.repeat_last_ns,
            "depth_exceeded": f.depth_exceeded,
            "by_identity": f.by_identity,
            "watched_path": (!f.watched_path.is_empty()).then_some(&f.watched_path),
        }),
        Some(event::Kind::Network(n)) => json!({
            (key::OP): network_op(n.op()),
            (key::PROTOCOL): network_protocol(n.protocol()),
            "family": match n.family() {
                network_event::Family::Ipv4 => "ipv4",
                network_event::Family::Ipv6 => "ipv6",
                network_event::Family::Unspecified => "unknown",
            },
            (key::LOCAL_ADDRESS): n.local_address,
            (key::LOCAL_PORT): n.local_port,
            (key::REMOTE_ADDRESS): n.remote_address,
            (key::REMOTE_PORT): n.remote_port,
            (key::RESULT): n.result,
            "bytes_sent": n.bytes_sent,
            "bytes_received": n.bytes_received,
            "dns_questions": n.dns_questions.iter().map(|q| json!({
                "name": q.name,
                "qtype": q.qtype,
                "type": q.type_name,
            })).collect::<Vec<_>>(),
            "dns_error": n.dns_error,
        }),
        Some(event::Kind::Isolation(i)) => json!({
            "action": match i.action() {
                isolation_event::Action::Isolate => "isolate",
                isolation_event::Action::Release => "release",
                isolation_event::Action::Reapply => "reapply",
                isolation_event::Action::Unspecified => "unknown",
            },
            "requester": i.requester,
            "reason": i.reason,
            "isolated": i.isolated,
            "allowed_peers": i.allowed_peers,
            "interfaces": i.interfaces,
            "error": i.error,
        }),
        Some(event::Kind::Tamper(t)) => json!({
            "object": t.object,
            "action": t.action,
            "target": t.target,
            "restored": t.restored,
            "error": t.error,
            "count": t.count,
        }),
        Some(event::Kind::Alert(a)) => json!({
            "rule_id": a.rule_id,
            "rule_title": a.rule_title,
            "level": a.level,
            "rule_author": a.rule_author,
            "rule_source": a.rule_source,
            "tags": a.tags,
            "attack_ids": a.attack_ids,
            "matched_kind": matched_kind(a),
            "matched_subject": a.matched_subject,
            "sequence_steps": a.sequence_steps,
            "responses": a.responses,
            "engine": alert_engine(a),
            "file_sha256": (!a.file_sha256.is_empty()).then_some(&a.file_sha256),
        }),
        Some(event::Kind::Response(r)) => json!({
            "action": r.action,
            "requester": r.requester,
            "rule_source": r.rule_source,
            "reason": r.reason,
            "target_pid": r.target_pid,
            "target_path": r.target_path,
            "error": r.error,
            "killed_pids": r.killed_pids,
            "quarantine_path": r.quarantine_path,
            "sha256": r.sha256,
        }),
        Some(event::Kind::Fork(_)) | None => json!({}),
    };
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    m.into()
}

/// Which engine made an alert.
fn alert_engine(a: &proto::telemetry::v1::AlertEvent) -> &'static str {
    match a.engine() {
        AlertEngine::Sigma => "sigma",
        AlertEngine::Yara => "yara",
        AlertEngine::Sequence => "sequence",
    }
}

/// A network operation as `--json` names it.
pub(super) fn network_op(op: network_event::Op) -> &'static str {
    match op {
        network_event::Op::Connect => "connect",
        network_event::Op::Accept => "accept",
        network_event::Op::Listen => "listen",
        network_event::Op::Close => "close",
        network_event::Op::UdpConnect => "udp_connect",
        network_event::Op::UdpSend => "udp_send",
        network_event::Op::DnsQuery => "dns_query",
        network_event::Op::Unspecified => "unknown",
    }
}

/// A transport protocol as `--json` names it.
pub(super) fn network_protocol(p: network_event::Protocol) -> &'static str {
    match p {
        network_event::Protocol::Tcp => "tcp",
        network_event::Protocol::Udp => "udp",
        network_event::Protocol::Unspecified => "unknown",
    }
}

fn record_json(r: &HostRecord) -> Value {
    let host = r.host.as_ref();
    match &r.record {
        Some(host_record::Record::Sequence(s)) => {
            let kind = match s.kind() {
                sequence_record::Kind::Gap => "gap",
                sequence_record::Kind::Duplicate => "duplicate",
                sequence_record::Kind::Restart => "restart",
                sequence_record::Kind::Late => "late",
                sequence_record::Kind::Unspecified => "sequence_unknown",
            };
            let mut m = with_host(kind, host);
            m.insert("first".into(), s.first.into());
            m.insert("last".into(), s.last.into());
            m.insert(
                "sensor_instance_id".into(),
                host.map_or("", |h| h.sensor_instance_id.as_str()).into(),
            );
            m.into()
        }
        Some(host_record::Record::Drops(d)) => {
            let mut m = with_host("drops", host);
            m.insert(
                "drops".into(),
                json!({
                    "kernel_ringbuf_full": d.kernel_ringbuf_full,
                    "userspace_queue_full": d.userspace_queue_full,
                    "userspace_batches_dropped": d.userspace_batches_dropped,
                    "userspace_events_dropped": d.userspace_events_dropped,
                    "malformed_kernel_records": d.malformed_kernel_records,
                    "kernel_net_ringbuf_full": d.kernel_net_ringbuf_full,
                    "spool_batches_dropped": d.spool_batches_dropped,
                    "spool_events_dropped": d.spool_events_dropped,
                    "spool_dropped_first_sealed_unix_ns": d.spool_dropped_first_sealed_unix_ns,
                    "spool_dropped_last_sealed_unix_ns": d.spool_dropped_last_sealed_unix_ns,
                    "spool_corrupt_records": d.spool_corrupt_records,
                    "spool_corrupt_bytes": d.spool_corrupt_bytes,
                }),
            );
            m.into()
        }
        Some(host_record::Record::Status(st)) => {
            let state = match st.state() {
                host_status::State::Silent => "silent",
                host_status::State::Back => "back",
                host_status::State::Unspecified => "status_unknown",
            };
            let mut m = with_host(state, host);
            m.insert("last_batch_unix_ns".into(), st.last_batch_unix_ns.into());
            if let Some(t) = time::utc_if_known(st.last_batch_unix_ns) {
                m.insert("last_batch".into(), t.into());
            }
            m.insert("silent_after_ms".into(), st.silent_after_ms.into());
            m.into()
        }
        None => with_host("record_unknown", host).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use collector::testkit;
    use sequence_record::Kind;

    #[test]
    fn exec_has_stable_fields() {
        let v = render(&fixtures::exec(&["curl", "-s"], true));
        assert_eq!(v["type"], "event");
        assert_eq!(v["kind"], "exec");
        assert_eq!(v["host_id"], "store-0042");
        assert_eq!(v["hostname"], "kiosk-42");
        assert_eq!(v["batch_sequence"], 3);
        assert_eq!(v["timestamp_ns"], 12_345_678_901_234u64);
        assert_eq!(v["boot_time_unix_ns"], testkit::BOOTED_AT_UNIX_NS);
        assert_eq!(
            v["wall_time_unix_ns"],
            testkit::BOOTED_AT_UNIX_NS + 12_345_678_901_234
        );
        assert_eq!(v["time"], "2026-12-04T15:25:45.678Z");
        assert_eq!(v["received_unix_ns"], fixtures::RECEIVED_UNIX_NS);
        assert_eq!(v["received_time"], "2026-12-04T13:00:30.000Z");
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(v["process"]["comm"], "curl");
        assert_eq!(v["filename"], "/usr/bin/curl");
        assert_eq!(v["argv"], json!(["curl", "-s"]));
        assert_eq!(v["argv_truncated"], true);
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(v["file_inode"], Value::Null);
    }

    #[test]
    fn alert_names_rule_author_and_attack_ids() {
        let v = render(&fixtures::alert());
        assert_eq!(v["kind"], "alert");
        assert_eq!(v["rule_title"], "Execution From a World-Writable Directory");
        assert_eq!(v["rule_author"], "rxsentry");
        assert_eq!(v["level"], "high");
        assert_eq!(v["attack_ids"], json!(["T1204.002"]));
        assert_eq!(v["matched_kind"], "exec");
        assert_eq!(v["matched_subject"], "/tmp/x");
        assert_eq!(v["process"]["pid"], 4242);
    }

    #[test]
    fn a_response_keeps_its_pids_and_empty_error() {
        let v = render(&fixtures::response_event());
        assert_eq!(v["kind"], "response");
        assert_eq!(v["action"], "kill_tree");
        assert_eq!(v["killed_pids"], json!([4242, 4243]));
        assert_eq!(v["error"], "");
        assert_eq!(v["target_pid"], 4242);
    }

    #[test]
    fn exit_keeps_absent_values_null() {
        let v = render(&fixtures::exit(None, Some(9)));
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["exit_code"], Value::Null);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["duration_ns"], 500_000_000);
        let v = render(&fixtures::fork());
        assert_eq!(v["kind"], "fork");
        assert_eq!(v["process"]["ppid"], 4242);
    }

    #[test]
    fn records_and_lag_have_types() {
        let v = render(&fixtures::sequence(Kind::Gap, 5, 7));
        assert_eq!(
            v,
            json!({"type": "gap", "host_id": "store-0042", "hostname": "kiosk-42",
            "first": 5, "last": 7, "sensor_instance_id": "inst-7"})
        );
        assert_eq!(
            render(&fixtures::sequence(Kind::Restart, 1, 1))["type"],
            "restart"
        );
        assert_eq!(
            render(&fixtures::sequence(Kind::Duplicate, 2, 2))["type"],
            "duplicate"
        );
        let v = render(&fixtures::drops());
        assert_eq!(v["type"], "drops");
        assert_eq!(v["drops"]["kernel_ringbuf_full"], 12);
        assert_eq!(
            render(&fixtures::lagged(4)),
            json!({"type": "lagged", "skipped": 4})
        );
    }

    #[test]
    fn network_has_stable_fields() {
        use proto::telemetry::v1::network_event::Op;
        let v = render(&fixtures::network(
            Op::DnsQuery,
            "127.0.0.53",
            Some("pos.example"),
        ));
        assert_eq!(v["kind"], "net");
        assert_eq!(v["op"], "dns_query");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["remote_address"], "127.0.0.53");
        assert_eq!(v["remote_port"], 443);
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(
            v["dns_questions"],
            json!([{"name": "pos.example", "qtype": 1, "type": "A"}])
        );
        assert_eq!(v["bytes_received"], 34000);
    }

    #[test]
    fn unknown_times_are_null_and_raw_stamps_stay() {
        let v = render(&fixtures::exec_without_wall_time());
        assert_eq!(v["wall_time_unix_ns"], 0);
        assert_eq!(v["time"], Value::Null);
        assert_eq!(v["timestamp_ns"], 12_345_678_901_234u64);
        let v = render(&fixtures::file_read(3));
        assert_eq!(v["repeat_first_ns"], 4_000_000_000u64);
        assert_eq!(v["repeat_last_ns"], 4_900_000_000u64);
    }

    #[test]
    fn output_is_one_line() {
        let s = render(&fixtures::exec(&["a\nb"], false)).to_string();
        assert!(!s.contains('\n'), "{s}");
    }
}
