//! Enriched telemetry events (protobuf) as rules see them (feature
//! `proto`): which category an event is, and its event-specific fields.
//! One mapping for the sensor (live events) and `rxsentry rules test`
//! (recorded ones), so a rule matches the same way in both.

use proto::telemetry::v1::{
    EventKind, event::Kind, file_event::Operation, network_event::Op, network_event::Protocol,
    policy_event,
};

use crate::{Category, CommandLine, EventRef};

/// The Sigma category of an event, if rules look at its kind: successful
/// operations only.
pub fn category_of(kind: &Kind) -> Option<(Category, EventKind)> {
    match kind {
        Kind::Exec(_) => Some((Category::ProcessCreation, EventKind::Exec)),
        Kind::Policy(p) if p.action() == policy_event::Action::Blocked => {
            Some((Category::AllowlistBlock, EventKind::Policy))
        }
        // A summary of coalesced opens repeats an open already evaluated.
        Kind::File(f) if f.result >= 0 && f.repeats == 0 => match f.operation() {
            Operation::OpenRead => Some((Category::FileAccess, EventKind::File)),
            Operation::OpenWrite | Operation::Rename => {
                Some((Category::FileEvent, EventKind::File))
            }
            _ => None,
        },
        Kind::Network(n) => match n.op() {
            Op::Connect | Op::Accept | Op::UdpConnect | Op::UdpSend | Op::DnsQuery => {
                Some((Category::NetworkConnection, EventKind::Network))
            }
            Op::Listen => Some((Category::NetworkListen, EventKind::Network)),
            Op::Close | Op::Unspecified => None,
        },
        _ => None,
    }
}

/// Fills `view` with the fields `kind` itself carries (an exec's image and
/// command line, a file's target, a connection's ends) and returns what
/// the event was about (the executed file, the path, the address:port);
/// `None` for a kind rules do not look at. The process fields (`Image` of
/// a file or network event, parents, user) are the caller's.
pub fn fill<'a>(view: &mut EventRef<'a>, kind: &'a Kind) -> Option<String> {
    Some(match kind {
        Kind::Exec(e) => {
            view.image = Some(&e.filename);
            view.command_line = CommandLine::Argv(&e.argv);
            e.filename.clone()
        }
        Kind::Policy(p) => {
            view.image = Some(&p.path);
            p.path.clone()
        }
        Kind::File(f) => {
            let target = if f.operation() == Operation::Rename && !f.new_path.is_empty() {
                &f.new_path
            } else {
                &f.path
            };
            view.target_filename = Some(target);
            target.clone()
        }
        Kind::Network(n) => {
            view.protocol = match n.protocol() {
                Protocol::Tcp => Some("tcp"),
                Protocol::Udp => Some("udp"),
                Protocol::Unspecified => None,
            };
            view.source_ip = Some(&n.local_address);
            view.source_port = Some(n.local_port);
            if view.category == Category::NetworkListen {
                format!("listen {}:{}", n.local_address, n.local_port)
            } else {
                view.destination_ip = Some(&n.remote_address);
                view.destination_port = Some(n.remote_port);
                view.initiated = Some(n.op() != Op::Accept);
                format!("{}:{}", n.remote_address, n.remote_port)
            }
        }
        _ => return None,
    })
}

/// The file an event is about, for a response that acts on files
/// (quarantine): the executed, blocked, written or renamed-to file.
pub fn file_of(kind: &Kind) -> Option<&str> {
    match kind {
        Kind::Exec(e) => Some(&e.filename),
        Kind::Policy(p) => Some(&p.path),
        Kind::File(f) if f.operation() == Operation::Rename && !f.new_path.is_empty() => {
            Some(&f.new_path)
        }
        Kind::File(f) => Some(&f.path),
        _ => None,
    }
}
