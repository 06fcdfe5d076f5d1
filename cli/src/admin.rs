//! `rxsentry isolate | release | hosts`: the collector's analyst API, which
//! needs an operator token (sent as `authorization: Bearer <token>`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Args;
use proto::control::v1::{
    HostInfo, IsolationRequest, IsolationStatus, ListHostsRequest, ReloadTrustRequest,
    analyst_api_client::AnalystApiClient,
};
use serde_json::json;

use crate::client::{self, Access};

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// The host_id of the terminal (see `rxsentry hosts`).
    host: String,
    /// Why; recorded with your operator name in the audit event.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct HostsArgs {
    /// One JSON object per host instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    access: Access,
}

/// The analyst API's client.
pub(crate) async fn api(
    access: &Access,
) -> anyhow::Result<(String, AnalystApiClient<tonic::transport::Channel>)> {
    let channel = access.connect().await?;
    Ok((access.url(), AnalystApiClient::new(channel)))
}

/// `rxsentry isolate` (`isolate = true`) or `rxsentry release`.
pub async fn change(args: ChangeArgs, isolate: bool) -> anyhow::Result<()> {
    let what = if isolate { "isolate" } else { "release" };
    let request = args.access.request(IsolationRequest {
        host_id: args.host.clone(),
        reason: args.reason.clone(),
    })?;
    let (url, mut api) = api(&args.access).await?;
    let call = if isolate {
        api.isolate(request).await
    } else {
        api.release(request).await
    };
    let response = call
        .map_err(|s| {
            anyhow::anyhow!(
                "{url} refused to {what} {}: {}",
                args.host,
                client::describe_status(&s)
            )
        })?
        .into_inner();
    let status = response.isolation.unwrap_or_default();
    println!(
        "{}: {} (by {}: {}); interfaces: {}",
        response.host_id,
        if status.isolated {
            "ISOLATED"
        } else {
            "not isolated"
        },
        status.requester,
        status.reason,
        status.interfaces.join(" ")
    );
    if status.isolated != isolate {
        bail!("the sensor answered, but the host is not in the requested state");
    }
    Ok(())
}

/// `rxsentry reload-trust`: the collector re-reads its operators file and
/// deny list (admin role).
pub async fn reload_trust(access: Access) -> anyhow::Result<()> {
    let request = access.request(ReloadTrustRequest {})?;
    let (url, mut api) = api(&access).await?;
    let done = api
        .reload_trust(request)
        .await
        .map_err(|s| anyhow::anyhow!("{url} refused to reload: {}", client::describe_status(&s)))?
        .into_inner();
    println!(
        "reloaded by {}: {} operators, {} revoked certificates in force",
        done.operator, done.operators, done.revoked
    );
    Ok(())
}

pub async fn hosts(args: HostsArgs) -> anyhow::Result<()> {
    let request = args.access.request(ListHostsRequest {})?;
    let (url, mut api) = api(&args.access).await?;
    let hosts = api
        .list_hosts(request)
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "{url} refused to list hosts: {}",
                client::describe_status(&s)
            )
        })?
        .into_inner()
        .hosts;
    if args.json {
        for h in &hosts {
            println!("{}", host_json(h));
        }
    } else {
        println!("{}", host_header());
        for h in &hosts {
            println!("{}", host_row(h, SystemTime::now()));
        }
    }
    Ok(())
}

fn isolation_text(i: Option<&IsolationStatus>) -> String {
    match i {
        None => "unknown".to_owned(),
        Some(i) if i.isolated => format!("ISOLATED by {}", i.requester),
        Some(_) => "no".to_owned(),
    }
}

fn host_header() -> String {
    format!(
        "{:<20} {:<16} {:<7} {:<24} {:<8} {:<10} {:>10} {:>10} {:<8} {}",
        "HOST",
        "HOSTNAME",
        "STATE",
        "ISOLATED",
        "CONTROL",
        "LAST SEEN",
        "K-DROPS",
        "Q-DROPS",
        "VERSION",
        "BACKEND"
    )
}

fn ago(unix_ms: u64, now: SystemTime) -> String {
    if unix_ms == 0 {
        return "never".to_owned();
    }
    let then = UNIX_EPOCH + Duration::from_millis(unix_ms);
    match now.duration_since(then) {
        Ok(d) if d.as_secs() < 120 => format!("{}s ago", d.as_secs()),
        Ok(d) if d.as_secs() < 7200 => format!("{}m ago", d.as_secs() / 60),
        Ok(d) => format!("{}h ago", d.as_secs() / 3600),
        Err(_) => "now".to_owned(),
    }
}

