//! The sensor's end of `rxsentry.control.v1`: an outbound stream to the
//! collector (kiosks sit behind NAT, so the sensor dials out), a hello with
//! the current isolation state, then commands down and results up. The
//! stream is re-opened with backoff whenever it breaks.

use std::time::Duration;

use proto::{
    control::v1::{
        ChangeIsolation, CommandResult, IsolationStatus, SensorHello, SensorMessage, command,
        sensor_control_client::SensorControlClient, sensor_message,
    },
    telemetry::v1::HostIdentity,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::isolation::{Action, Change, service::Request};

const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the sensor says about itself in every hello.
#[derive(Clone, Debug)]
pub struct Hello {
    pub host: HostIdentity,
    pub allowlist_backend: String,
}

/// Keeps the control stream open until the task is aborted.
pub async fn run(
    link: crate::transport::CollectorLink,
    hello: Hello,
    requests: mpsc::Sender<Request>,
    mut status: watch::Receiver<IsolationStatus>,
) {
    let mut backoff = BACKOFF_INITIAL;
    loop {
        match session(&link, &hello, &requests, &mut status).await {
            Ok(()) => backoff = BACKOFF_INITIAL,
            Err(e) => tracing::debug!(error = %e, "control stream down"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    link: &crate::transport::CollectorLink,
    hello: &Hello,
    requests: &mpsc::Sender<Request>,
    status: &mut watch::Receiver<IsolationStatus>,
) -> Result<(), tonic::Status> {
    let channel = link
        .endpoint()
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(crate::transport::link::error_chain(&e)))?;
    let (tx, rx) = mpsc::channel(16);
    let send = |kind| SensorMessage { kind: Some(kind) };
    let current = status.borrow_and_update().clone();
    let _ = tx
        .send(send(sensor_message::Kind::Hello(SensorHello {
            host: Some(hello.host.clone()),
            isolation: Some(current),
            allowlist_backend: hello.allowlist_backend.clone(),
        })))
        .await;
    let mut commands = SensorControlClient::new(channel)
        .open(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!("control stream to the collector open");
    loop {
        tokio::select! {
            command = commands.message() => {
                let Some(command) = command? else { return Ok(()) };
                let result = execute(command.command_id, command.action, requests).await;
                if tx.send(send(sensor_message::Kind::Result(result))).await.is_err() {
                    return Ok(());
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let s = status.borrow_and_update().clone();
                if tx.send(send(sensor_message::Kind::Status(s))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies one command through the isolation task and says how it went.
async fn execute(
    command_id: u64,
    action: Option<command::Action>,
    requests: &mpsc::Sender<Request>,
) -> CommandResult {
    let failed = |error: String| CommandResult {
        command_id,
        ok: false,
        error,
        isolation: None,
    };
    let (action, ChangeIsolation { requester, reason }) = match action {
        Some(command::Action::Isolate(c)) => (Action::Isolate, c),
        Some(command::Action::Release(c)) => (Action::Release, c),
        None => return failed("command without an action (newer collector?)".into()),
    };
    let (reply, answer) = oneshot::channel();
    let request = Request {
        change: Change {
            action,
            requester,
            reason,
        },
        reply: Some(reply),
    };
    if requests.send(request).await.is_err() {
        return failed("the sensor is shutting down".into());
    }
    match answer.await {
        Ok(Ok(isolation)) => CommandResult {
            command_id,
            ok: true,
            error: String::new(),
            isolation: Some(isolation),
        },
        Ok(Err(e)) => failed(e),
        Err(_) => failed("the isolation task stopped".into()),
    }
}
