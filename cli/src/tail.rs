//! `rxsentry tail`: subscribe to a collector and print what arrives.

use std::io::{self, Write};
use std::ops::ControlFlow;

use anyhow::bail;
use clap::{Args, ValueEnum};
use proto::telemetry::v1::{
    EventKind, SubscribeRequest, SubscribeResponse, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};

use crate::client;
use crate::render::{Format, Renderer};
use crate::{events, when};

/// Options of `rxsentry tail`. Repeated filters of one kind are OR-ed;
/// different kinds of filter are AND-ed (the collector does the filtering).
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit successfully after this many events (records do not count).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// First replay the stored events from this time on (an age such as
    /// `1h`, or a UTC time), then follow live, with nothing missed or shown
    /// twice at the seam. Needs a collector with a store.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
}

/// Where to read and what, shared by `tail` and `events`. Repeated
/// filters of one kind are OR-ed; different kinds of filter are AND-ed.
#[derive(Debug, Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub access: client::Access,
    /// Only this host_id (repeatable).
    #[arg(long = "host", value_name = "HOST_ID")]
    pub hosts: Vec<String>,
    /// Only this event kind (repeatable). Host records always pass.
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    pub kinds: Vec<KindArg>,
    /// Only processes with this comm or executable basename (repeatable).
    #[arg(long = "process", value_name = "NAME")]
    pub processes: Vec<String>,
}

/// Event kinds as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Exec,
    Fork,
    Exit,
    /// Allowlist blocks and would-blocks.
    Policy,
    /// Operations on watched files.
    File,
    /// TCP connect/accept/listen/close, UDP destinations, DNS queries.
    Network,
    /// Network isolation changes (audit).
    Isolation,
    /// Detection rule matches (docs/detection.md).
    Alert,
    /// Someone touched rxsentry's pinned programs or maps (self-protection).
    Tamper,
    /// What detection rules' responses did: kill, quarantine, isolate (audit).
    Response,
}

impl From<KindArg> for EventKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Exec => EventKind::Exec,
            KindArg::Fork => EventKind::Fork,
            KindArg::Exit => EventKind::Exit,
            KindArg::Policy => EventKind::Policy,
            KindArg::File => EventKind::File,
            KindArg::Network => EventKind::Network,
            KindArg::Isolation => EventKind::Isolation,
            KindArg::Alert => EventKind::Alert,
            KindArg::Tamper => EventKind::Tamper,
            KindArg::Response => EventKind::Response,
        }
    }
}

impl TailArgs {
    fn request(&self) -> SubscribeRequest {
        SubscribeRequest {
            host_ids: self.filter.hosts.clone(),
            kinds: self
                .filter
                .kinds
                .iter()
                .map(|&k| EventKind::from(k) as i32)
                .collect(),
            process_names: self.filter.processes.clone(),
        }
    }
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|w| when::parse(w, when::now_unix_ns()).map_err(anyhow::Error::msg))
        .transpose()?;
    let access = &args.filter.access;
    let url = access.url();
    let channel = access.connect().await?;
    let mut client = TelemetrySubscribeClient::new(channel);
    // Subscribed first: the collector registers the subscription before it
    // answers, so whatever it commits after the replay's high-water mark
    // (read later) reaches this stream.
    let mut stream = client
        .subscribe(access.request(args.request())?)
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the collector at {url} refused the subscription: {}",
                client::describe_status(&s)
            )
        })?
        .into_inner();

    let format = if args.json {
        Format::Json
    } else {
        Format::Table
    };
    let mut out = Output::new(Renderer::new(format));
    let mut events = 0u64;
    if out.header().is_break() || args.count == Some(0) {
        return Ok(());
    }
    let mut show = |response: &SubscribeResponse| -> ControlFlow<()> {
        out.item(response)?;
        if matches!(response.item, Some(subscribe_response::Item::Event(_))) {
            events += 1;
            if args.count == Some(events) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    // Live items wait here while the store is replayed, so the collector
    // never sees this subscriber fall behind because of the replay.
    let (live_tx, mut live) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let message = stream.message().await;
            let end = !matches!(message, Ok(Some(_)));
            if live_tx.send(message).is_err() || end {
                break;
            }
        }
    });
    // Everything stored up to the high-water mark was replayed; a live item
    // at or below it is one of those, a live item above it was not.
    let mut seam = 0u64;
    if let Some(since) = since {
        let req = events::request(
            &args.filter.hosts,
            &args.filter.kinds,
            &args.filter.processes,
            since,
            0,
            true,
        );
        let (high_water, flow) = events::replay(&mut client, access, req, &mut show).await?;
        if flow.is_break() {
            return Ok(());
        }
        seam = high_water;
    }
    while let Some(message) = live.recv().await {
        let message = message.map_err(|s| {
            anyhow::anyhow!(
                "the stream from {url} broke: {}",
                client::describe_status(&s)
            )
        })?;
        let Some(response) = message else { break };
        if store_id(&response).is_some_and(|id| id <= seam) {
            continue;
        }
        if show(&response).is_break() {
            return Ok(());
        }
    }
    match args.count {
        Some(n) => bail!("the collector at {url} ended the stream after {events} of {n} events"),
        None => {
            eprintln!("rxsentry: the collector at {url} ended the stream");
            Ok(())
        }
    }
}

