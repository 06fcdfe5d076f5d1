//! Connect storm on loopback: N TCP connections (connect, 64 bytes each
//! way, close on both sides) from four threads against a server in this
//! process, without and with the sensor, alternated round by round; the
//! ratio of medians is the network hooks' cost (connect, accept and two
//! close events per connection, plus the sensor's userspace work on the
//! same two cores).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Result;
use collector::Collector;

use super::common::{BenchSensor, BpfStats, host_totals, median, threaded, ticks_per_sec};

/// Medians of the storm rounds, and what reached the collector.
#[derive(Default)]
pub struct ConnectStorm {
    pub connections: usize,
    pub without: Duration,
    pub with: Duration,
    /// Events the collector received per connection in the rounds with
    /// the sensor (all kinds: the box's own exec noise included).
    pub events_per_connection: f64,
    /// From one extra round with `kernel.bpf_stats_enabled`: BPF program
    /// time and the sensor's CPU time (user + system) per connection.
    pub bpf_ns_per_connection: f64,
    pub sensor_cpu_us_per_connection: f64,
}

impl ConnectStorm {
    pub fn ratio(&self) -> f64 {
        self.with.as_secs_f64() / self.without.as_secs_f64()
    }
}

/// Runs `rounds` rounds per side of `n` connections.
pub fn connect_storm(
    url: &str,
    collector: &Collector,
    n: usize,
    rounds: usize,
) -> Result<ConnectStorm> {
    let server = Server::start()?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut events = 0;
    for round in 0..rounds {
        let sensor = BenchSensor::start(url)?;
        let before = host_totals(collector).events;
        with.push(storm(n, server.addr)?);
        // The last batch leaves within the batching delay.
        std::thread::sleep(Duration::from_millis(700));
        events += host_totals(collector).events - before;
        sensor.stop()?;
        without.push(storm(n, server.addr)?);
        println!(
            "connect round {round}: without {:.3}s, with {:.3}s",
            without[round].as_secs_f64(),
            with[round].as_secs_f64()
        );
    }
    // The cost breakdown, outside the timed rounds (stats slow BPF a bit).
    let sensor = BenchSensor::start(url)?;
    let stats = BpfStats::enable()?;
    let (bpf_before, cpu_before) = (sensor.bpf_run_time()?, sensor.cpu_ticks()?);
    storm(n, server.addr)?;
    std::thread::sleep(Duration::from_millis(700));
    let bpf_ns = sensor.bpf_run_time()?.0 - bpf_before.0;
    let cpu_ticks = sensor.cpu_ticks()? - cpu_before;
    drop(stats);
    sensor.stop()?;
    Ok(ConnectStorm {
        bpf_ns_per_connection: bpf_ns as f64 / n as f64,
        sensor_cpu_us_per_connection: cpu_ticks as f64 * 1e6 / ticks_per_sec() / n as f64,
        connections: n,
        without: median(&without),
        with: median(&with),
        events_per_connection: events as f64 / (n * rounds).max(1) as f64,
    })
}

/// `n` connections from four threads; the wall time.
fn storm(n: usize, addr: SocketAddr) -> Result<Duration> {
    threaded(n, 4, None, |_| {
        let mut buf = [0u8; 256];
        let mut c = TcpStream::connect(addr)?;
        c.write_all(&[7; 64])?;
        c.shutdown(Shutdown::Write)?;
        while c.read(&mut buf)? > 0 {}
        Ok(())
    })
}

/// Four accept threads on one loopback listener: read to EOF, answer 64
/// bytes, close.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let listener = listener.try_clone()?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok((mut c, _)) = listener.accept() {
                    if stop.load(Relaxed) {
                        return;
                    }
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    let _ = c.write_all(&[9; 64]);
                }
            }));
        }
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // One connection per thread wakes it from accept().
        for _ in &self.threads {
            let _ = TcpStream::connect(self.addr);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
