//! The human-readable live table. Every string from a sensor is escaped:
//! argv and file names are attacker-controlled and must not be able to
//! drive the analyst's terminal.

use std::fmt::Write;

use proto::telemetry::v1::{
    AlertEvent, DropCounters, Event, ExecEvent, ExitEvent, FileEvent, HostEvent, HostRecord,
    IsolationEvent, NetworkEvent, PolicyEvent, SequenceRecord, SubscribeResponse, event,
    host_record, host_status, isolation_event, network_event, policy_event, sequence_record,
    subscribe_response,
};

use super::{file_operation, host_id, host_name, kind_and_process, matched_kind, time};

/// Hex digits of the SHA-256 shown (enough to tell files apart at a glance).
const SHORT_HASH: usize = 12;

/// One table row; the header and events share it so columns line up.
#[allow(clippy::too_many_arguments)]
fn row(
    time: &str,
    host: &str,
    kind: &str,
    pid: &str,
    ppid: &str,
    uid: &str,
    comm: &str,
    details: &str,
) -> String {
    format!("{time:<24} {host:<14} {kind:<9} {pid:>7} {ppid:>7} {uid:>6} {comm:<16} {details}")
        .trim_end()
        .to_owned()
}

pub fn header() -> String {
    row(
        "TIME", "HOST", "KIND", "PID", "PPID", "UID", "COMM", "DETAILS",
    )
}

pub fn render(response: &SubscribeResponse) -> String {
    match &response.item {
        Some(subscribe_response::Item::Event(e)) => event_line(e),
        Some(subscribe_response::Item::Record(r)) => record_line(r),
        Some(subscribe_response::Item::SubscriberLagged(n)) => {
            format!("!! subscriber lagged, {n} items skipped")
        }
        None => "!! empty response from the collector".to_owned(),
    }
}

fn event_line(e: &HostEvent) -> String {
    let Some(event) = &e.event else {
        return format!(
            "!! {} event without content",
            clean(host_id(e.host.as_ref()))
        );
    };
    let (kind, process) = kind_and_process(event);
    let num = |f: fn(&proto::telemetry::v1::Process) -> u32| {
        process.map_or_else(|| "-".to_owned(), |p| f(p).to_string())
    };
    let details = match &event.kind {
        Some(event::Kind::Exec(x)) => exec_details(x),
        Some(event::Kind::Fork(_)) => format!("parent={}", num(|p| p.ppid)),
        Some(event::Kind::Exit(x)) => exit_details(x),
        Some(event::Kind::Policy(p)) => policy_details(p),
        Some(event::Kind::File(f)) => file_details(event, f),
        Some(event::Kind::Network(n)) => network_details(n),
        Some(event::Kind::Isolation(i)) => isolation_details(i),
        Some(event::Kind::Tamper(t)) => tamper_details(t),
        Some(event::Kind::Alert(a)) => alert_details(a),
        Some(event::Kind::Response(r)) => response_details(r),
        None => "(event kind unknown to this rxsentry version)".to_owned(),
    };
    row(
        &time::event_time(event),
        &clean(host_name(e.host.as_ref())),
        kind,
        &num(|p| p.pid),
        &num(|p| p.ppid),
        &num(|p| p.uid),
        &clean(process.map_or("-", |p| p.comm.as_str())),
        &details,
    )
}

/// `HIGH "title" [T1059.004] on exec /tmp/x  rule by AUTHOR (source)`.
fn alert_details(a: &AlertEvent) -> String {
    let mut out = format!(
        "{} \"{}\"",
        clean(&a.level).to_uppercase(),
        clean(&a.rule_title)
    );
    if !a.attack_ids.is_empty() {
        let _ = write!(out, " [{}]", clean(&a.attack_ids.join(",")));
    }
    if !a.sequence_steps.is_empty() {
        let _ = write!(out, " after {}", clean(&a.sequence_steps.join(" -> ")));
    }
    let _ = write!(out, " on {} {}", matched_kind(a), clean(&a.matched_subject));
    if a.engine() == proto::telemetry::v1::AlertEngine::Yara {
        let _ = write!(
            out,
            " sha256 {} yara {}",
            clean(&a.file_sha256),
            clean(&a.rule_id)
        );
    }
    let _ = write!(
        out,
        "  rule by {} ({})",
        clean(&a.rule_author),
        clean(&a.rule_source)
    );
    if !a.responses.is_empty() {
        let _ = write!(out, "  response: {}", clean(&a.responses.join(",")));
    }
    out
}

