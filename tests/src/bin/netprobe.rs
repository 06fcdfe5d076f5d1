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
        _ => {
            eprintln!("usage: netprobe serve|tcp|udp|icmp|tput|rr|flood ... (see the source)");
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
