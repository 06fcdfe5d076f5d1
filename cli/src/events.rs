//! `rxsentry events`: read the collector's store (docs/store.md), oldest
//! first, with the same filters and output as `tail`.

use std::ops::ControlFlow;

use anyhow::bail;
use clap::Args;
use proto::telemetry::v1::{
    EventKind, QueryRequest, SubscribeResponse, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tonic::transport::Channel;

use crate::client;
use crate::render::{Format, Renderer};
use crate::tail::{FilterArgs, KindArg, Output};
use crate::when;

/// Items asked for per page.
const PAGE: u32 = 1_000;

/// Options of `rxsentry events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// From this time on (event time): an age (`1h`, `7d`) or a UTC time
    /// (`2026-12-04T12:00:00Z`, `2026-12-04`). Default: everything stored.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Before this time, same forms as --since. Default: now and later.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Leave out host records (gaps, duplicates, restarts, drops, silence).
    #[arg(long)]
    no_records: bool,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// Stop after this many events (records do not count).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    limit: u64,
}

/// The query filters shared with `tail --since`.
pub fn request(
    hosts: &[String],
    kinds: &[KindArg],
    processes: &[String],
    since: u64,
    until: u64,
    include_records: bool,
) -> QueryRequest {
    QueryRequest {
        host_ids: hosts.to_vec(),
        kinds: kinds.iter().map(|&k| EventKind::from(k) as i32).collect(),
        process_names: processes.to_vec(),
        since_unix_ns: since,
        until_unix_ns: until,
        limit: PAGE,
        include_records,
        ..QueryRequest::default()
    }
}

impl EventsArgs {
    fn request(&self, now: u64) -> anyhow::Result<QueryRequest> {
        let at = |w: &Option<String>| -> anyhow::Result<u64> {
            w.as_deref()
                .map_or(Ok(0), |w| when::parse(w, now).map_err(anyhow::Error::msg))
        };
        let (since, until) = (at(&self.since)?, at(&self.until)?);
        if until != 0 && until <= since {
            bail!("--until must be after --since");
        }
        Ok(request(
            &self.filter.hosts,
            &self.filter.kinds,
            &self.filter.processes,
            since,
            until,
            !self.no_records,
        ))
    }
}

/// Reads every page of `req` (pinned to the first page's high-water mark)
/// and hands each item to `each`, which may stop early. Returns the
/// high-water mark: every stored item up to it was looked at.
pub async fn replay(
    client: &mut TelemetrySubscribeClient<Channel>,
    access: &client::Access,
    mut req: QueryRequest,
    mut each: impl FnMut(&SubscribeResponse) -> ControlFlow<()>,
) -> anyhow::Result<(u64, ControlFlow<()>)> {
    loop {
        let page = client
            .query(access.request(req.clone())?)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "the collector at {} refused the query: {}",
                    access.url(),
                    client::describe_status(&s)
                )
            })?
            .into_inner();
        for item in &page.items {
            if each(item).is_break() {
                return Ok((page.high_water_id, ControlFlow::Break(())));
            }
        }
        if page.next_cursor.is_empty() {
            return Ok((page.high_water_id, ControlFlow::Continue(())));
        }
        req.cursor = page.next_cursor;
        req.max_store_id = page.high_water_id;
    }
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let req = args.request(when::now_unix_ns())?;
    let access = &args.filter.access;
    let mut client = TelemetrySubscribeClient::new(access.connect().await?);
    let format = if args.json {
        Format::Json
    } else {
        Format::Table
    };
    let mut out = Output::buffered(Renderer::new(format));
    if out.header().is_break() || args.limit == 0 {
        return Ok(());
    }
    let mut events = 0u64;
    let limit = args.limit;
    let flow = replay(&mut client, access, req, |item| {
        out.item(item)?;
        if matches!(item.item, Some(subscribe_response::Item::Event(_))) {
            events += 1;
            if events >= limit {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })
    .await;
    // What was read is shown even when a later page failed.
    let _ = out.finish();
    let (_, flow) = flow?;
    if flow.is_break() && events >= limit {
        eprintln!("rxsentry: stopped at --limit {limit} events; there may be more");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> EventsArgs {
        crate::test_args::parse("events", args)
    }

    #[test]
    fn flags_become_the_query() {
        let now = 1_796_385_600_000_000_000;
        let r = parse(&[
            "--host",
            "s1",
            "--kind",
            "exec",
            "--process",
            "curl",
            "--since",
            "1h",
            "--until",
            "2026-12-04T12:00:00Z",
        ])
        .request(now)
        .unwrap();
        assert_eq!(r.host_ids, ["s1"]);
        assert_eq!(r.kinds, [EventKind::Exec as i32]);
        assert_eq!(r.process_names, ["curl"]);
        assert_eq!(r.since_unix_ns, now - 3_600_000_000_000);
        assert_eq!(r.until_unix_ns, now);
        assert!(r.include_records);
        assert!(
            parse(&["--no-records"])
                .request(now)
                .unwrap()
                .include_records
                .eq(&false)
        );
    }

    #[test]
    fn bad_times_are_usage_errors() {
        let now = 1_796_385_600_000_000_000;
        assert!(parse(&["--since", "yesterday"]).request(now).is_err());
        let err = parse(&["--since", "1h", "--until", "2h"])
            .request(now)
            .unwrap_err();
        assert!(err.to_string().contains("--until must be after"), "{err}");
    }
}