fn response_details(r: &proto::telemetry::v1::ResponseEvent) -> String {
    let mut out = format!("RESPONSE {} by {}", clean(&r.action), clean(&r.requester));
    if r.target_pid != 0 {
        let _ = write!(out, " pid {}", r.target_pid);
    }
    if !r.target_path.is_empty() {
        let _ = write!(out, " {}", clean(&r.target_path));
    }
    if !r.killed_pids.is_empty() {
        let pids: Vec<String> = r.killed_pids.iter().map(u32::to_string).collect();
        let _ = write!(out, " killed {}", pids.join(","));
    }
    if !r.quarantine_path.is_empty() {
        let _ = write!(
            out,
            " -> {} (sha256 {})",
            clean(&r.quarantine_path),
            clean(&r.sha256)
        );
    }
    match r.error.is_empty() {
        true => out.push_str(" ok"),
        false => {
            let _ = write!(out, " FAILED: {}", clean(&r.error));
        }
    }
    let _ = write!(out, " ({})", clean(&r.reason));
    out
}

fn file_details(event: &Event, f: &FileEvent) -> String {
    let mut out = format!("{} {}", file_operation(f), clean(&f.path));
    if !f.new_path.is_empty() {
        let _ = write!(out, " -> {}", clean(&f.new_path));
    }
    if f.path_truncated {
        out.push('…');
    }
    if f.by_identity {
        let _ = write!(out, " (hard link of {})", clean(&f.watched_path));
    }
    if f.depth_exceeded {
        out.push_str(" (too deep to place: possibly watched)");
    }
    if let Some(mode) = f.mode {
        let _ = write!(out, " mode={mode:o}");
    }
    if let Some(uid) = f.uid {
        let _ = write!(out, " uid={uid}");
    }
    if let Some(gid) = f.gid {
        let _ = write!(out, " gid={gid}");
    }
    if f.result < 0 {
        let _ = write!(out, "  FAILED errno={}", -f.result);
    }
    if f.repeats > 0 {
        let _ = write!(
            out,
            "  x{} more since {}",
            f.repeats,
            time::related_time(event, f.repeat_first_ns)
        );
    }
    out
}

fn policy_details(p: &PolicyEvent) -> String {
    let what = match p.action() {
        policy_event::Action::Blocked => "BLOCKED",
        policy_event::Action::WouldBlock => "WOULD-BLOCK",
        policy_event::Action::Unspecified => "POLICY?",
    };
    let why = match p.reason() {
        policy_event::Reason::NotAllowed => "not allowlisted",
        policy_event::Reason::Modified => "modified since hashed",
        policy_event::Reason::DeniedContext => "denied for this parent or user",
        policy_event::Reason::Unspecified => "unknown reason",
    };
    let mut out = format!("{what} {}  ({why}", clean(&p.path));
    if !p.rule.is_empty() {
        let _ = write!(out, "; rule {}", clean(&p.rule));
    }
    let _ = write!(out, "; {} via {})", clean(&p.mode), clean(&p.backend));
    if !p.sha256.is_empty() {
        let short: String = p.sha256.chars().take(SHORT_HASH).collect();
        let _ = write!(out, "  sha256:{}", clean(&short));
    }
    out
}

/// `connect tcp 10.0.0.2:40000 -> 192.0.2.7:443 established`, plus bytes
/// for a close and the questions of a DNS query.
fn network_details(n: &NetworkEvent) -> String {
    use network_event::{Op, Protocol};
    let op = match n.op() {
        Op::Connect => "connect",
        Op::Accept => "accept",
        Op::Listen => "listen",
        Op::Close => "close",
        Op::UdpConnect => "udp-connect",
        Op::UdpSend => "udp-send",
        Op::DnsQuery => "dns",
        Op::Unspecified => "net?",
    };
    let proto = match n.protocol() {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Unspecified => "?",
    };
    let endpoint = |addr: &str, port: u32| {
        if addr.contains(':') {
            format!("[{}]:{port}", clean(addr))
        } else {
            format!("{}:{port}", clean(addr))
        }
    };
    let mut out = format!("{op} {proto} {}", endpoint(&n.local_address, n.local_port));
    if n.op() != Op::Listen {
        let _ = write!(out, " -> {}", endpoint(&n.remote_address, n.remote_port));
    }
    if !n.result.is_empty() {
        let _ = write!(out, " {}", clean(&n.result));
    }
    if n.op() == Op::Close {
        let _ = write!(out, " sent={} recv={}", n.bytes_sent, n.bytes_received);
    }
    for q in &n.dns_questions {
        let _ = write!(out, " {} {}", clean(&q.type_name), clean(&q.name));
    }
    if !n.dns_error.is_empty() {
        let _ = write!(out, " (dns: {})", clean(&n.dns_error));
    }
    out
}