/// The store position of an event or record (None: not stored).
fn store_id(response: &SubscribeResponse) -> Option<u64> {
    let id = match &response.item {
        Some(subscribe_response::Item::Event(e)) => e.store_id,
        Some(subscribe_response::Item::Record(r)) => r.store_id,
        _ => 0,
    };
    (id != 0).then_some(id)
}

/// Writes lines to stdout and flushes each, so `tail | grep` is live. A
/// closed pipe (`| head`) means "stop", not an error.
pub struct Output {
    renderer: Renderer,
    stdout: io::BufWriter<io::Stdout>,
    /// Live output flushes every line; a store read only at its end (and
    /// when the buffer fills), a write per line cost more than the rest.
    flush_each: bool,
}

impl Output {
    pub fn new(renderer: Renderer) -> Self {
        Self {
            renderer,
            stdout: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            flush_each: true,
        }
    }

    /// For a finite read: lines are written in large chunks; call
    /// [`Output::finish`] at the end.
    pub fn buffered(renderer: Renderer) -> Self {
        Self {
            flush_each: false,
            ..Self::new(renderer)
        }
    }

    /// Writes out what is buffered.
    pub fn finish(&mut self) -> ControlFlow<()> {
        Self::outcome(self.stdout.flush())
    }

    pub fn header(&mut self) -> ControlFlow<()> {
        match self.renderer.header() {
            Some(h) => self.line(&h),
            None => ControlFlow::Continue(()),
        }
    }

    pub fn item(&mut self, response: &SubscribeResponse) -> ControlFlow<()> {
        let line = self.renderer.render(response);
        self.line(&line)
    }

    fn line(&mut self, line: &str) -> ControlFlow<()> {
        let written = writeln!(self.stdout, "{line}").and_then(|()| {
            if self.flush_each {
                self.stdout.flush()
            } else {
                Ok(())
            }
        });
        Self::outcome(written)
    }

    fn outcome(result: io::Result<()>) -> ControlFlow<()> {
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ControlFlow::Break(()),
            Err(e) => {
                // Anything else (disk full...) is worth saying, then stop.
                eprintln!("rxsentry: cannot write output: {e}");
                ControlFlow::Break(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> TailArgs {
        crate::test_args::parse("tail", args)
    }

    #[test]
    fn filters_become_the_request() {
        let a = parse(&[
            "--host",
            "s1",
            "--host",
            "s2",
            "--kind",
            "exec",
            "--kind",
            "exit",
            "--process",
            "curl",
        ]);
        let r = a.request();
        assert_eq!(r.host_ids, ["s1", "s2"]);
        assert_eq!(r.kinds, [EventKind::Exec as i32, EventKind::Exit as i32]);
        assert_eq!(r.process_names, ["curl"]);
        assert_eq!(a.filter.access.collector, client::DEFAULT_COLLECTOR);
    }

    #[test]
    fn unknown_kind_is_a_usage_error() {
        let err = crate::test_args::try_parse::<TailArgs>("tail", &["--kind", "open"])
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("possible values: exec, fork, exit"),
            "{err}"
        );
    }

    #[test]
    fn network_kind_is_accepted() {
        assert_eq!(
            parse(&["--kind", "network"]).request().kinds,
            [EventKind::Network as i32]
        );
    }

    #[test]
    fn no_filters_means_everything() {
        assert_eq!(parse(&[]).request(), SubscribeRequest::default());
    }
}
