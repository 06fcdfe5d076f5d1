//! `netprobe`: the traffic the isolation tests and `cargo xtask bench` send
//! between network namespaces (run it under `ip netns exec`). No external
//! tools: the test machines have no ping, nc or iperf.
//!
//! ```text
//! netprobe serve ADDR PORT          TCP echo on PORT, TCP discard on PORT+1, UDP echo on PORT
//! netprobe tcp ADDR PORT [MS]       exit 0 if a TCP echo round trip works within MS
//! netprobe udp ADDR PORT [MS] [SPORT]  the same over UDP, from local port SPORT (0: any)
//! netprobe icmp ADDR [MS]           the same with an ICMP/ICMPv6 echo (raw socket)
//! netprobe tput ADDR PORT SECS      TCP bulk send to PORT+1, prints "MBps <n>"
//! netprobe rr ADDR PORT COUNT       UDP round trips, prints "p50_us <n> p99_us <n>"
//! netprobe flood ADDR PORT SECS     one UDP datagram every 100 us for SECS
//! netprobe frames SEND_NS SEND_IF RECV_IF SRC DST [MS]
//!                                   hand-made Ethernet frames (one good IPv4/UDP,
//!                                   three unparseable) sent out SEND_IF from netns
//!                                   SEND_NS, prints which arrived on RECV_IF here
//! netprobe tun NAME LOCAL PEER PORT [MS]
//!                                   on the tun device NAME: a datagram out to PEER:9
//!                                   and a UDP echo from PEER:40000 to LOCAL:PORT
//!                                   written in; prints "egress=0|1 echo=0|1"
//! ```

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let ms = |i: usize| Duration::from_millis(arg(i).parse().unwrap_or(1500));
    let addr = || -> IpAddr { arg(1).parse().expect("ADDR must be an IP address") };
    let port = || -> u16 { arg(2).parse().expect("PORT must be a number") };
    let ok = match arg(0) {
        "serve" => serve(SocketAddr::new(addr(), port())),
        "tcp" => tcp(SocketAddr::new(addr(), port()), ms(3)),
        "udp" => udp(
            SocketAddr::new(addr(), port()),
            ms(3),
            match arg(4) {
                "" => 0,
                sport => sport.parse().expect("SPORT must be a port number"),
            },
        ),
        "icmp" => icmp(addr(), ms(2)),
        "tput" => tput(
            SocketAddr::new(addr(), port() + 1),
            arg(3).parse().unwrap_or(2),
        ),
        "rr" => rr(
            SocketAddr::new(addr(), port()),
            arg(3).parse().unwrap_or(1000),
        ),
        "flood" => flood(SocketAddr::new(addr(), port()), arg(3).parse().unwrap_or(2)),
        "frames" => raw::frames(
            arg(1),
            arg(2),
            arg(3),
            arg(4).parse().expect("SRC must be an IPv4 address"),
            arg(5).parse().expect("DST must be an IPv4 address"),
            ms(6),
        ),
        "tun" => raw::tun(
            arg(1),
            arg(2).parse().expect("LOCAL must be an IPv4 address"),
            arg(3).parse().expect("PEER must be an IPv4 address"),
            arg(4).parse().expect("PORT must be a number"),
            ms(5),
        ),
        _ => {
            eprintln!(
                "usage: netprobe serve|tcp|udp|icmp|tput|rr|flood|frames|tun ... (see the source)"
            );
            return ExitCode::from(2);
        }
    };
    match ok {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netprobe {}: {e}", arg(0));
            ExitCode::FAILURE
        }
    }
}

type Result = std::io::Result<()>;

fn serve(at: SocketAddr) -> Result {
    let echo = TcpListener::bind(at)?;
    let sink = TcpListener::bind(SocketAddr::new(at.ip(), at.port() + 1))?;
    let udp = UdpSocket::bind(at)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    std::thread::spawn(move || {
        for conn in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    for conn in echo.incoming().flatten() {
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn tcp(to: SocketAddr, timeout: Duration) -> Result {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"netprobe")?;
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf)?;
    Ok(())
}

fn udp(to: SocketAddr, timeout: Duration, source_port: u16) -> Result {
    let s = UdpSocket::bind(SocketAddr::new(unspecified(to.ip()), source_port))?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"netprobe", to)?;
    let mut buf = [0u8; 64];
    s.recv_from(&mut buf)?;
    Ok(())
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u8; 16]),
    }
}

