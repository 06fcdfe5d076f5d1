//! Starts a real collector on 127.0.0.1:0 inside the test process, and
//! subscribes to it with the integration tests' harness.
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use collector::{Collector, CollectorConfig};
use proto::control::v1::{
    CommandResult, IsolationRequest, IsolationStatus, ListHostsRequest, SensorHello, SensorMessage,
    analyst_api_client::AnalystApiClient, command, sensor_control_client::SensorControlClient,
    sensor_message,
};
use proto::telemetry::v1::{HostEvent, HostRecord, SubscribeRequest, subscribe_response};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// `message` with the viewer token of the test collectors.
pub fn as_viewer<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {VIEWER_TOKEN}").parse().unwrap(),
    );
    request
}

/// The in-process collectors' own viewer, added to every config so that
/// [`TestCollector::subscribe`] is allowed.
pub const VIEWER_TOKEN: &str = "test-viewer-token";

pub struct TestCollector {
    pub url: String,
    pub collector: Collector,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), collector::CollectorError>>>,
}

impl TestCollector {
    pub async fn start(mut config: CollectorConfig) -> Self {
        config.operators.push(collector::auth::Operator::with_token(
            "test-viewer",
            collector::auth::Role::Viewer,
            VIEWER_TOKEN,
        ));
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

    /// Plaintext on loopback, with the viewer token.
    pub fn access(&self) -> tests::CollectorAccess {
        tests::CollectorAccess::plaintext(self.url.clone(), Some(VIEWER_TOKEN.to_owned()))
    }

    /// A subscriber that reads only when the test asks (so it can fall
    /// behind).
    pub async fn subscribe(&self, req: SubscribeRequest) -> Subscription {
        Subscription(
            tests::Subscription::open_on_demand(&self.access(), req)
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
        Kind::Alert(x) => x.process.as_ref(),
        Kind::Isolation(_) | Kind::Tamper(_) | Kind::Response(_) => None,
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

/// A stand-in sensor: says hello as `host_id`, answers each command with
/// `ok` (isolated = the command was isolate), and reports how many
/// commands it saw.
pub async fn sensor(
    url: &str,
    host_id: &str,
    ok: bool,
) -> mpsc::UnboundedReceiver<command::Action> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(SensorMessage {
        kind: Some(sensor_message::Kind::Hello(SensorHello {
            host: Some(collector::testkit::host(host_id, "i1")),
            isolation: Some(IsolationStatus::default()),
            allowlist_backend: "tracepoint+sigkill".into(),
        })),
    })
    .await
    .unwrap();
    let mut commands = SensorControlClient::connect(url.to_owned())
        .await
        .unwrap()
        .open(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(cmd)) = commands.message().await {
            let action = cmd.action.clone().unwrap();
            let isolated = matches!(action, command::Action::Isolate(_));
            let requester = match &action {
                command::Action::Isolate(c) | command::Action::Release(c) => c.requester.clone(),
            };
            let _ = seen_tx.send(action);
            let result = CommandResult {
                command_id: cmd.command_id,
                ok,
                error: if ok {
                    String::new()
                } else {
                    "isolation disabled".into()
                },
                isolation: ok.then(|| IsolationStatus {
                    isolated,
                    requester,
                    ..Default::default()
                }),
            };
            let reply = SensorMessage {
                kind: Some(sensor_message::Kind::Result(result)),
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
    });
    seen
}

pub fn request<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

pub fn isolate(host: &str, reason: &str) -> IsolationRequest {
    IsolationRequest {
        host_id: host.into(),
        reason: reason.into(),
    }
}

pub async fn hosts(api: &mut Api, token: &str) -> Vec<proto::control::v1::HostInfo> {
    api.list_hosts(request(ListHostsRequest {}, Some(token)))
        .await
        .unwrap()
        .into_inner()
        .hosts
}

/// Polls `ListHosts` until `host`'s control stream shows as connected.
pub async fn wait_connected(api: &mut Api, host: &str, token: &str) {
    for _ in 0..100 {
        let hosts = hosts(api, token).await;
        if hosts
            .iter()
            .any(|h| h.host_id == host && h.control_connected)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{host} never showed as connected");
}

pub type Api = AnalystApiClient<tonic::transport::Channel>;

/// Starts the `rxsentry-collector` binary on 127.0.0.1:0 with its state
/// under `state` and `args`; returns it and its address (`host:port`).
pub fn spawn_binary(state: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    // The viewer of [`as_viewer`], read from STATE_DIR/operators.toml.
    let operators = state.join("operators.toml");
    if !operators.exists() {
        std::fs::create_dir_all(state).unwrap();
        let op = collector::auth::Operator::with_token(
            "test-viewer",
            collector::auth::Role::Viewer,
            VIEWER_TOKEN,
        );
        std::fs::write(&operators, op.to_toml()).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "127.0.0.1:0", "--insecure-plaintext"])
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr =
        listening_line(&mut child).unwrap_or_else(|line| panic!("unexpected first line {line:?}"));
    (child, addr)
}

/// The `rxsentry-collector` binary's first stdout line: its address
/// (`host:port`), or the whole line when it is not the listening line.
pub fn listening_line(child: &mut std::process::Child) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end()
        .strip_prefix("rxsentry-collector listening on ")
        .map(str::to_owned)
        .ok_or(line)
}

/// SIGTERM to the collector process, then its exit status (within 10 s).
pub async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "collector ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
