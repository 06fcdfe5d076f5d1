//! Network events on the real kernel: TCP between two network namespaces
//! the test creates (veth), IPv6 on loopback, DNS queries to a stub on
//! loopback, UDP de-duplication, and exclusions. The sensor runs in the host
//! namespace; the tracepoints see every namespace.

use std::time::Duration;

use proto::telemetry::v1::{EventKind, NetworkEvent, SubscribeRequest, event, network_event::Op};
use tests::{
    Collector, Sensor, SensorOptions, Subscription,
    netns::{Helper, NetnsPair},
};

/// Listens on (argv[1], port 0), prints the port, accepts one connection,
/// reads argv[2] bytes, sends argv[3] bytes, closes.
const TCP_SERVER: &str = r#"
import socket, sys
host = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen(1)
print("port", s.getsockname()[1], flush=True)
c, _ = s.accept()
want, got = int(sys.argv[2]), 0
while got < want:
    d = c.recv(65536)
    if not d:
        break
    got += len(d)
c.sendall(b"s" * int(sys.argv[3]))
c.close()
s.close()
print("got", got, flush=True)
"#;

/// Connects to (argv[1], argv[2]), prints its local port, sends argv[3]
/// bytes, reads until the server closes, then closes.
const TCP_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("local", c.getsockname()[1], flush=True)
c.sendall(b"c" * int(sys.argv[3]))
got = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    got += len(d)
c.close()
print("got", got, flush=True)
"#;

/// A DNS stub on 127.0.0.1: prints its port, answers nothing, counts
/// queries until killed.
const DNS_STUB: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("port", s.getsockname()[1], flush=True)
while True:
    s.recvfrom(512)
"#;

/// Sends a DNS query for argv[2] (type A) with sendto(), one for argv[3]
/// (type AAAA) with connect() + send() on an IPv6 socket to the IPv4-mapped
/// stub, one for argv[6] (type TXT) with sendmsg(), then argv[5] datagrams
/// to the non-DNS port argv[4] with sendto().
const DNS_CLIENT: &str = r#"
import socket, struct, sys
def query(name, qtype):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(query(sys.argv[2], 1), ("127.0.0.1", port))
v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
v.connect(("::ffff:127.0.0.1", port))
v.send(query(sys.argv[3], 28))
u.sendmsg([query(sys.argv[6], 16)], [], 0, ("127.0.0.1", port))
for _ in range(int(sys.argv[5])):
    u.sendto(b"chatter", ("127.0.0.1", int(sys.argv[4])))
print("sent", flush=True)
"#;

fn options(network: &str) -> SensorOptions {
    SensorOptions {
        extra_config: format!("[batching]\nmax_events = 64\nmax_delay_ms = 100\n{network}"),
    }
}

async fn subscribe(collector: &Collector) -> anyhow::Result<Subscription> {
    let request = SubscribeRequest {
        kinds: vec![EventKind::Network as i32],
        ..Default::default()
    };
    Subscription::open(&collector.url(), request).await
}

