//! `rxsentry tail`: subscribe to a collector and print what arrives.

use std::io::{self, Write};
use std::ops::ControlFlow;

use anyhow::bail;
use clap::{Args, ValueEnum};
use proto::telemetry::v1::{
    EventKind, SubscribeRequest, SubscribeResponse, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};

use crate::client::{self, DEFAULT_COLLECTOR};
use crate::render::{Format, Renderer};

/// Options of `rxsentry tail`. Repeated filters of one kind are OR-ed;
/// different kinds of filter are AND-ed (the collector does the filtering).
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Collector gRPC address, `http://host:port` or `host:port`.
    #[arg(long, default_value = DEFAULT_COLLECTOR)]
    collector: String,
    /// Only this host_id (repeatable).
    #[arg(long = "host", value_name = "HOST_ID")]
    hosts: Vec<String>,
    /// Only this event kind (repeatable). Host records always pass.
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    kinds: Vec<KindArg>,
    /// Only processes with this comm or executable basename (repeatable).
    #[arg(long = "process", value_name = "NAME")]
    processes: Vec<String>,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit successfully after this many events (records do not count).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Event kinds as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KindArg {
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
        }
    }
}

impl TailArgs {
    fn request(&self) -> SubscribeRequest {
        SubscribeRequest {
            host_ids: self.hosts.clone(),
            kinds: self
                .kinds
                .iter()
                .map(|&k| EventKind::from(k) as i32)
                .collect(),
            process_names: self.processes.clone(),
        }
    }
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let url = client::normalize_url(&args.collector);
    let channel = client::connect(&url).await?;
    let mut stream = TelemetrySubscribeClient::new(channel)
        .subscribe(args.request())
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
    loop {
        let message = stream.message().await.map_err(|s| {
            anyhow::anyhow!(
                "the stream from {url} broke: {}",
                client::describe_status(&s)
            )
        })?;
        let Some(response) = message else { break };
        if out.item(&response).is_break() {
            return Ok(());
        }
        if matches!(response.item, Some(subscribe_response::Item::Event(_))) {
            events += 1;
            if args.count == Some(events) {
                return Ok(());
            }
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

/// Writes lines to stdout and flushes each, so `tail | grep` is live. A
/// closed pipe (`| head`) means "stop", not an error.
struct Output {
    renderer: Renderer,
    stdout: io::Stdout,
}

impl Output {
    fn new(renderer: Renderer) -> Self {
        Self {
            renderer,
            stdout: io::stdout(),
        }
    }

    fn header(&mut self) -> ControlFlow<()> {
        match self.renderer.header() {
            Some(h) => self.line(&h),
            None => ControlFlow::Continue(()),
        }
    }

    fn item(&mut self, response: &SubscribeResponse) -> ControlFlow<()> {
        let line = self.renderer.render(response);
        self.line(&line)
    }

    fn line(&mut self, line: &str) -> ControlFlow<()> {
        let mut lock = self.stdout.lock();
        match writeln!(lock, "{line}").and_then(|()| lock.flush()) {
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
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        tail: TailArgs,
    }

    fn parse(args: &[&str]) -> TailArgs {
        Wrapper::try_parse_from(std::iter::once("tail").chain(args.iter().copied()))
            .unwrap()
            .tail
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
        assert_eq!(a.collector, DEFAULT_COLLECTOR);
    }

    #[test]
    fn unknown_kind_is_a_usage_error() {
        let err = Wrapper::try_parse_from(["tail", "--kind", "open"])
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