fn tamper_details(t: &proto::telemetry::v1::TamperEvent) -> String {
    let outcome = match (t.restored, t.error.is_empty()) {
        (true, _) => "restored".to_owned(),
        // A call the kernel saw: nothing to put back, the process is named.
        (false, true) if t.process.is_some() => "reported".to_owned(),
        (false, true) => "not restored".to_owned(),
        (false, false) => format!("NOT RESTORED: {}", clean(&t.error)),
    };
    format!(
        "TAMPER {}: {} {}  -> {outcome} (#{})",
        clean(&t.object),
        clean(&t.action),
        clean(&t.target),
        t.count
    )
}

fn isolation_details(i: &IsolationEvent) -> String {
    let what = match i.action() {
        isolation_event::Action::Isolate => "ISOLATE",
        isolation_event::Action::Release => "RELEASE",
        isolation_event::Action::Reapply => "REAPPLY",
        isolation_event::Action::Unspecified => "ISOLATION?",
    };
    let state = if i.isolated {
        "isolated"
    } else {
        "not isolated"
    };
    let mut out = format!(
        "{what} by {}: {}  -> {state}",
        clean(&i.requester),
        clean(&i.reason)
    );
    if !i.error.is_empty() {
        let _ = write!(out, "  FAILED: {}", clean(&i.error));
    }
    out
}

fn exec_details(x: &ExecEvent) -> String {
    let mut out = format!("{}  [{}]", clean(&x.filename), clean(&join_argv(&x.argv)));
    if x.argv_truncated {
        out.push_str(" ARGV…");
    }
    if x.sha256.is_empty() {
        out.push_str("  sha256:?");
        if !x.hash_error.is_empty() {
            let _ = write!(out, " ({})", clean(&x.hash_error));
        }
    } else {
        let short: String = x.sha256.chars().take(SHORT_HASH).collect();
        let _ = write!(out, "  sha256:{}", clean(&short));
    }
    out
}

fn exit_details(x: &ExitEvent) -> String {
    let mut out = match (x.exit_code, x.signal) {
        (_, Some(sig)) => format!("signal={sig}"),
        (Some(code), None) => format!("exit={code}"),
        (None, None) => "exit=?".to_owned(),
    };
    if x.core_dumped {
        out.push_str(" core");
    }
    if x.duration_ns > 0 {
        let _ = write!(out, "  ran {:.3}s", x.duration_ns as f64 / 1e9);
    }
    out
}

fn record_line(r: &HostRecord) -> String {
    let host = clean(host_id(r.host.as_ref()));
    match &r.record {
        Some(host_record::Record::Sequence(s)) => format!("!! {host} {}", sequence_text(r, s)),
        Some(host_record::Record::Drops(d)) => format!("!! {host} DROPS: {}", drops_text(d)),
        Some(host_record::Record::Status(st)) => {
            let since = time::utc_if_known(st.last_batch_unix_ns)
                .map_or_else(|| "never".to_owned(), |t| format!("since {t}"));
            match st.state() {
                host_status::State::Silent => format!(
                    "!! {host} SILENT: no batch for over {} ms ({since})",
                    st.silent_after_ms
                ),
                host_status::State::Back => {
                    format!("!! {host} BACK: sending again (silent {since})")
                }
                host_status::State::Unspecified => format!("!! {host} host status of unknown kind"),
            }
        }
        None => format!("!! {host} empty host record"),
    }
}

