//! `rxsentry.control.v1` on the collector: the sensors' control streams
//! (who is connected, their reported isolation state) and the analyst API
//! that sends isolate/release down them, for authorized operators only.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use proto::control::v1::{
    ChangeIsolation, Command, CommandResult, HostInfo, IsolationRequest, IsolationResponse,
    IsolationStatus, ListHostsRequest, ListHostsResponse, SensorMessage, analyst_api_server,
    command, sensor_control_server, sensor_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{Operator, authorize};
use crate::hosts::HostStats;
use crate::trail::{Trail, clip};
use audit::{ArgValue, Entry, Outcome};

/// How long an analyst waits for the sensor to apply a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted reason, in bytes.
const MAX_REASON: usize = 1024;

/// One sensor's open control stream.
#[derive(Debug)]
struct Connection {
    /// Tells a replaced stream's cleanup from the current one's.
    id: u64,
    tx: mpsc::Sender<Result<Command, Status>>,
}

#[derive(Debug, Default)]
struct HostControl {
    connection: Option<Connection>,
    isolation: Option<IsolationStatus>,
    allowlist_backend: String,
    kernel_release: String,
    last_seen: Option<SystemTime>,
}

/// Control state shared by both services.
#[derive(Debug, Default)]
pub struct ControlHub {
    hosts: Mutex<HashMap<String, HostControl>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<CommandResult>>>,
    next_id: AtomicU64,
}

impl ControlHub {
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostControl>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<CommandResult>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `command` to `host_id`'s sensor and waits for its result.
    async fn command(
        &self,
        host_id: &str,
        action: command::Action,
    ) -> Result<CommandResult, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let tx = self
            .hosts()
            .get(host_id)
            .and_then(|h| h.connection.as_ref().map(|c| c.tx.clone()))
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "host {host_id:?} has no open control stream (sensor down, unknown host, or no route to the collector); nothing was sent"
                ))
            })?;
        let (done, result) = oneshot::channel();
        self.pending().insert(id, done);
        let sent = tx
            .send(Ok(Command {
                command_id: id,
                action: Some(action),
            }))
            .await;
        if sent.is_err() {
            self.pending().remove(&id);
            return Err(Status::unavailable(format!(
                "the control stream of {host_id:?} closed; nothing was sent"
            )));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, result).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "the control stream of {host_id:?} closed before the sensor answered; check `rxsentry hosts`"
            ))),
            Err(_) => {
                self.pending().remove(&id);
                Err(Status::deadline_exceeded(format!(
                    "{host_id:?} did not answer within {COMMAND_TIMEOUT:?}; check `rxsentry hosts`"
                )))
            }
        }
    }

    /// Everything known about every host: telemetry counters plus control
    /// state, sorted by host id.
    pub fn host_infos(
        &self,
        stats: &std::collections::BTreeMap<String, HostStats>,
    ) -> Vec<HostInfo> {
        let hosts = self.hosts();
        let mut ids: Vec<&String> = stats.keys().chain(hosts.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let s = stats.get(id).cloned().unwrap_or_default();
                let c = hosts.get(id);
                let last_seen = [s.last_seen, c.and_then(|c| c.last_seen)]
                    .into_iter()
                    .flatten()
                    .max();
                HostInfo {
                    host_id: id.clone(),
                    hostname: s.hostname,
                    sensor_version: s.sensor_version,
                    kernel_release: c.map(|c| c.kernel_release.clone()).unwrap_or_default(),
                    sensor_instance_id: s.sensor_instance_id,
                    last_seen_unix_ms: last_seen.map_or(0, unix_ms),
                    control_connected: c.is_some_and(|c| c.connection.is_some()),
                    isolation: c.and_then(|c| c.isolation.clone()),
                    drops: Some(s.drops),
                    allowlist_backend: c.map(|c| c.allowlist_backend.clone()).unwrap_or_default(),
                    batches: s.batches,
                    events: s.events,
                    missing_batches: s.missing_batches,
                }
            })
            .collect()
    }

    fn seen(&self, host_id: &str, update: impl FnOnce(&mut HostControl)) {
        let mut hosts = self.hosts();
        let h = hosts.entry(host_id.to_owned()).or_default();
        h.last_seen = Some(SystemTime::now());
        update(h);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sensors' side: `SensorControl.Open`.
pub struct SensorControlService {
    pub hub: Arc<ControlHub>,
    pub max_hosts: usize,
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<Command, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl sensor_control_server::SensorControl for SensorControlService {
    type OpenStream = CommandStream;

    async fn open(
        &self,
        request: Request<Streaming<SensorMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("control stream closed before its hello"))?;
        let Some(sensor_message::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of a control stream must be a hello",
            ));
        };
        let host = hello
            .host
            .filter(|h| !h.host_id.is_empty())
            .ok_or_else(|| Status::invalid_argument("hello without host.host_id"))?;
        let host_id = host.host_id.clone();
        let hub = self.hub.clone();
        {
            let hosts = hub.hosts();
            if hosts.len() >= self.max_hosts && !hosts.contains_key(&host_id) {
                return Err(Status::resource_exhausted(format!(
                    "the collector already tracks its limit of {} hosts",
                    self.max_hosts
                )));
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let conn_id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        hub.seen(&host_id, |h| {
            h.connection = Some(Connection { id: conn_id, tx });
            h.isolation = hello.isolation.clone();
            h.allowlist_backend = hello.allowlist_backend.clone();
            h.kernel_release = host.kernel_release.clone();
        });
        info!(
            host_id,
            ?peer,
            isolated = hello.isolation.as_ref().is_some_and(|i| i.isolated),
            "sensor control stream open"
        );
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(sensor_message::Kind::Result(result)) => {
                        let isolation = result.isolation.clone();
                        hub.seen(&host_id, |h| {
                            if isolation.is_some() {
                                h.isolation = isolation;
                            }
                        });
                        if let Some(done) = hub.pending().remove(&result.command_id) {
                            let _ = done.send(result);
                        }
                    }
                    Some(sensor_message::Kind::Status(status)) => {
                        info!(host_id, isolated = status.isolated, by = %status.requester,
                            "sensor reported its isolation state");
                        hub.seen(&host_id, |h| h.isolation = Some(status));
                    }
                    Some(sensor_message::Kind::Hello(_)) | None => {
                        warn!(host_id, "unexpected control message ignored");
                    }
                }
            }
            let mut hosts = hub.hosts();
            if let Some(h) = hosts.get_mut(&host_id)
                && h.connection.as_ref().is_some_and(|c| c.id == conn_id)
            {
                h.connection = None;
            }
            info!(host_id, "sensor control stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The analysts' side: isolate, release, hosts; every call authorized,
/// every change and every refusal recorded in the audit log.
pub struct AnalystService {
    pub hub: Arc<ControlHub>,
    pub operators: Arc<Vec<Operator>>,
    pub host_stats: Box<dyn Fn() -> std::collections::BTreeMap<String, HostStats> + Send + Sync>,
    pub trail: Trail,
}

/// Checks an isolate/release request's fields; the reason, trimmed.
fn valid_reason(req: &IsolationRequest) -> Result<&str, Status> {
    if req.host_id.trim().is_empty() {
        return Err(Status::invalid_argument("host_id is empty"));
    }
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(Status::invalid_argument(
            "a reason is required (it goes into the audit record)",
        ));
    }
    if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "reason must be at most {MAX_REASON} bytes without control characters"
        )));
    }
    Ok(reason)
}

