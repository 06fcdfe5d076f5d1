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
    AddOperatorRequest, AddOperatorResponse, ChangeIsolation, Command, CommandResult, HostInfo,
    IsolationRequest, IsolationResponse, IsolationStatus, ListHostsRequest, ListHostsResponse,
    ListOperatorsRequest, ListOperatorsResponse, OperatorInfo, ReloadTrustRequest,
    ReloadTrustResponse, RemoveOperatorRequest, RemoveOperatorResponse, SensorMessage,
    analyst_api_server, command, sensor_control_server, sensor_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::Role;
use crate::hosts::HostStats;
use crate::trail::{Trail, clip};
use crate::trust::{OperatorChangeError, Trust};
use audit::{ArgValue, Entry, Outcome};

/// How long an analyst waits for the sensor to apply a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted reason, in bytes.
const MAX_REASON: usize = 1024;
/// A control stream must say hello within this long, or it is closed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// One sensor's open control stream.
#[derive(Debug)]
struct Connection {
    /// Tells a replaced stream's cleanup from the current one's.
    id: u64,
    tx: mpsc::Sender<Result<Command, Status>>,
    /// SHA-256 of the sensor's certificate (empty in plaintext mode): only
    /// the same certificate may take the host's stream over.
    fingerprint: String,
}

/// A command on its way: the stream it went down, and who waits for it.
#[derive(Debug)]
struct Pending {
    connection: u64,
    host_id: String,
    done: oneshot::Sender<CommandResult>,
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
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Results that named a command not sent on their stream, or unknown.
    stray_results: AtomicU64,
}

impl ControlHub {
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostControl>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Results refused because they did not answer a command sent on
    /// their own stream.
    pub fn stray_results(&self) -> u64 {
        self.stray_results.load(Ordering::Relaxed)
    }

    /// Hands a result to whoever waits for it, if it was sent on
    /// `connection`; anything else is counted and dropped.
    fn answer(&self, connection: u64, host_id: &str, result: CommandResult) {
        let mut pending = self.pending();
        match pending.get(&result.command_id) {
            Some(p) if p.connection == connection && p.host_id == host_id => {
                if let Some(p) = pending.remove(&result.command_id) {
                    let _ = p.done.send(result);
                }
            }
            _ => {
                drop(pending);
                self.stray_results.fetch_add(1, Ordering::Relaxed);
                warn!(
                    host_id,
                    command_id = result.command_id,
                    "result for a command not sent on this stream dropped"
                );
            }
        }
    }