fn icmp(to: IpAddr, timeout: Duration) -> Result {
    let (domain, proto, request, reply) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut packet = vec![request, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
    packet.extend_from_slice(b"netprobe");
    if to.is_ipv4() {
        // The kernel fills the ICMPv6 checksum, not the ICMPv4 one.
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    s.send_to(&packet, &SocketAddr::new(to, 0).into())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.recv(&mut buf)?;
        // SAFETY: recv initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // IPv4 raw sockets deliver the IP header too.
        let icmp = if to.is_ipv4() {
            &data[((data[0] & 0x0f) as usize * 4).min(data.len())..]
        } else {
            &data[..]
        };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return Ok(());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tput(to: SocketAddr, secs: u64) -> Result {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    let buf = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("MBps {:.1}", sent as f64 / secs / 1e6);
    Ok(())
}

fn rr(to: SocketAddr, count: usize) -> Result {
    let s = UdpSocket::bind(SocketAddr::new(unspecified(to.ip()), 0))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.connect(to)?;
    let mut times = Vec::with_capacity(count);
    let mut buf = [0u8; 64];
    for _ in 0..count {
        let start = Instant::now();
        s.send(b"netprobe")?;
        s.recv(&mut buf)?;
        times.push(start.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!("p50_us {:.2} p99_us {:.2}", at(0.5), at(0.99));
    Ok(())
}

fn flood(to: SocketAddr, secs: u64) -> Result {
    let s = UdpSocket::bind(SocketAddr::new(unspecified(to.ip()), 0))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        // Dropped datagrams are the point; send errors are not.
        let _ = s.send_to(b"netprobe", to);
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// Packets made by hand: what the isolation programs must refuse to parse
/// (fail closed), and traffic through an L3 (tun) device.
mod raw {
    use std::{
        ffi::CString,
        net::{Ipv4Addr, SocketAddr, UdpSocket},
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        time::{Duration, Instant},
    };

    use super::{Result, checksum};

    const ETH_P_ALL: u16 = 0x0003;
    const ETH_P_IP: u16 = 0x0800;
    /// IEEE 802 local experimental ethertype: no program knows it.
    const ETH_P_EXPERIMENTAL: u16 = 0x88b5;
    const PACKET_OUTGOING: u8 = 4;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const ECHO_SPORT: u16 = 40000;

    fn os<T: PartialOrd + Default>(ret: T) -> std::io::Result<T> {
        if ret < T::default() {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// An IPv4 header for `payload_len` bytes of `proto` (identification
    /// `id`, checksum filled in).
    fn ipv4(id: u16, proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend(((20 + payload_len) as u16).to_be_bytes());
        h.extend(id.to_be_bytes());
        h.extend([0x40, 0, 64, proto, 0, 0]);
        h.extend(src.octets());
        h.extend(dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// A UDP datagram in IPv4, checksum 0 (none, allowed over IPv4).
    fn udp4(id: u16, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
            unreachable!("IPv4 only");
        };
        let mut p = ipv4(id, 17, *s.ip(), *d.ip(), 8 + payload.len());
        p.extend(s.port().to_be_bytes());
        p.extend(d.port().to_be_bytes());
        p.extend(((8 + payload.len()) as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend(payload);
        p
    }

    fn packet_socket() -> std::io::Result<OwnedFd> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = os(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                libc::c_int::from(ETH_P_ALL.to_be()),
            )
        })?;
        // SAFETY: a new fd nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn link_addr(ifname: &str, protocol: u16) -> std::io::Result<libc::sockaddr_ll> {
        let name = CString::new(ifname).map_err(std::io::Error::other)?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        Ok(addr)
    }

    /// Sends four frames out of `send_if` (in netns `send_ns`) towards
    /// `dst` and reports which ones this namespace's `recv_if` received:
    /// `udp` (well formed), `udp-cut` (its UDP header cut after the source
    /// port), `ip-cut` (IPv4 header cut at 10 bytes) and `other` (an
    /// ethertype no program parses).
    pub fn frames(
        send_ns: &str,
        send_if: &str,
        recv_if: &str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        wait: Duration,
    ) -> Result {
        let receiver = packet_socket()?;
        let at = link_addr(recv_if, ETH_P_ALL)?;
        // SAFETY: binds to a valid sockaddr_ll of the right size.
        os(unsafe {
            libc::bind(
                receiver.as_raw_fd(),
                (&raw const at).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })?;
        // The sender lives in the other namespace: a socket keeps the
        // namespace it was made in.
        let ns = std::fs::File::open(format!("/run/netns/{send_ns}"))?;
        // SAFETY: a netns fd; only this (single) thread moves.
        os(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        let sender = packet_socket()?;
        let to = SocketAddr::from((dst, 9));
        let from = SocketAddr::from((src, 9));
        let good = udp4(0x5201, from, to, b"rxframe-udp");
        let mut udp_cut = ipv4(0x5202, 17, src, dst, 2);
        udp_cut.extend(9u16.to_be_bytes());
        let ip_cut = ipv4(0x5203, 17, src, dst, 8)[..10].to_vec();
        let frames: [(&str, u16, Vec<u8>); 4] = [
            ("udp", ETH_P_IP, good),
            ("udp-cut", ETH_P_IP, udp_cut),
            ("ip-cut", ETH_P_IP, ip_cut),
            ("other", ETH_P_EXPERIMENTAL, b"rxframe-other".to_vec()),
        ];
        for (_, ethertype, payload) in &frames {
            let out = link_addr(send_if, *ethertype)?;
            let mut frame = vec![0xff; 6];
            frame.extend([0x02, 0, 0, 0, 0, 0x01]);
            frame.extend(ethertype.to_be_bytes());
            frame.extend(payload);
            // SAFETY: sends `frame` to a valid sockaddr_ll.
            let sent = os(unsafe {
                libc::sendto(
                    sender.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const out).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            });
            match sent {
                Ok(_) => {}
                // A TC egress program dropped it (TC_ACT_SHOT comes back to
                // the sender as NET_XMIT_DROP): it does not arrive.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e),
            }
        }
        let mut seen = [false; 4];
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(n) = recv_within(&receiver, &mut buf, left)? else {
                break;
            };
            let frame = &buf[..n];
            if frame.len() < 14 {
                continue;
            }
            let payload = &frame[14..];
            for (i, (_, ethertype, sent)) in frames.iter().enumerate() {
                // The IPv4 identification (bytes 4-5) or the whole payload.
                let same = if *ethertype == ETH_P_IP {
                    payload.len() >= 6 && payload[4..6] == sent[4..6]
                } else {
                    payload.starts_with(sent)
                };
                seen[i] |= frame[12..14] == ethertype.to_be_bytes() && same;
            }
        }
        let report: Vec<String> = frames
            .iter()
            .zip(seen)
            .map(|((name, _, _), got)| format!("{name}={}", u8::from(got)))
            .collect();
        println!("{}", report.join(" "));
        Ok(())
    }

    /// Whether `fd` has something to read within `wait`.
    fn readable_within(fd: &OwnedFd, wait: Duration) -> std::io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, 60_000) as i32;
        // SAFETY: one valid pollfd.
        Ok(os(unsafe { libc::poll(&raw mut pfd, 1, ms) })? > 0)
    }

    /// One incoming frame (not our own outgoing ones), or None at timeout.
    fn recv_within(fd: &OwnedFd, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        if !readable_within(fd, wait)? {
            return Ok(None);
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are valid for their lengths.
        let n = os(unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut len,
            )
        })?;
        Ok(if from.sll_pkttype == PACKET_OUTGOING {
            Some(0)
        } else {
            Some(n as usize)
        })
    }

    /// Attaches to the (persistent, configured) tun device `name`; sends a
    /// datagram to `peer`:9 through it (egress), then writes in a UDP
    /// datagram from `peer`:40000 to `local`:`port` and waits for the echo
    /// server's answer to come out (ingress and egress).
    pub fn tun(name: &str, local: Ipv4Addr, peer: Ipv4Addr, port: u16, wait: Duration) -> Result {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        os(unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF, &raw mut req) })?;
        let fd = OwnedFd::from(dev);
        let read_until = |want: &dyn Fn(&[u8]) -> bool| -> std::io::Result<bool> {
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 2048];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !readable_within(&fd, left)? {
                    return Ok(false);
                }
                // SAFETY: buf is valid for its length.
                let n =
                    os(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
                if want(&buf[..n as usize]) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        // A UDP/IPv4 packet from a to b (ports included).
        let is_udp = |p: &[u8], a: SocketAddr, b: SocketAddr| -> bool {
            let (SocketAddr::V4(a), SocketAddr::V4(b)) = (a, b) else {
                return false;
            };
            let ihl = usize::from(p.first().copied().unwrap_or(0) & 0x0f) * 4;
            p.len() >= ihl + 8
                && p[0] >> 4 == 4
                && p[9] == 17
                && p[12..16] == a.ip().octets()
                && p[16..20] == b.ip().octets()
                && p[ihl..ihl + 2] == a.port().to_be_bytes()
                && p[ihl + 2..ihl + 4] == b.port().to_be_bytes()
        };

        let socket = UdpSocket::bind(SocketAddr::from((local, 0)))?;
        let me = socket.local_addr()?;
        let discard = SocketAddr::from((peer, 9));
        socket.send_to(b"rxtun-egress", discard)?;
        let egress = read_until(&|p| is_udp(p, me, discard))?;

        let from = SocketAddr::from((peer, ECHO_SPORT));
        let server = SocketAddr::from((local, port));
        let packet = udp4(0x5301, from, server, b"rxtun-echo");
        // SAFETY: writes one whole packet from a valid buffer.
        os(unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) })?;
        let echo = read_until(&|p| is_udp(p, server, from))?;
        println!("egress={} echo={}", u8::from(egress), u8::from(echo));
        Ok(())
    }
}