fn host_row(h: &HostInfo, now: SystemTime) -> String {
    let drops = h.drops.unwrap_or_default();
    let queue = drops.userspace_queue_full + drops.userspace_events_dropped;
    // Sensor-supplied strings: no control characters reach the terminal.
    let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    format!(
        "{:<20} {:<16} {:<7} {:<24} {:<8} {:<10} {:>10} {:>10} {:<8} {}",
        clean(&h.host_id),
        clean(&h.hostname),
        if h.silent { "SILENT" } else { "live" },
        clean(&isolation_text(h.isolation.as_ref())),
        if h.control_connected { "up" } else { "down" },
        ago(h.last_seen_unix_ms, now),
        drops.kernel_ringbuf_full,
        queue,
        clean(&h.sensor_version),
        // The reason BPF-LSM was not used is in the JSON output.
        clean(h.allowlist_backend.split(" (").next().unwrap_or_default()),
    )
}

fn host_json(h: &HostInfo) -> serde_json::Value {
    let drops = h.drops.unwrap_or_default();
    let isolation = h.isolation.as_ref();
    json!({
        "host_id": h.host_id,
        "hostname": h.hostname,
        "isolated": isolation.map(|i| i.isolated),
        "isolation_requester": isolation.map(|i| i.requester.clone()),
        "isolation_reason": isolation.map(|i| i.reason.clone()),
        "isolation_changed_at_unix_ms": isolation.map(|i| i.changed_at_unix_ms),
        "isolation_interfaces": isolation.map(|i| i.interfaces.clone()),
        "control_connected": h.control_connected,
        "silent": h.silent,
        "last_seen_unix_ms": h.last_seen_unix_ms,
        "sensor_version": h.sensor_version,
        "sensor_instance_id": h.sensor_instance_id,
        "kernel_release": h.kernel_release,
        "allowlist_backend": h.allowlist_backend,
        "batches": h.batches,
        "events": h.events,
        "missing_batches": h.missing_batches,
        "kernel_ringbuf_full": drops.kernel_ringbuf_full,
        "userspace_queue_full": drops.userspace_queue_full,
        "userspace_batches_dropped": drops.userspace_batches_dropped,
        "userspace_events_dropped": drops.userspace_events_dropped,
        "malformed_kernel_records": drops.malformed_kernel_records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(isolated: Option<bool>) -> HostInfo {
        HostInfo {
            host_id: "store-1".into(),
            hostname: "kiosk\u{1b}[2J".into(),
            control_connected: true,
            last_seen_unix_ms: 1_000_000,
            isolation: isolated.map(|isolated| IsolationStatus {
                isolated,
                requester: "alice".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn row_shows_isolation_control_and_age_without_escapes() {
        let now = UNIX_EPOCH + Duration::from_millis(1_030_000);
        let row = host_row(&host(Some(true)), now);
        assert!(row.contains("ISOLATED by alice"), "{row}");
        assert!(row.contains(" up "), "{row}");
        assert!(row.contains("30s ago"), "{row}");
        assert!(row.contains(" live "), "{row}");
        let quiet = HostInfo {
            silent: true,
            ..host(Some(false))
        };
        assert!(host_row(&quiet, now).contains(" SILENT "));
        assert_eq!(host_json(&quiet)["silent"], true);
        assert!(!row.contains('\u{1b}'), "{row}");
        assert!(host_row(&host(None), now).contains("unknown"));
        assert!(host_row(&host(Some(false)), now).contains(" no "));
    }

    #[test]
    fn json_has_the_health_fields() {
        let v = host_json(&host(Some(true)));
        assert_eq!(v["isolated"], true);
        assert_eq!(v["isolation_requester"], "alice");
        assert_eq!(v["control_connected"], true);
        assert_eq!(v["kernel_ringbuf_full"], 0);
        assert!(host_json(&host(None))["isolated"].is_null());
    }

    #[test]
    fn missing_token_is_a_clear_error() {
        let access = Access {
            collector: crate::client::DEFAULT_COLLECTOR.into(),
            ca: None,
            server_name: None,
            insecure_plaintext: false,
            token_file: Some(std::path::PathBuf::from("/nonexistent/token")),
        };
        let e = access.token().unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/token"), "{e:#}");
    }
}