    /// Sends `command` to `host_id`'s sensor and waits for its result.
    async fn command(
        &self,
        host_id: &str,
        action: command::Action,
    ) -> Result<CommandResult, Status> {
        // Unguessable: a result must name a command it saw.
        let id = rand::random::<u64>() | 1;
        let (connection, tx) = self
            .hosts()
            .get(host_id)
            .and_then(|h| h.connection.as_ref().map(|c| (c.id, c.tx.clone())))
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "host {host_id:?} has no open control stream (sensor down, unknown host, or no route to the collector); nothing was sent"
                ))
            })?;
        let (done, result) = oneshot::channel();
        self.pending().insert(
            id,
            Pending {
                connection,
                host_id: host_id.to_owned(),
                done,
            },
        );
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
        silent: &std::collections::BTreeSet<String>,
    ) -> Vec<HostInfo> {
        let hosts = self.hosts();
        // A silent host may be known only to the store (it went quiet
        // before this collector started).
        let mut ids: Vec<&String> = stats.keys().chain(hosts.keys()).chain(silent).collect();
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
                    silent: silent.contains(id),
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
    pub trust: Arc<Trust>,
    pub trail: Trail,
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
        let identity = self.trust.sensor(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no hello within {HELLO_TIMEOUT:?}")))??
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
        self.trust
            .same_host(identity.as_ref(), &host_id, "control hello")?;
        let fingerprint = identity
            .as_ref()
            .map(|i| i.fingerprint.clone())
            .unwrap_or_default();
        let hub = self.hub.clone();
        let takeover = {
            let hosts = hub.hosts();
            if hosts.len() >= self.max_hosts && !hosts.contains_key(&host_id) {
                return Err(Status::resource_exhausted(format!(
                    "the collector already tracks its limit of {} hosts",
                    self.max_hosts
                )));
            }
            match hosts.get(&host_id).and_then(|h| h.connection.as_ref()) {
                Some(open) if !open.tx.is_closed() && open.fingerprint != fingerprint => {
                    Some(false)
                }
                Some(open) if !open.tx.is_closed() => Some(true),
                _ => None,
            }
        };
        if let Some(allowed) = takeover {
            let mut entry = Entry::new(
                "control_takeover",
                if allowed {
                    Outcome::Ok
                } else {
                    Outcome::Refused
                },
            );
            entry.peer = peer.map(|p| p.to_string());
            entry.host = Some(clip(&host_id));
            if !allowed {
                let status = Status::already_exists(format!(
                    "host {host_id:?} already has a control stream from another certificate; \
                     it is kept (a takeover needs the same certificate)"
                ));
                return Err(self.trail.refused(entry, status).await);
            }
            entry.detail = "same certificate: the newer stream replaces the older".into();
            // Logged by the trail when it fails; the takeover goes ahead.
            let _ = self.trail.record(entry).await;
        }
        let (tx, rx) = mpsc::channel(16);
        let conn_id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let trust = self.trust.clone();
        hub.seen(&host_id, |h| {
            h.connection = Some(Connection {
                id: conn_id,
                tx,
                fingerprint,
            });
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
                // A revoked or expired certificate loses its stream.
                if let Some(identity) = &identity
                    && trust.still_valid(identity).is_err()
                {
                    break;
                }
                match message.kind {
                    Some(sensor_message::Kind::Result(result)) => {
                        let isolation = result.isolation.clone();
                        hub.seen(&host_id, |h| {
                            if isolation.is_some() {
                                h.isolation = isolation;
                            }
                        });
                        hub.answer(conn_id, &host_id, result);
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
            // Commands sent down this stream will get no answer on it.
            hub.pending().retain(|_, p| p.connection != conn_id);
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
    pub trust: Arc<Trust>,
    pub host_stats: Box<dyn Fn() -> std::collections::BTreeMap<String, HostStats> + Send + Sync>,
    /// Hosts the store holds as silent (none without a store).
    pub silent_hosts: Box<dyn Fn() -> std::collections::BTreeSet<String> + Send + Sync>,
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
        let authorized = self
            .trust
            .operator(request.metadata(), Role::Responder, what);
        let req = request.into_inner();
        let mut entry = Entry::new(what, Outcome::Requested);
        entry.peer = peer.map(|p| p.to_string());
        entry.host = Some(clip(&req.host_id));
        entry
            .args
            .insert("reason".into(), ArgValue::One(clip(&req.reason)));
        let operator = match authorized {
            Ok(operator) => operator.name,
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
        if let Err(e) = self
            .trust
            .operator(request.metadata(), Role::Viewer, "list_hosts")
        {
            let mut entry = Entry::new("list_hosts", Outcome::Refused);
            entry.peer = peer.map(|p| p.to_string());
            return Err(self.trail.refused(entry, e).await);
        }
        let stats = (self.host_stats)();
        let silent = (self.silent_hosts)();
        Ok(Response::new(ListHostsResponse {
            hosts: self.hub.host_infos(&stats, &silent),
        }))
    }

    async fn reload_trust(
        &self,
        request: Request<ReloadTrustRequest>,
    ) -> Result<Response<ReloadTrustResponse>, Status> {
        let mut entry = Entry::new("reload_trust", Outcome::Requested);
        entry.peer = request.remote_addr().map(|p| p.to_string());
        let operator = match self
            .trust
            .operator(request.metadata(), Role::Admin, "reload_trust")
        {
            Ok(op) => op.name,
            Err(e) => return Err(self.trail.refused(entry, e).await),
        };
        entry.operator = Some(operator.clone());
        match self.trust.reload() {
            Ok(report) => {
                entry.outcome = Outcome::Ok;
                entry.detail = format!(
                    "{} operators, {} revoked serials",
                    report.operators, report.revoked
                );
                self.trail.record(entry).await.map_err(|e| {
                    Status::internal(format!(
                        "trust reloaded, but its audit record could not be written: {e}"
                    ))
                })?;
                info!(
                    operator,
                    operators = report.operators,
                    revoked = report.revoked,
                    "trust reloaded on request"
                );
                Ok(Response::new(ReloadTrustResponse {
                    operators: u32::try_from(report.operators).unwrap_or(u32::MAX),
                    revoked: u32::try_from(report.revoked).unwrap_or(u32::MAX),
                    operator,
                }))
            }
            Err(why) => {
                let status = Status::failed_precondition(format!(
                    "reload refused, the last good lists stay in force: {why}"
                ));
                entry.outcome = Outcome::Failed;
                entry.detail = clip(&why);
                // Logged by the trail when it fails; the caller gets the refusal.
                let _ = self.trail.record(entry).await;
                Err(status)
            }
        }
    }

    async fn list_operators(
        &self,
        request: Request<ListOperatorsRequest>,
    ) -> Result<Response<ListOperatorsResponse>, Status> {
        let mut entry = Entry::new("list_operators", Outcome::Ok);
        entry.peer = request.remote_addr().map(|p| p.to_string());
        match self
            .trust
            .operator(request.metadata(), Role::Admin, "list_operators")
        {
            Ok(op) => entry.operator = Some(op.name),
            Err(e) => return Err(self.trail.refused(entry, e).await),
        }
        let operators = self
            .trust
            .operator_list()
            .into_iter()
            .map(|(name, role)| operator_info(&name, role))
            .collect();
        Ok(Response::new(ListOperatorsResponse { operators }))
    }

    async fn add_operator(
        &self,
        request: Request<AddOperatorRequest>,
    ) -> Result<Response<AddOperatorResponse>, Status> {
        let (operator, req, mut entry) = self.operator_change("add_operator", request).await?;
        let role: Role = match req.role.parse() {
            Ok(role) => role,
            Err(why) => {
                let status = Status::invalid_argument(why);
                return Err(self.trail.refused(entry, status).await);
            }
        };
        entry
            .args
            .insert("role".into(), ArgValue::One(role.to_string()));
        let token = self
            .operator_changed(entry, self.trust.add_operator(&req.name, role))
            .await?;
        info!(operator, added = req.name, %role, "operator added");
        Ok(Response::new(AddOperatorResponse {
            added: Some(operator_info(&req.name, role)),
            token,
            operator,
        }))
    }

    async fn remove_operator(
        &self,
        request: Request<RemoveOperatorRequest>,
    ) -> Result<Response<RemoveOperatorResponse>, Status> {
        let (operator, req, entry) = self.operator_change("remove_operator", request).await?;
        let role = self
            .operator_changed(entry, self.trust.remove_operator(&req.name))
            .await?;
        info!(operator, removed = req.name, %role, "operator removed");
        Ok(Response::new(RemoveOperatorResponse {
            removed: Some(operator_info(&req.name, role)),
            operator,
        }))
    }
}

/// What an operator-management request names.
trait NamesOperator {
    fn name(&self) -> &str;
}

impl NamesOperator for AddOperatorRequest {
    fn name(&self) -> &str {
        &self.name
    }
}

impl NamesOperator for RemoveOperatorRequest {
    fn name(&self) -> &str {
        &self.name
    }
}

impl AnalystService {
    /// Admin check for `action` on the operator a request names: the
    /// caller, the request and its audit entry (refusals are recorded).
    async fn operator_change<T: NamesOperator>(
        &self,
        action: &str,
        request: Request<T>,
    ) -> Result<(String, T, Entry), Status> {
        let mut entry = Entry::new(action, Outcome::Requested);
        entry.peer = request.remote_addr().map(|p| p.to_string());
        let operator = match self.trust.operator(request.metadata(), Role::Admin, action) {
            Ok(op) => op.name,
            Err(e) => return Err(self.trail.refused(entry, e).await),
        };
        entry.operator = Some(operator.clone());
        let req = request.into_inner();
        entry
            .args
            .insert("name".into(), ArgValue::One(clip(req.name())));
        Ok((operator, req, entry))
    }

    /// Records how an operator change ended; a change whose audit record
    /// cannot be written is reported as such (it is in force).
    async fn operator_changed<T>(
        &self,
        mut entry: Entry,
        result: Result<T, OperatorChangeError>,
    ) -> Result<T, Status> {
        match result {
            Ok(value) => {
                entry.outcome = Outcome::Ok;
                self.trail.record(entry).await.map_err(|e| {
                    Status::internal(format!(
                        "done, but its audit record could not be written: {e}"
                    ))
                })?;
                Ok(value)
            }
            Err(e) => {
                entry.outcome = Outcome::Failed;
                entry.detail = clip(&e.to_string());
                let _ = self.trail.record(entry).await;
                Err(e.into())
            }
        }
    }
}

fn operator_info(name: &str, role: Role) -> OperatorInfo {
    OperatorInfo {
        name: name.to_owned(),
        role: role.to_string(),
    }
}