fn sequence_text(r: &HostRecord, s: &SequenceRecord) -> String {
    let (first, last) = (s.first, s.last);
    match s.kind() {
        sequence_record::Kind::Gap if first == last => {
            format!("GAP: batch {first} never arrived")
        }
        sequence_record::Kind::Gap => format!("GAP: batches {first}..{last} never arrived"),
        sequence_record::Kind::Duplicate => {
            format!("DUPLICATE: batch {first} arrived again, not shown twice")
        }
        sequence_record::Kind::Restart => {
            let instance = r.host.as_ref().map_or("?", |h| &h.sensor_instance_id);
            format!(
                "RESTART: sensor restarted as instance {}, first batch {first}",
                clean(instance)
            )
        }
        sequence_record::Kind::Late => {
            format!("LATE: batch {first}, reported missing, arrived after all")
        }
        sequence_record::Kind::Unspecified => "sequence record of unknown kind".to_owned(),
    }
}

fn drops_text(d: &DropCounters) -> String {
    let mut text = format!(
        "kernel_ringbuf_full={} userspace_queue_full={} userspace_batches_dropped={} \
         userspace_events_dropped={} malformed_kernel_records={} kernel_net_ringbuf_full={}",
        d.kernel_ringbuf_full,
        d.userspace_queue_full,
        d.userspace_batches_dropped,
        d.userspace_events_dropped,
        d.malformed_kernel_records,
        d.kernel_net_ringbuf_full
    );
    // The disk spool's losses (totals since the spool was created), only
    // when there are any: most hosts never lose a spooled batch.
    if d.spool_batches_dropped + d.spool_corrupt_records > 0 {
        text.push_str(&format!(
            " spool_batches_dropped={} spool_events_dropped={} spool_dropped_sealed={}..{} \
             spool_corrupt_records={} spool_corrupt_bytes={}",
            d.spool_batches_dropped,
            d.spool_events_dropped,
            d.spool_dropped_first_sealed_unix_ns,
            d.spool_dropped_last_sealed_unix_ns,
            d.spool_corrupt_records,
            d.spool_corrupt_bytes
        ));
    }
    text
}