fn network(sub: &Subscription) -> Vec<&NetworkEvent> {
    sub.events
        .iter()
        .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
            event::Kind::Network(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// (local address, local port, remote address, remote port).
fn flow(n: &NetworkEvent) -> (&str, u32, &str, u32) {
    (
        n.local_address.as_str(),
        n.local_port,
        n.remote_address.as_str(),
        n.remote_port,
    )
}

fn pid(n: &NetworkEvent) -> u32 {
    n.process.as_ref().map_or(0, |p| p.pid)
}

/// Events of `op` by process `pid`.
fn of(sub: &Subscription, op: Op, pid: u32) -> Vec<&NetworkEvent> {
    network(sub)
        .into_iter()
        .filter(|n| n.op() == op && self::pid(n) == pid)
        .collect()
}

/// Sends one datagram from this process to a port of its own and waits
/// for its event: every network event written before it has arrived.
async fn udp_barrier(sub: &mut Subscription) -> anyhow::Result<()> {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = sink.local_addr()?.port();
    std::net::UdpSocket::bind("127.0.0.1:0")?.send_to(b"barrier", ("127.0.0.1", port))?;
    let me = std::process::id();
    sub.until(Duration::from_secs(20), |s| {
        of(s, Op::UdpSend, me)
            .iter()
            .any(|n| n.remote_port == u32::from(port))
    })
    .await
}

/// Runs TCP_SERVER in `server_ns` on `server_addr` and TCP_CLIENT in
/// `client_ns`; returns (server pid, client pid, server port, client port).
fn tcp_exchange(
    server_ns: Option<&str>,
    client_ns: Option<&str>,
    server_addr: &str,
    send: usize,
    reply: usize,
) -> anyhow::Result<(u32, u32, u32, u32)> {
    let mut server = Helper::python(
        server_ns,
        TCP_SERVER,
        &[server_addr, &send.to_string(), &reply.to_string()],
    )?;
    let port = server.line("port")?;
    let mut client = Helper::python(
        client_ns,
        TCP_CLIENT,
        &[server_addr, &port, &send.to_string()],
    )?;
    let local = client.line("local")?;
    assert_eq!(
        client.line("got")?,
        reply.to_string(),
        "client got the reply"
    );
    assert_eq!(
        server.line("got")?,
        send.to_string(),
        "server got the request"
    );
    let pids = (server.pid(), client.pid());
    client.wait()?;
    server.wait()?;
    Ok((pids.0, pids.1, port.parse()?, local.parse()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_between_namespaces_connect_accept_close() -> anyhow::Result<()> {
    let netns = NetnsPair::create()?;
    let collector = Collector::start().await?;
    let mut sub = subscribe(&collector).await?;
    let sensor = Sensor::start(&collector, options("")).await?;

    const SEND: usize = 3000;
    const REPLY: usize = 70_000;
    let (server, client, sport, cport) = tcp_exchange(
        Some(&netns.b.name),
        Some(&netns.a.name),
        &netns.addr_b,
        SEND,
        REPLY,
    )?;
    sub.until(Duration::from_secs(20), |s| {
        !of(s, Op::Close, client).is_empty() && of(s, Op::Close, server).len() >= 2
    })
    .await?;

    let connect = of(&sub, Op::Connect, client);
    assert_eq!(connect.len(), 1, "one connect by the client: {connect:?}");
    let c = connect[0];
    let (a_addr, b_addr) = (netns.addr_a.as_str(), netns.addr_b.as_str());
    assert_eq!(flow(c), (a_addr, cport, b_addr, sport));
    assert_eq!(c.result, "established");
    let process = c.process.as_ref().unwrap();
    assert_eq!(process.comm, "python3");
    // Read from the task by the kernel program (parent, credentials).
    assert_eq!(process.ppid, std::process::id(), "{process:?}");
    assert_eq!((process.uid, process.euid), (0, 0), "{process:?}");

    let accept = of(&sub, Op::Accept, server);
    assert_eq!(accept.len(), 1, "one accept by the server: {accept:?}");
    assert_eq!(flow(accept[0]), (b_addr, sport, a_addr, cport));
    let listen = of(&sub, Op::Listen, server);
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0].local_port, sport);

    // Byte counts are the kernel's: payload sent exactly (no retransmits on
    // a veth), payload received plus 1 if the peer's FIN arrived before the
    // socket was freed (docs/network-telemetry.md).
    assert_eq!(
        of(&sub, Op::Close, client).len(),
        1,
        "one close by the client"
    );
    assert_eq!(of(&sub, Op::Close, server).len(), 2, "accepted + listening");
    let client_close = of(&sub, Op::Close, client)[0];
    assert_eq!(client_close.local_port, cport);
    assert_eq!(client_close.bytes_sent, SEND as u64, "{client_close:?}");
    assert!(
        [REPLY as u64, REPLY as u64 + 1].contains(&client_close.bytes_received),
        "{client_close:?}"
    );
    let server_close = of(&sub, Op::Close, server)
        .into_iter()
        .find(|n| n.remote_port == cport)
        .expect("close of the accepted socket");
    assert_eq!(server_close.bytes_sent, REPLY as u64, "{server_close:?}");
    assert!(
        [SEND as u64, SEND as u64 + 1].contains(&server_close.bytes_received),
        "{server_close:?}"
    );
    // The sensor's own connection to the collector is never reported.
    assert!(network(&sub).iter().all(|n| pid(n) != sensor.pid()));

    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_connect_accept_and_refused() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let mut sub = subscribe(&collector).await?;
    let sensor = Sensor::start(&collector, options("")).await?;

    let (server, client, sport, cport) = tcp_exchange(None, None, "::1", 10, 20)?;
    // A refused connect: a port nothing listens on (the server's, now closed).
    let refused = Helper::python(
        None,
        "import socket,sys\ntry:\n  socket.create_connection(('::1', int(sys.argv[1])))\nexcept ConnectionRefusedError:\n  print('refused', flush=True)\n",
        &[&sport.to_string()],
    )?;
    let refused_pid = refused.pid();
    refused.wait()?;
    sub.until(Duration::from_secs(20), |s| {
        !of(s, Op::Connect, client).is_empty()
            && !of(s, Op::Accept, server).is_empty()
            && !of(s, Op::Connect, refused_pid).is_empty()
    })
    .await?;
    let c = of(&sub, Op::Connect, client)[0];
    assert_eq!(flow(c), ("::1", cport, "::1", sport));
    assert_eq!(
        c.family(),
        proto::telemetry::v1::network_event::Family::Ipv6
    );
    let a = of(&sub, Op::Accept, server)[0];
    assert_eq!((a.remote_address.as_str(), a.remote_port), ("::1", cport));
    let r = of(&sub, Op::Connect, refused_pid)[0];
    assert_eq!((r.remote_port, r.result.as_str()), (sport, "failed"));
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_to_a_loopback_stub_and_udp_dedup() -> anyhow::Result<()> {
    let mut stub = Helper::python(None, DNS_STUB, &[])?;
    let dns_port = stub.line("port")?;
    // A port for plain datagrams, held (bound, never read) for the whole
    // test, so nothing else takes it meanwhile.
    let chatter = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let chatter_port = chatter.local_addr()?.port().to_string();
    let collector = Collector::start().await?;
    let mut sub = subscribe(&collector).await?;
    let sensor = Sensor::start(
        &collector,
        options(&format!("[network]\ndns_ports = [{dns_port}]\n")),
    )
    .await?;

    let marker = tests::marker("q");
    let (name_a, name_aaaa) = (format!("{marker}.pos.test"), format!("v6.{marker}.test"));
    let name_txt = format!("msg.{marker}.test");
    let mut client = Helper::python(
        None,
        DNS_CLIENT,
        &[
            &dns_port,
            &name_a,
            &name_aaaa,
            &chatter_port,
            "5",
            &name_txt,
        ],
    )?;
    client.line("sent")?;
    let client_pid = client.pid();
    client.wait()?;
    sub.until(Duration::from_secs(20), |s| {
        of(s, Op::DnsQuery, client_pid).len() >= 3 && !of(s, Op::UdpSend, client_pid).is_empty()
    })
    .await?;
    // A (wrong) duplicate datagram event would be in the network ring
    // before a datagram this test sends afterwards: once that is seen, any
    // duplicate has been seen too.
    udp_barrier(&mut sub).await?;

    let queries = of(&sub, Op::DnsQuery, client_pid);
    assert_eq!(queries.len(), 3, "one event per query: {queries:?}");
    let q = &queries[0].dns_questions;
    assert_eq!(q.len(), 1, "{queries:?}");
    assert_eq!(
        (q[0].name.as_str(), q[0].type_name.as_str()),
        (name_a.as_str(), "A")
    );
    assert_eq!(
        (
            queries[0].remote_address.as_str(),
            queries[0].remote_port.to_string()
        ),
        ("127.0.0.1", dns_port.clone())
    );
    // connect() + send() on an IPv6 socket: the peer comes from the socket.
    let q6 = &queries[1];
    assert_eq!(q6.dns_questions[0].name, name_aaaa);
    assert_eq!(q6.dns_questions[0].type_name, "AAAA");
    assert_eq!(q6.remote_address, "::ffff:127.0.0.1");
    assert!(q6.dns_error.is_empty(), "{q6:?}");
    // sendmsg(): destination and payload through the user's msghdr.
    let q3 = &queries[2];
    assert_eq!(q3.dns_questions[0].name, name_txt);
    assert_eq!(q3.dns_questions[0].type_name, "TXT");
    assert_eq!(q3.remote_address, "127.0.0.1");
    let udp_connect = of(&sub, Op::UdpConnect, client_pid);
    assert_eq!(udp_connect.len(), 1);
    assert_eq!(udp_connect[0].remote_port.to_string(), dns_port);

    let sends = of(&sub, Op::UdpSend, client_pid);
    assert_eq!(
        sends.len(),
        1,
        "5 datagrams to one destination inside the window are one event: {sends:?}"
    );
    assert_eq!(sends[0].remote_port.to_string(), chatter_port);
    sensor.stop().await?;
    Ok(())
}

/// UDP through io_uring, which passes no syscall tracepoint. Where BPF-LSM
/// runs, a sendmsg (run inline in `io_uring_enter`) and a connect + send
/// (run by io_uring's worker threads) are each reported once, as their
/// syscalls are, with the process. Elsewhere (this host) nothing sees
/// them: the sensor says so at start, the ring's setup is what it
/// reports (file telemetry's test), and this test finds no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_through_io_uring_is_reported_where_bpf_lsm_runs() -> anyhow::Result<()> {
    // Destinations held (bound, never read) for the whole test.
    let sinks = [
        std::net::UdpSocket::bind("127.0.0.1:0")?,
        std::net::UdpSocket::bind("127.0.0.1:0")?,
    ];
    let [inline_port, worker_port] =
        [&sinks[0], &sinks[1]].map(|s| s.local_addr().map(|a| a.port().to_string()));
    let (inline_port, worker_port) = (inline_port?, worker_port?);
    let collector = Collector::start().await?;
    let mut sub = subscribe(&collector).await?;
    let sensor = Sensor::start(&collector, options("")).await?;
    let lsm = tests::kernel::kernel().lsm.is_ok();
    let said = if lsm {
        "io_uring UDP sends: BPF-LSM socket_sendmsg/socket_connect"
    } else {
        "io_uring UDP sends: not seen, setups reported (no BPF-LSM on this kernel)"
    };
    assert!(sensor.log().contains(said), "{}", sensor.log());

    let uring = tests::bin_path("uring");
    let uring = uring.to_str().expect("utf-8 path");
    let inline = tests::procs::run_for_pid(uring, &["sendmsg", "127.0.0.1", &inline_port])?;
    let worker =
        tests::procs::run_for_pid(uring, &["send", "127.0.0.1", &worker_port, "--worker"])?;
    udp_barrier(&mut sub).await?;

    let to = |events: Vec<&NetworkEvent>, port: &str| -> Vec<(String, String)> {
        events
            .into_iter()
            .map(|n| (n.remote_address.clone(), n.remote_port.to_string()))
            .filter(|(_, p)| p == port)
            .collect()
    };
    let sent_inline = to(of(&sub, Op::UdpSend, inline), &inline_port);
    let connected = to(of(&sub, Op::UdpConnect, worker), &worker_port);
    let sent_by_worker = to(of(&sub, Op::UdpSend, worker), &worker_port);
    if lsm {
        let want = |port: &str| vec![("127.0.0.1".to_owned(), port.to_owned())];
        assert_eq!(sent_inline, want(&inline_port), "io_uring sendmsg");
        assert_eq!(connected, want(&worker_port), "io_uring connect (worker)");
        assert_eq!(sent_by_worker, want(&worker_port), "io_uring send (worker)");
    } else {
        assert_eq!(
            (sent_inline, connected, sent_by_worker),
            (vec![], vec![], vec![]),
            "no hook here sees io_uring's sends; if one does now, this test must say so"
        );
    }
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_ports_and_programs_yield_no_event() -> anyhow::Result<()> {
    // The excluded server's port must be known before the sensor starts.
    let mut excluded = Helper::python(None, TCP_SERVER, &["127.0.0.1", "5", "5"])?;
    let port = excluded.line("port")?;
    // An excluded program: a copy of the interpreter (its own inode).
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("excluded-python");
    tests::exe::copy_executable(&std::fs::canonicalize(tests::netns::python())?, &copy)?;
    let copy = copy.to_str().expect("utf-8 temp path").to_owned();
    let collector = Collector::start().await?;
    let mut sub = subscribe(&collector).await?;
    let config = format!(
        "[network]\nexclude_local_ports = [{port}]\nexclude_executables = [\"{copy}\"]\n\
         [[network.exclude_remote]]\naddress = \"127.0.0.0/8\"\nport = {port}\n"
    );
    let sensor = Sensor::start(&collector, options(&config)).await?;

    let mut client = Helper::python(None, TCP_CLIENT, &["127.0.0.1", &port, "5"])?;
    client.line("got")?;
    let (excluded_client, excluded_server) = (client.pid(), excluded.pid());
    client.wait()?;
    excluded.line("got")?;
    excluded.wait()?;

    // The excluded program connects to a server that is not excluded: the
    // accept is seen, the program's connect is not.
    let mut server = Helper::python(None, TCP_SERVER, &["127.0.0.1", "5", "5"])?;
    let server_port = server.line("port")?;
    let mut program =
        Helper::python_at(&copy, None, TCP_CLIENT, &["127.0.0.1", &server_port, "5"])?;
    let program_port: u32 = program.line("local")?.parse()?;
    program.line("got")?;
    let (program_pid, server_pid) = (program.pid(), server.pid());
    program.wait()?;
    server.wait()?;

    // A connection that is not excluded, afterwards: once it is seen, the
    // excluded ones would have been seen too.
    let (server, client, ..) = tcp_exchange(None, None, "127.0.0.1", 5, 5)?;
    sub.until(Duration::from_secs(20), |s| {
        !of(s, Op::Close, client).is_empty() && !of(s, Op::Accept, server).is_empty()
    })
    .await?;
    let accepted = of(&sub, Op::Accept, server_pid);
    assert_eq!(accepted.len(), 1, "the excluded program's peer is seen");
    assert_eq!(accepted[0].remote_port, program_port);
    let leaked: Vec<_> = network(&sub)
        .into_iter()
        .filter(|n| {
            n.local_port.to_string() == port
                || n.remote_port.to_string() == port
                || [excluded_client, excluded_server, program_pid].contains(&pid(n))
        })
        .collect();
    assert!(leaked.is_empty(), "excluded traffic reported: {leaked:?}");
    sensor.stop().await?;
    Ok(())
}
