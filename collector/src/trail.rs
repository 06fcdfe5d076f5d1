//! The collector's side of the audit log (crate `audit`): which analyst
//! actions become records, and when. Every call that changes something
//! (isolate, release), every subscription and its end, and every refused
//! analyst call are recorded; a successful `ListHosts` (read-only, polled)
//! is not. A record is on disk (fsync) before the caller's answer leaves:
//! an action whose `requested` record cannot be written is not carried out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use audit::{ArgValue, AuditLog, Entry, Outcome};
use futures::Stream;
use tonic::Status;
use tracing::{error, info};

/// Longest string kept from a request field, in bytes: refused and
/// unauthenticated callers choose these, and must not fill the disk.
const MAX_FIELD: usize = 256;
/// Most list items kept from one filter.
const MAX_ITEMS: usize = 64;

/// The audit log, or nothing (an embedded collector without one).
#[derive(Debug, Clone, Default)]
pub struct Trail(Option<Arc<AuditLog>>);

impl Trail {
    pub fn new(log: Option<AuditLog>) -> Self {
        Self(log.map(Arc::new))
    }

    /// Appends `entry` on the blocking pool and waits until it is on disk.
    pub async fn record(&self, entry: Entry) -> Result<(), String> {
        let Some(log) = self.0.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || append(&log, entry))
            .await
            .map_err(|e| format!("audit writer task: {e}"))?
    }

    /// The same, from a synchronous context (a dropped stream).
    pub fn record_now(&self, entry: Entry) -> Result<(), String> {
        self.0.as_ref().map_or(Ok(()), |log| append(log, entry))
    }

    /// Records a refusal and gives the refusal back; a record that cannot
    /// be written is logged (the caller is refused either way).
    pub async fn refused(&self, mut entry: Entry, status: Status) -> Status {
        entry.outcome = Outcome::Refused;
        entry.detail = clip(status.message());
        if let Err(e) = self.record(entry).await {
            error!("refused call not recorded: {e}");
        }
        status
    }
}

fn append(log: &AuditLog, entry: Entry) -> Result<(), String> {
    let (action, outcome) = (entry.action.clone(), entry.outcome);
    let operator = entry.operator.clone().unwrap_or_default();
    match log.append(entry) {
        Ok(done) => {
            // The head hash goes to the collector's log with every record:
            // a copy outside the audit directory (docs/audit.md).
            info!(seq = done.seq, sha256 = %audit::hex(&done.hash), action,
                outcome = outcome.as_str(), operator, "audit record");
            Ok(())
        }
        Err(e) => {
            error!(
                action,
                outcome = outcome.as_str(),
                operator,
                "audit record NOT written: {e}"
            );
            Err(e.to_string())
        }
    }
}

/// `text`, cut to [`MAX_FIELD`] bytes on a character boundary.
pub fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_FIELD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A filter list as an argument: at most [`MAX_ITEMS`], each clipped.
pub fn list(items: impl IntoIterator<Item = String>) -> ArgValue {
    ArgValue::Many(
        items
            .into_iter()
            .take(MAX_ITEMS)
            .map(|s| clip(&s))
            .collect(),
    )
}

/// A stream that runs `on_drop` once when it is dropped (a subscriber
/// that left, or a server that stopped).
pub struct OnDrop<S> {
    inner: S,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl<S> OnDrop<S> {
    pub fn new(inner: S, on_drop: impl FnOnce() + Send + 'static) -> Self {
        Self {
            inner,
            on_drop: Some(Box::new(on_drop)),
        }
    }
}

impl<S: Stream + Unpin> Stream for OnDrop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<S> Drop for OnDrop<S> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_whole_characters() {
        let long = "é".repeat(200); // 400 bytes
        let c = clip(&long);
        assert!(c.len() <= MAX_FIELD && c.len() >= MAX_FIELD - 1);
        assert!(long.starts_with(&c));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn lists_are_bounded() {
        let ArgValue::Many(items) = list((0..100).map(|i| i.to_string())) else {
            panic!("not a list");
        };
        assert_eq!(items.len(), MAX_ITEMS);
    }
}
