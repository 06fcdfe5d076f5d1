//! A subscriber on the collector: the integration tests keep everything it
//! receives so a test can wait for the events it caused; the bench counts
//! them as they arrive; the collector's own tests read one item at a time.

use std::time::Duration;

use anyhow::Context as _;
use proto::telemetry::v1::{
    AlertEvent, ExecEvent, ExitEvent, FileEvent, ForkEvent, HostEvent, HostRecord,
    SubscribeRequest, SubscribeResponse, event, subscribe_response::Item,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tokio::sync::mpsc;

use crate::access::CollectorAccess;
use tonic::Streaming;

/// Where a subscription's items come from.
enum Source {
    /// A task reads ahead into a queue: the collector never sees this
    /// subscriber fall behind, however long the test leaves it unread.
    ReadAhead(mpsc::UnboundedReceiver<SubscribeResponse>),
    /// The stream itself, read only when asked: a subscriber that does not
    /// read falls behind at the collector (and is told it lagged).
    OnDemand(Box<Streaming<SubscribeResponse>>),
}

/// The exec in `kind`, if it is one whose argv contains `marker`.
fn exec_with<'a>(kind: &'a event::Kind, marker: &str) -> Option<&'a ExecEvent> {
    match kind {
        event::Kind::Exec(x) if x.argv.iter().any(|a| a == marker) => Some(x),
        _ => None,
    }
}

/// Items received by a subscription, in order.
pub struct Subscription {
    source: Source,
    pub events: Vec<HostEvent>,
    pub records: Vec<HostRecord>,
}

impl Subscription {
    /// [`Self::open`] on the events of `kinds`.
    pub async fn open_kinds(
        access: &CollectorAccess,
        kinds: &[proto::telemetry::v1::EventKind],
    ) -> anyhow::Result<Self> {
        let request = SubscribeRequest {
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            ..Default::default()
        };
        Self::open(access, request).await
    }

    /// Subscribes with a task that reads ahead (see [`Subscription::until`]).
    pub async fn open(access: &CollectorAccess, request: SubscribeRequest) -> anyhow::Result<Self> {
        let mut stream = Self::stream(access, request).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(item)) = stream.message().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        Ok(Self::new(Source::ReadAhead(rx)))
    }

    /// Subscribes without reading ahead: items are read from the collector
    /// by [`Subscription::next`] only.
    pub async fn open_on_demand(
        access: &CollectorAccess,
        request: SubscribeRequest,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(Source::OnDemand(Box::new(
            Self::stream(access, request).await?,
        ))))
    }

    async fn stream(
        access: &CollectorAccess,
        request: SubscribeRequest,
    ) -> anyhow::Result<Streaming<SubscribeResponse>> {
        let mut client = TelemetrySubscribeClient::new(access.channel().await?);
        Ok(client
            .subscribe(access.request(request))
            .await?
            .into_inner())
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            events: Vec::new(),
            records: Vec::new(),
        }
    }

    /// The next response as the collector sent it; `None` once the stream
    /// ended (a read-ahead subscription ends on an error too).
    pub async fn next(&mut self) -> anyhow::Result<Option<SubscribeResponse>> {
        match &mut self.source {
            Source::ReadAhead(rx) => Ok(rx.recv().await),
            Source::OnDemand(stream) => Ok(stream.message().await?),
        }
    }

    /// Receives until `done(self)` holds or the timeout passes.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let item = tokio::time::timeout_at(deadline, self.next())
                .await
                .context("timed out waiting for events")??
                .context("subscription closed")?;
            match item.item {
                Some(Item::Event(e)) => self.events.push(e),
                Some(Item::Record(r)) => self.records.push(r),
                Some(Item::SubscriberLagged(n)) => anyhow::bail!("subscriber lagged by {n}"),
                None => {}
            }
        }
        Ok(())
    }

    /// The events for which `pick` returns something.
    fn pick<'a, T>(&'a self, pick: impl Fn(&'a event::Kind) -> Option<&'a T>) -> Vec<&'a T> {
        self.events
            .iter()
            .filter_map(|e| pick(e.event.as_ref()?.kind.as_ref()?))
            .collect()
    }

    /// Every tamper event so far.
    pub fn tamper(&self) -> Vec<&proto::telemetry::v1::TamperEvent> {
        self.pick(|k| match k {
            event::Kind::Tamper(t) => Some(t),
            _ => None,
        })
    }

    /// Alerts about `subject` (an executed file, a path, an address:port).
    pub fn alerts_on(&self, subject: &str) -> Vec<&AlertEvent> {
        self.pick(|k| match k {
            event::Kind::Alert(a) if a.matched_subject == subject => Some(a),
            _ => None,
        })
    }

    /// Exec events whose argv contains `marker`.
    pub fn execs_with(&self, marker: &str) -> Vec<&ExecEvent> {
        self.pick(|k| exec_with(k, marker))
    }

    /// [`Self::execs_with`], as received: with host, batch and times.
    pub fn exec_host_events_with(&self, marker: &str) -> Vec<&HostEvent> {
        self.events
            .iter()
            .filter(|e| {
                e.event
                    .as_ref()
                    .and_then(|e| e.kind.as_ref())
                    .and_then(|k| exec_with(k, marker))
                    .is_some()
            })
            .collect()
    }

    /// Exit events of process `pid`.
    pub fn exits_of(&self, pid: u32) -> Vec<&ExitEvent> {
        self.pick(|k| match k {
            event::Kind::Exit(x) if x.process.as_ref()?.pid == pid => Some(x),
            _ => None,
        })
    }

    /// Fork events of process `pid`.
    pub fn forks_of(&self, pid: u32) -> Vec<&ForkEvent> {
        self.pick(|k| match k {
            event::Kind::Fork(x) if x.process.as_ref()?.pid == pid => Some(x),
            _ => None,
        })
    }

    /// File events whose path or rename destination starts with `prefix`.
    pub fn files_under(&self, prefix: &str) -> Vec<&FileEvent> {
        self.pick(|k| match k {
            event::Kind::File(f)
                if f.path.starts_with(prefix) || f.new_path.starts_with(prefix) =>
            {
                Some(f)
            }
            _ => None,
        })
    }

    /// Highest kernel ring-buffer-full count reported so far.
    pub fn max_kernel_drops(&self) -> u64 {
        self.max_drops(|d| d.kernel_ringbuf_full)
    }

    /// Highest count of lost execs reported so far (a part of
    /// [`Self::max_kernel_drops`]).
    pub fn max_exec_drops(&self) -> u64 {
        self.max_drops(|d| d.kernel_exec_ringbuf_full)
    }

    /// The highest value of one drop counter over the batches seen.
    fn max_drops(&self, counter: impl Fn(&proto::telemetry::v1::DropCounters) -> u64) -> u64 {
        self.records
            .iter()
            .filter_map(|r| match r.record.as_ref()? {
                proto::telemetry::v1::host_record::Record::Drops(d) => Some(counter(d)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}
