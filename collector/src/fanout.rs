//! Delivery of accepted events and host records to subscribers.
//!
//! One tokio broadcast channel carries every item; each subscriber filters
//! on its own side. Broadcast sends never wait, so a slow subscriber can
//! never hold up ingest: it loses the oldest items and is told how many.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use proto::telemetry::v1::{
    Event, EventKind, HostEvent, HostIdentity, HostRecord, Process, SubscribeRequest,
    SubscribeResponse, event, subscribe_response,
};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// One item on the broadcast channel. Shared through `Arc` so the channel
/// does not deep-copy events per subscriber until one is actually sent.
#[derive(Debug, Clone)]
pub enum FanoutItem {
    Event {
        host: Arc<HostIdentity>,
        batch_sequence: u64,
        event: Arc<Event>,
        /// When this collector received the batch (UTC ns since the
        /// epoch, its own clock): `HostEvent.received_unix_ns`.
        received_unix_ns: u64,
        /// `HostEvent.store_id` (0: not stored).
        store_id: u64,
    },
    Record(Arc<HostRecord>),
}

impl FanoutItem {
    fn host_id(&self) -> &str {
        match self {
            Self::Event { host, .. } => &host.host_id,
            Self::Record(r) => r.host.as_ref().map_or("", |h| h.host_id.as_str()),
        }
    }

    /// The wire form sent to a subscriber.
    pub fn to_response(&self) -> SubscribeResponse {
        let item = match self {
            Self::Event {
                host,
                batch_sequence,
                event,
                received_unix_ns,
                store_id,
            } => subscribe_response::Item::Event(HostEvent {
                host: Some(HostIdentity::clone(host)),
                batch_sequence: *batch_sequence,
                event: Some(Event::clone(event)),
                received_unix_ns: *received_unix_ns,
                store_id: *store_id,
            }),
            Self::Record(r) => subscribe_response::Item::Record(HostRecord::clone(r)),
        };
        SubscribeResponse { item: Some(item) }
    }
}

/// A subscriber's filters could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("kinds: EVENT_KIND_UNSPECIFIED is not a kind to filter on")]
    UnspecifiedKind,
    #[error("kinds: unknown event kind value {0}")]
    UnknownKind(i32),
}

/// A subscriber's filters. An empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionFilter {
    host_ids: HashSet<String>,
    kinds: HashSet<EventKind>,
    process_names: HashSet<String>,
}

/// Linux keeps at most 15 bytes of a process name in `comm`.
const COMM_MAX_BYTES: usize = 15;

impl SubscriptionFilter {
    /// Validates a request's filters; unknown kinds are refused rather than
    /// ignored, so a typo does not silently match everything.
    pub fn from_request(req: &SubscribeRequest) -> Result<Self, FilterError> {
        let kinds = req
            .kinds
            .iter()
            .map(|&k| match EventKind::try_from(k) {
                Ok(EventKind::Unspecified) => Err(FilterError::UnspecifiedKind),
                Ok(kind) => Ok(kind),
                Err(_) => Err(FilterError::UnknownKind(k)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            host_ids: req.host_ids.iter().cloned().collect(),
            kinds,
            process_names: req.process_names.iter().cloned().collect(),
        })
    }

    /// Host records pass on the host filter alone: a gap or a drop concerns
    /// every kind of event of that host.
    pub fn matches(&self, item: &FanoutItem) -> bool {
        if !self.host_ids.is_empty() && !self.host_ids.contains(item.host_id()) {
            return false;
        }
        match item {
            FanoutItem::Event { event, .. } => self.matches_event(event),
            FanoutItem::Record(_) => true,
        }
    }

    /// The kind and process filters alone (the store filters hosts).
    pub fn matches_event(&self, event: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&event_kind(event)) {
            return false;
        }
        self.process_names.is_empty()
            || process_names_of(event).any(|candidate| self.name_matches(candidate))
    }

    fn name_matches(&self, candidate: Candidate<'_>) -> bool {
        match candidate {
            Candidate::Exact(name) => self.process_names.contains(name),
            // A full-length comm may be a cut-off longer name.
            Candidate::Comm(comm) if comm.len() >= COMM_MAX_BYTES => self
                .process_names
                .iter()
                .any(|n| n.as_bytes().starts_with(comm.as_bytes())),
            Candidate::Comm(comm) => self.process_names.contains(comm),
        }
    }
}