/// argv as a shell would need it: arguments with blanks or quotes are
/// single-quoted, so `a "b c"` is not shown as three arguments.
fn join_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\'));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Control characters (ESC, CR, BEL...) shown escaped, never emitted.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use sequence_record::Kind;

    #[test]
    fn header_and_rows_line_up() {
        let h = header();
        let line = render(&fixtures::exec(&["curl", "-s"], false));
        assert!(h.starts_with(&format!("TIME{}HOST", " ".repeat(21))), "{h}");
        let details_at = h.find("DETAILS").unwrap();
        assert_eq!(
            &line[details_at..details_at + 13],
            "/usr/bin/curl",
            "{h}\n{line}"
        );
        assert_eq!(h.find("COMM"), line.find("curl "));
    }

    #[test]
    fn exec_shows_file_argv_and_short_hash() {
        let line = render(&fixtures::exec(&["curl", "-s", "http://x"], false));
        assert_eq!(
            line,
            "2026-12-04T15:25:45.678Z kiosk-42       exec         4242       1   1000 curl             \
             /usr/bin/curl  [curl -s http://x]  sha256:0123456789ab"
        );
    }

    #[test]
    fn alert_shows_level_title_attack_ids_subject_and_author() {
        let line = render(&fixtures::alert());
        assert!(
            line.ends_with(
                "alert        4242       1   1000 x                HIGH \"Execution From a World-Writable Directory\" \
                 [T1204.002] on exec /tmp/x  rule by rxsentry (builtin:exec_world_writable.yml)"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_response_shows_action_rule_target_and_outcome() {
        let line = render(&fixtures::response_event());
        assert!(
            line.ends_with(
                "response        -       -      - -                RESPONSE kill_tree by \
                 detection:PHI Read Followed by an Outbound Connection pid 4242 killed 4242,4243 ok \
                 (/var/lib/pharmacy/phi/p.json then 10.9.0.2:443 within 60 s)"
            ),
            "{line}"
        );
    }

    #[test]
    fn truncated_argv_is_marked() {
        let line = render(&fixtures::exec(&["curl"], true));
        assert!(line.contains("[curl] ARGV…  sha256:"), "{line}");
        let line = render(&fixtures::exec(&["curl"], false));
        assert!(!line.contains("ARGV…"), "{line}");
    }

    #[test]
    fn exit_shows_code_or_signal() {
        let line = render(&fixtures::exit(Some(7), None));
        assert!(
            line.ends_with("exit         4243    4242   1000 bash             exit=7  ran 0.500s"),
            "{line}"
        );
        let line = render(&fixtures::exit(None, Some(9)));
        assert!(line.contains(" signal=9  ran"), "{line}");
        assert!(!line.contains("exit="), "{line}");
    }

    #[test]
    fn fork_shows_parent() {
        let line = render(&fixtures::fork());
        assert!(
            line.starts_with("2026-12-04T12:00:01.500Z kiosk-42       fork         4243    4242"),
            "{line}"
        );
        assert!(line.ends_with("parent=4242"), "{line}");
    }

    #[test]
    fn records_are_flagged_lines() {
        assert_eq!(
            render(&fixtures::sequence(Kind::Gap, 5, 7)),
            "!! store-0042 GAP: batches 5..7 never arrived"
        );
        assert_eq!(
            render(&fixtures::sequence(Kind::Gap, 5, 5)),
            "!! store-0042 GAP: batch 5 never arrived"
        );
        assert!(
            render(&fixtures::sequence(Kind::Duplicate, 9, 9))
                .starts_with("!! store-0042 DUPLICATE: batch 9 arrived again")
        );
        assert!(
            render(&fixtures::sequence(Kind::Restart, 1, 1))
                .starts_with("!! store-0042 RESTART: sensor restarted as instance inst-7")
        );
        let drops = render(&fixtures::drops());
        assert!(
            drops.starts_with("!! store-0042 DROPS: kernel_ringbuf_full=12 "),
            "{drops}"
        );
        assert!(drops.contains("userspace_events_dropped=3"), "{drops}");
        assert_eq!(
            render(&fixtures::lagged(17)),
            "!! subscriber lagged, 17 items skipped"
        );
    }

    #[test]
    fn network_rows_show_the_flow() {
        use proto::telemetry::v1::network_event::Op;
        let line = render(&fixtures::network(Op::Close, "192.0.2.7", None));
        assert!(
            line.ends_with(
                "net          4242       1   1000 curl             close tcp 10.0.0.2:40000 -> 192.0.2.7:443 established sent=1200 recv=34000"
            ),
            "{line}"
        );
        let line = render(&fixtures::network(Op::DnsQuery, "::1", Some("pos.example")));
        assert!(
            line.contains("dns tcp 10.0.0.2:40000 -> [::1]:443"),
            "{line}"
        );
        assert!(line.ends_with(" A pos.example"), "{line}");
        let line = render(&fixtures::network(Op::Listen, "x\u{1b}[2J", None));
        assert!(!line.contains("->"), "{line}");
        let line = render(&fixtures::network(Op::Connect, "x\u{1b}[2J", None));
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn coalesced_opens_show_their_count_and_start() {
        let line = render(&fixtures::file_read(0));
        assert!(
            line.ends_with("read /var/lib/pharmacy/rx.db"),
            "a reported open: {line}"
        );
        let line = render(&fixtures::file_read(49_999));
        assert!(
            line.ends_with(
                "read /var/lib/pharmacy/rx.db  x49999 more since 2026-12-04T12:00:04.000Z"
            ),
            "its summary: {line}"
        );
    }

    #[test]
    fn time_is_utc_and_host_is_the_hostname() {
        let line = render(&fixtures::exec(&["curl"], false));
        assert!(
            line.starts_with("2026-12-04T15:25:45.678Z kiosk-42 "),
            "the sensor's wall time, not boot seconds; the hostname, not the id: {line}"
        );
        assert!(!line.contains("store-0042"), "{line}");
        let line = render(&fixtures::exec_without_wall_time());
        assert!(
            line.starts_with("boot+12345.678           kiosk-42 "),
            "an older sensor's event keeps its boot time, marked: {line}"
        );
        let line = render(&fixtures::fork_of_unnamed_host());
        assert!(
            line.starts_with("2026-12-04T12:00:01.500Z store-0042 "),
            "no hostname: the id: {line}"
        );
        assert_eq!(header().find("HOST"), line.find("store-0042"));
    }

    #[test]
    fn argv_with_blanks_is_quoted() {
        let argv = ["sh", "-c", "echo 'hi' there", ""].map(String::from);
        assert_eq!(join_argv(&argv), r#"sh -c 'echo '\''hi'\'' there' ''"#);
    }

    #[test]
    fn terminal_escapes_are_neutralised() {
        let line = render(&fixtures::exec(&["x\u{1b}[2J", "a\rb"], false));
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(r"x\u{1b}[2J"), "{line}");
    }
}
