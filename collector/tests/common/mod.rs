//! Starts a real collector on 127.0.0.1:0 inside the test process, and
//! subscribes to it with the integration tests' harness.
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use collector::{Collector, CollectorConfig};
use proto::telemetry::v1::{HostEvent, HostRecord, SubscribeRequest, subscribe_response};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestCollector {
    pub url: String,
    pub collector: Collector,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), collector::CollectorError>>>,
}

impl TestCollector {
    pub async fn start(config: CollectorConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::new(config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(collector.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            collector,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn start_default() -> Self {
        Self::start(CollectorConfig {
            stats_log_interval: None,
            ..CollectorConfig::default()
        })
        .await
    }

    /// Asks for a graceful stop and returns what `serve` returned.
    pub async fn shutdown(mut self) -> Result<(), collector::CollectorError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("serve did not return after shutdown")
            .expect("serve task panicked")
    }

    /// A subscriber that reads only when the test asks (so it can fall
    /// behind).
    pub async fn subscribe(&self, req: SubscribeRequest) -> Subscription {
        Subscription(
            tests::Subscription::open_on_demand(&self.url, req)
                .await
                .unwrap(),
        )
    }
}

/// What a subscriber received, one item at a time.
#[allow(clippy::large_enum_variant)] // test-only, short-lived
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Event(HostEvent),
    Record(HostRecord),
    Lagged(u64),
}

pub struct Subscription(pub tests::Subscription);

impl Subscription {
    pub async fn next(&mut self) -> Got {
        let msg = tokio::time::timeout(WAIT, self.0.next())
            .await
            .expect("nothing arrived in time")
            .expect("subscribe stream failed")
            .expect("subscribe stream ended");
        match msg.item.expect("empty SubscribeResponse") {
            subscribe_response::Item::Event(e) => Got::Event(e),
            subscribe_response::Item::Record(r) => Got::Record(r),
            subscribe_response::Item::SubscriberLagged(n) => Got::Lagged(n),
        }
    }

    /// Everything up to and including the first event of process `pid`.
    pub async fn until_pid(&mut self, pid: u32) -> Vec<Got> {
        let mut out = Vec::new();
        loop {
            let got = self.next().await;
            let done = matches!(&got, Got::Event(e) if pid_of(e) == Some(pid));
            out.push(got);
            if done {
                return out;
            }
        }
    }
}

/// The pid of an event's process, whatever its kind.
pub fn pid_of(e: &HostEvent) -> Option<u32> {
    use proto::telemetry::v1::event::Kind;
    let process = match e.event.as_ref()?.kind.as_ref()? {
        Kind::Exec(x) => x.process.as_ref(),
        Kind::Fork(x) => x.process.as_ref(),
        Kind::Exit(x) => x.process.as_ref(),
        Kind::Policy(x) => x.process.as_ref(),
        Kind::File(x) => x.process.as_ref(),
        Kind::Network(x) => x.process.as_ref(),
        Kind::Isolation(_) => None,
    };
    process.map(|p| p.pid)
}

/// Pids of the events in `items`, in order.
pub fn pids(items: &[Got]) -> Vec<u32> {
    items
        .iter()
        .filter_map(|g| match g {
            Got::Event(e) => pid_of(e),
            _ => None,
        })
        .collect()
}
