//! The daemon's isolation task: the only owner of [`Isolation`] in the
//! daemon. Requests come from the control stream and the detection rules;
//! every tick it attaches to new interfaces, forwards audit records the
//! local command spooled, and publishes the current status.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use proto::control::v1::IsolationStatus;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Change, Isolation, spool};
use crate::transport::EncodedEvents;

/// A change to apply; `reply` gets the resulting state or the error text.
pub struct Request {
    pub change: Change,
    pub reply: Option<oneshot::Sender<Result<IsolationStatus, String>>>,
}

/// Runs until `requests` closes. Audit events go to `audit` (the pipeline);
/// `status` always holds the latest state. `on_their_way`: audit record
/// files whose events wait in the spool already (not sent twice).
pub async fn run(
    mut isolation: Isolation,
    poll: Duration,
    audit: mpsc::Sender<EncodedEvents>,
    mut requests: mpsc::Receiver<Request>,
    status: watch::Sender<IsolationStatus>,
    on_their_way: Vec<PathBuf>,
) {
    let state_dir = isolation.config.state_dir.clone();
    // Sent, not yet acknowledged: the uploader or the spool deletes each
    // file once the collector has its event.
    let mut sent: HashSet<PathBuf> = on_their_way.into_iter().collect();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(Request { change, reply }) = request else { return };
                let result = match isolation.apply(&change) {
                    Ok(event) => {
                        if let Some(event) = event {
                            tracing::warn!(requester = %change.requester, reason = %change.reason,
                                action = ?change.action, "network isolation changed");
                            let _ = audit.send(EncodedEvents::from_events([&event])).await;
                        }
                        isolation.status().map_err(|e| e.to_string())
                    }
                    Err(e) => {
                        tracing::error!(requester = %change.requester, action = ?change.action,
                            error = %e, "network isolation change refused");
                        let _ = audit.send(EncodedEvents::from_events([&isolation.failure_event(&change, &e)])).await;
                        Err(e.to_string())
                    }
                };
                if let Ok(s) = &result {
                    status.send_replace(s.clone());
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            _ = tick.tick() => {
                match isolation.poll_interfaces() {
                    Ok(report) => {
                        if !report.attached.is_empty() {
                            tracing::info!(interfaces = ?report.attached, "isolation programs attached");
                        }
                        for detached in &report.detached {
                            detached_program(detached, &audit).await;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot attach isolation to new interfaces"),
                }
                flipped_back(&mut isolation, &audit).await;
                sent.retain(|p| p.exists());
                for (path, event) in spool::pending(&state_dir, &sent) {
                    let events = EncodedEvents::from_events([&event]).with_audit_file(path.clone());
                    if audit.send(events).await.is_ok() {
                        sent.insert(path);
                    }
                }
                match isolation.status() {
                    Ok(s) => {
                        status.send_if_modified(|old| {
                            let changed = *old != s;
                            *old = s;
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the isolation state"),
                }
            }
        }
    }
}

/// Someone took an isolation program off an interface (a TCX link
/// detached with its pin left, or a clsact filter deleted); it was
/// attached again in the same poll.
async fn detached_program(
    detached: &crate::isolation::kernel::Detached,
    audit: &mpsc::Sender<EncodedEvents>,
) {
    let finding = crate::tamper::Finding {
        object: detached.object,
        action: "detached by another process".to_owned(),
        target: detached.target.clone(),
        restored: true,
        error: String::new(),
    };
    let count = crate::tamper::count_one();
    tracing::warn!(object = detached.object, target = %detached.target, count,
        "tamper: an isolation program was taken off its interface; attached again");
    let _ = audit
        .send(EncodedEvents::from_events([&finding.event(count)]))
        .await;
}

/// The state file says isolated but the kernel's map says not: someone
/// flipped the map (a bpf() map update). Isolates again at once and reports
/// both the re-apply (an isolation audit event, requester `sensor:tamper`)
/// and a tamper event. A legitimate release writes the file first, under
/// the same lock, so it is never undone here.
async fn flipped_back(isolation: &mut Isolation, audit: &mpsc::Sender<EncodedEvents>) {
    let change = Change {
        action: super::Action::Reapply,
        requester: "sensor:tamper".to_owned(),
        reason: "the isolation map was found not isolated while the state file says isolated"
            .to_owned(),
    };
    let (event, restored, error) = match isolation.apply(&change) {
        Ok(None) => return,
        Ok(Some(event)) => (event, true, String::new()),
        // Whether anything was flipped is unknown then: only a real
        // mismatch is a finding.
        Err(e) if !isolation.flipped() => {
            tracing::warn!(error = %e, "cannot check the isolation map against the state file");
            return;
        }
        Err(e) => (isolation.failure_event(&change, &e), false, e.to_string()),
    };
    let finding = crate::tamper::Finding {
        object: "isolation state map",
        action: "flipped to not isolated".to_owned(),
        target: isolation.state_map_path().display().to_string(),
        restored,
        error,
    };
    let count = crate::tamper::count_one();
    tracing::warn!(restored = finding.restored, error = %finding.error, count,
        "tamper: the isolation map was flipped while isolated; re-applied");
    let _ = audit
        .send(EncodedEvents::from_events([&event, &finding.event(count)]))
        .await;
}
