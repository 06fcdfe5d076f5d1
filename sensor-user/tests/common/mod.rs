//! A throwaway in-process collector for transport tests, on loopback.
//!
//! Each server runs on its own thread and tokio runtime, so `kill` can drop
//! every connection at once, the way a crashed collector would.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use prost::Message;
use proto::telemetry::v1::{
    BatchAck, Event, EventBatch, SensorBatch,
    telemetry_ingest_server::{TelemetryIngest, TelemetryIngestServer},
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

pub use tests::ports::HeldPort;

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<SensorBatch>>>,
    withhold_acks: Arc<AtomicBool>,
    /// Sequences refused as malformed, as the real collector does: an
    /// error status, then the stream ends.
    refuse: Arc<Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl TelemetryIngest for Collector {
    type PublishStream = Pin<Box<dyn Stream<Item = Result<BatchAck, Status>> + Send>>;

    async fn publish(
        &self,
        request: Request<Streaming<SensorBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let sequence = batch.sequence;
                if me.refuse.lock().expect("lock").contains(&sequence) {
                    let refusal = Status::invalid_argument(format!("batch {sequence} refused"));
                    let _ = tx.send(Err(refusal)).await;
                    break;
                }
                me.received.lock().expect("lock").push(batch);
                if !me.withhold_acks.load(SeqCst)
                    && tx.send(Ok(BatchAck { sequence })).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running test collector.
pub struct TestServer {
    pub addr: SocketAddr,
    collector: Collector,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts on a port the OS picks.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Self::serve(listener)
    }

    /// Starts on `held` (see `tests::ports::HeldPort`): a port nothing else
    /// took while this server was not up.
    pub fn start_on(held: &HeldPort) -> Self {
        Self::serve(held.listen().expect("listen on the held port"))
    }

    fn serve(listener: std::net::TcpListener) -> Self {
        let collector = Collector::default();
        let service = TelemetryIngestServer::new(collector.clone());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming);
                tokio::select! {
                    r = serve => r.expect("serve"),
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task: a crash.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
        Self {
            addr,
            collector,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops acking (batches are still recorded).
    pub fn withhold_acks(&self, withhold: bool) {
        self.collector.withhold_acks.store(withhold, SeqCst);
    }

    /// Refuse this sequence whenever it arrives.
    pub fn refuse(&self, sequence: u64) {
        self.collector.refuse.lock().expect("lock").push(sequence);
    }

    pub fn received(&self) -> Vec<SensorBatch> {
        self.collector.received.lock().expect("lock").clone()
    }

    pub fn sequences(&self) -> Vec<u64> {
        self.received().iter().map(|b| b.sequence).collect()
    }

    /// Drops the listener and every connection at once.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port with nothing listening, held for a server that starts
/// (or comes back) later: no parallel test can take it meanwhile.
pub fn held_port() -> HeldPort {
    HeldPort::new().expect("a held loopback port")
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The events inside a batch, checking its size fields.
pub fn decode_events(batch: &SensorBatch) -> Vec<Event> {
    let raw = zstd::stream::decode_all(batch.payload.as_slice()).expect("zstd payload");
    assert_eq!(raw.len(), batch.uncompressed_size as usize);
    let events = EventBatch::decode(raw.as_slice())
        .expect("EventBatch")
        .events;
    assert_eq!(events.len(), batch.event_count as usize);
    events
}