impl AnalystService {
    async fn change(
        &self,
        request: Request<IsolationRequest>,
        isolate: bool,
    ) -> Result<Response<IsolationResponse>, Status> {
        let what = if isolate { "isolate" } else { "release" };
        let peer = request.remote_addr();
        let authorized = authorize(&self.operators, request.metadata());
        let req = request.into_inner();
        let mut entry = Entry::new(what, Outcome::Requested);
        entry.peer = peer.map(|p| p.to_string());
        entry.host = Some(clip(&req.host_id));
        entry
            .args
            .insert("reason".into(), ArgValue::One(clip(&req.reason)));
        let operator = match authorized {
            Ok(operator) => operator,
            Err(e) => {
                warn!(?peer, code = ?e.code(), "refused {what} request: {}", e.message());
                return Err(self.trail.refused(entry, e).await);
            }
        };
        entry.operator = Some(operator.clone());
        let reason = match valid_reason(&req) {
            Ok(reason) => reason.to_owned(),
            Err(e) => return Err(self.trail.refused(entry, e).await),
        };
        entry
            .args
            .insert("reason".into(), ArgValue::One(reason.clone()));
        let change = ChangeIsolation {
            requester: operator.clone(),
            reason: reason.clone(),
        };
        let action = if isolate {
            command::Action::Isolate(change)
        } else {
            command::Action::Release(change)
        };
        info!(host_id = req.host_id, operator, reason, "{what} requested");
        // Nothing reaches the sensor unless its record is on disk.
        self.trail.record(entry.clone()).await.map_err(|e| {
            Status::unavailable(format!(
                "the audit log cannot record the request, so nothing was sent: {e}"
            ))
        })?;
        let answer = match self.hub.command(&req.host_id, action).await {
            Ok(result) if result.ok => Ok(result.isolation),
            Ok(result) => Err(Status::failed_precondition(format!(
                "the sensor on {:?} refused to {what}: {}",
                req.host_id, result.error
            ))),
            Err(status) => Err(status),
        };
        (entry.outcome, entry.detail) = match &answer {
            Ok(_) => (Outcome::Ok, String::new()),
            Err(status) => (Outcome::Failed, clip(status.message())),
        };
        self.trail.record(entry).await.map_err(|e| {
            Status::internal(format!(
                "{what} of {:?} ended ({}), but its audit record could not be written: {e}",
                req.host_id,
                answer.as_ref().map_or("failed", |_| "done")
            ))
        })?;
        Ok(Response::new(IsolationResponse {
            host_id: req.host_id,
            isolation: answer?,
            operator,
        }))
    }
}

#[tonic::async_trait]
impl analyst_api_server::AnalystApi for AnalystService {
    async fn isolate(
        &self,
        request: Request<IsolationRequest>,
    ) -> Result<Response<IsolationResponse>, Status> {
        self.change(request, true).await
    }

    async fn release(
        &self,
        request: Request<IsolationRequest>,
    ) -> Result<Response<IsolationResponse>, Status> {
        self.change(request, false).await
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let peer = request.remote_addr();
        if let Err(e) = authorize(&self.operators, request.metadata()) {
            let mut entry = Entry::new("list_hosts", Outcome::Refused);
            entry.peer = peer.map(|p| p.to_string());
            return Err(self.trail.refused(entry, e).await);
        }
        let stats = (self.host_stats)();
        Ok(Response::new(ListHostsResponse {
            hosts: self.hub.host_infos(&stats),
        }))
    }
}