enum Candidate<'a> {
    Exact(&'a str),
    Comm(&'a str),
}

/// The names an event can be found by: the comm, and for an exec or a
/// policy block the basename of the executed file.
fn process_names_of(event: &Event) -> impl Iterator<Item = Candidate<'_>> {
    let process = process_of(event);
    let filename = match &event.kind {
        Some(event::Kind::Exec(e)) => Some(e.filename.as_str()),
        Some(event::Kind::Policy(p)) => Some(p.path.as_str()),
        // The process's exe basename, so `--process curl` finds its traffic.
        Some(event::Kind::Network(_)) => process.map(|p| p.exe.as_str()),
        _ => None,
    };
    let comm = process
        .map(|p| p.comm.as_str())
        .filter(|c| !c.is_empty())
        .map(Candidate::Comm);
    let base = filename
        .map(|f| f.rsplit('/').next().unwrap_or(f))
        .filter(|b| !b.is_empty())
        .map(Candidate::Exact);
    comm.into_iter().chain(base)
}

/// The process an event is about, whatever its kind.
pub fn process_of(event: &Event) -> Option<&Process> {
    match &event.kind {
        Some(event::Kind::Exec(e)) => e.process.as_ref(),
        Some(event::Kind::Fork(f)) => f.process.as_ref(),
        Some(event::Kind::Exit(x)) => x.process.as_ref(),
        Some(event::Kind::Policy(p)) => p.process.as_ref(),
        Some(event::Kind::File(f)) => f.process.as_ref(),
        Some(event::Kind::Network(n)) => n.process.as_ref(),
        // The matched event's process: `--process bash` finds its alerts.
        Some(event::Kind::Alert(a)) => a.process.as_ref(),
        Some(event::Kind::Isolation(_) | event::Kind::Tamper(_) | event::Kind::Response(_))
        | None => None,
    }
}

/// The filterable kind of an event (`Unspecified` for an empty oneof).
pub fn event_kind(event: &Event) -> EventKind {
    match &event.kind {
        Some(event::Kind::Exec(_)) => EventKind::Exec,
        Some(event::Kind::Fork(_)) => EventKind::Fork,
        Some(event::Kind::Exit(_)) => EventKind::Exit,
        Some(event::Kind::Policy(_)) => EventKind::Policy,
        Some(event::Kind::File(_)) => EventKind::File,
        Some(event::Kind::Network(_)) => EventKind::Network,
        Some(event::Kind::Isolation(_)) => EventKind::Isolation,
        Some(event::Kind::Tamper(_)) => EventKind::Tamper,
        Some(event::Kind::Response(_)) => EventKind::Response,
        Some(event::Kind::Alert(_)) => EventKind::Alert,
        None => EventKind::Unspecified,
    }
}

/// A subscriber's outgoing stream, as tonic wants it.
pub type SubscriberStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeResponse, tonic::Status>> + Send + 'static>>;

/// The sending side shared by every ingest stream.
#[derive(Debug, Clone)]
pub struct Fanout {
    tx: broadcast::Sender<FanoutItem>,
}

impl Fanout {
    /// `capacity`: items kept for the slowest subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }

