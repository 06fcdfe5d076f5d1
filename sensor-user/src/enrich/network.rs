//! Network records -> `NetworkEvent`: addresses as strings, enums from the
//! kernel's numbers, DNS questions with type names.

use proto::telemetry::v1::{
    DnsQuestion, NetworkEvent,
    network_event::{Family, Op, Protocol},
};
use sensor_common::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, NET_CONNECT_FAILED, net_op};

use crate::events::{NetRecord, dns};

/// TCP state names (include/net/tcp_states.h) for a close's `result`.
fn tcp_state_name(state: u8) -> String {
    let name = match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        other => return format!("state{other}"),
    };
    name.to_owned()
}

/// A network record as a `NetworkEvent`, without its process.
pub fn network_event(n: NetRecord) -> NetworkEvent {
    let op = match n.op {
        net_op::CONNECT => Op::Connect,
        net_op::ACCEPT => Op::Accept,
        net_op::LISTEN => Op::Listen,
        net_op::CLOSE => Op::Close,
        net_op::UDP_CONNECT => Op::UdpConnect,
        net_op::UDP_SEND => Op::UdpSend,
        net_op::DNS_QUERY => Op::DnsQuery,
        _ => Op::Unspecified,
    };
    let result = match op {
        Op::Connect if n.result == NET_CONNECT_FAILED => "failed".to_owned(),
        Op::Connect => "established".to_owned(),
        Op::Close => tcp_state_name(n.result),
        _ => String::new(),
    };
    NetworkEvent {
        process: None,
        op: op as i32,
        protocol: match n.protocol {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => Protocol::Unspecified,
        } as i32,
        family: match n.family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            _ => Family::Unspecified,
        } as i32,
        local_address: n.local.ip().to_string(),
        local_port: u32::from(n.local.port()),
        remote_address: n.remote.ip().to_string(),
        remote_port: u32::from(n.remote.port()),
        result,
        bytes_sent: n.bytes_sent,
        bytes_received: n.bytes_received,
        dns_questions: n
            .dns_questions
            .into_iter()
            .map(|q| DnsQuestion {
                type_name: dns::type_name(q.qtype),
                name: q.name,
                qtype: u32::from(q.qtype),
            })
            .collect(),
        dns_error: n.dns_error.map(|e| e.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskIdentity;

    #[test]
    fn failed_connect_and_close_state_are_named() {
        let record = NetRecord {
            timestamp_ns: 1,
            task: TaskIdentity::default(),
            op: net_op::CONNECT,
            protocol: IPPROTO_TCP,
            family: AF_INET6,
            local: "[::1]:5000".parse().unwrap(),
            remote: "[::1]:80".parse().unwrap(),
            result: NET_CONNECT_FAILED,
            bytes_sent: 0,
            bytes_received: 0,
            dns_questions: vec![],
            dns_error: None,
            partial: false,
        };
        let e = network_event(record.clone());
        assert_eq!(e.op(), Op::Connect);
        assert_eq!(e.result, "failed");
        assert_eq!(
            (e.family(), e.remote_address.as_str()),
            (Family::Ipv6, "::1")
        );
        let close = NetRecord {
            op: net_op::CLOSE,
            result: 8,
            ..record
        };
        assert_eq!(network_event(close).result, "close_wait");
    }
}