    /// Never blocks; with no subscriber the item is simply dropped.
    pub fn publish(&self, item: FanoutItem) {
        let _ = self.tx.send(item);
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A filtered stream of everything published from now on, ending when
    /// `stop` completes (server shutdown).
    pub fn subscribe(
        &self,
        filter: SubscriptionFilter,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> SubscriberStream {
        BroadcastStream::new(self.tx.subscribe())
            .filter_map(move |received| {
                future::ready(match received {
                    Ok(item) => filter.matches(&item).then(|| Ok(item.to_response())),
                    Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "subscriber lagged");
                        Some(Ok(SubscribeResponse {
                            item: Some(subscribe_response::Item::SubscriberLagged(skipped)),
                        }))
                    }
                })
            })
            .take_until(Box::pin(stop))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use proto::telemetry::v1::{DropCounters, host_record};

    fn event_item(host_id: &str, event: Event) -> FanoutItem {
        FanoutItem::Event {
            host: Arc::new(testkit::host(host_id, "i")),
            batch_sequence: 1,
            event: Arc::new(event),
            received_unix_ns: 1,
            store_id: 0,
        }
    }

    fn record_item(host_id: &str) -> FanoutItem {
        FanoutItem::Record(Arc::new(HostRecord {
            host: Some(testkit::host(host_id, "i")),
            record: Some(host_record::Record::Drops(DropCounters::default())),
            ..HostRecord::default()
        }))
    }

    fn filter(hosts: &[&str], kinds: &[EventKind], names: &[&str]) -> SubscriptionFilter {
        SubscriptionFilter::from_request(&SubscribeRequest {
            host_ids: hosts.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|&k| k as i32).collect(),
            process_names: names.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn exec(comm: &str, filename: &str) -> Event {
        testkit::exec_event(100, comm, filename, &[filename])
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = SubscriptionFilter::default();
        assert!(f.matches(&event_item("a", exec("sh", "/bin/sh"))));
        assert!(f.matches(&record_item("a")));
        assert!(f.matches(&event_item("a", Event::default())));
    }

    #[test]
    fn host_filter_is_exact() {
        let f = filter(&["store-1"], &[], &[]);
        assert!(f.matches(&event_item("store-1", exec("sh", "/bin/sh"))));
        assert!(!f.matches(&event_item("store-10", exec("sh", "/bin/sh"))));
        assert!(!f.matches(&record_item("store-2")));
        assert!(f.matches(&record_item("store-1")));
    }

    #[test]
    fn kind_filter_applies_to_events_not_records() {
        let f = filter(&[], &[EventKind::Exit], &[]);
        assert!(f.matches(&event_item(
            "a",
            testkit::exit_event(5, "sh", Some(0), None)
        )));
        assert!(!f.matches(&event_item("a", testkit::fork_event(5, 1, "sh"))));
        assert!(!f.matches(&event_item("a", exec("sh", "/bin/sh"))));
        assert!(!f.matches(&event_item("a", Event::default())));
        assert!(f.matches(&record_item("a")));
    }

    #[test]
    fn process_filter_matches_comm_or_exec_basename() {
        let f = filter(&[], &[], &["curl"]);
        assert!(f.matches(&event_item("a", exec("bash", "/usr/bin/curl"))));
        assert!(f.matches(&event_item("a", exec("curl", "/opt/x"))));
        assert!(f.matches(&event_item("a", testkit::fork_event(5, 1, "curl"))));
        assert!(!f.matches(&event_item("a", exec("bash", "/usr/bin/curly"))));
        assert!(!f.matches(&event_item("a", testkit::fork_event(5, 1, "cur"))));
        assert!(f.matches(&record_item("a")));
    }

    #[test]
    fn process_filter_understands_truncated_comm() {
        let f = filter(&[], &[], &["pharmacy-kiosk-ui"]);
        // The kernel cut "pharmacy-kiosk-ui" to 15 bytes.
        assert!(f.matches(&event_item(
            "a",
            testkit::exit_event(5, "pharmacy-kiosk-", None, Some(9))
        )));
        assert!(!f.matches(&event_item(
            "a",
            testkit::exit_event(5, "pharmacy-kiosk-x", None, Some(9))
        )));
        // A short comm must match exactly.
        assert!(!f.matches(&event_item(
            "a",
            testkit::exit_event(5, "pharm", None, Some(9))
        )));
    }

    #[test]
    fn filters_combine_with_and() {
        let f = filter(&["a"], &[EventKind::Exec], &["curl"]);
        assert!(f.matches(&event_item("a", exec("curl", "/usr/bin/curl"))));
        assert!(!f.matches(&event_item("b", exec("curl", "/usr/bin/curl"))));
        assert!(!f.matches(&event_item("a", testkit::fork_event(5, 1, "curl"))));
    }

    #[test]
    fn bad_kinds_are_refused() {
        let req = |k: i32| SubscribeRequest {
            kinds: vec![k],
            ..Default::default()
        };
        assert_eq!(
            SubscriptionFilter::from_request(&req(0)),
            Err(FilterError::UnspecifiedKind)
        );
        assert_eq!(
            SubscriptionFilter::from_request(&req(42)),
            Err(FilterError::UnknownKind(42))
        );
    }

    #[tokio::test]
    async fn slow_subscriber_is_told_it_lagged() {
        let fanout = Fanout::new(4);
        let mut stream = fanout.subscribe(SubscriptionFilter::default(), future::pending());
        for _ in 0..10 {
            fanout.publish(record_item("a"));
        }
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            first.item,
            Some(subscribe_response::Item::SubscriberLagged(6))
        );
        let mut rest = 0;
        while let Some(Ok(r)) = futures::FutureExt::now_or_never(stream.next()).flatten() {
            assert!(matches!(r.item, Some(subscribe_response::Item::Record(_))));
            rest += 1;
        }
        assert_eq!(rest, 4);
    }

    #[tokio::test]
    async fn stream_ends_on_stop() {
        let fanout = Fanout::new(4);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = fanout.subscribe(SubscriptionFilter::default(), async move {
            let _ = rx.await;
        });
        assert_eq!(fanout.subscribers(), 1);
        tx.send(()).unwrap();
        assert!(stream.next().await.is_none());
    }
}
