//! `rxsentry-sensor status`: the running daemon's figures for a person at
//! the kiosk, read from its metrics endpoint (`[metrics] listen`), so they
//! are exactly what Prometheus sees (at most 250 ms old).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rxsentry_metrics::{Samples, parse, scrape};
use sensor_user::config::Config;

/// The exit status when no daemon answers (as `systemctl status` for a
/// stopped unit).
pub const NOT_RUNNING: u8 = 3;

/// Prints the status; `Ok(false)` when the daemon is not running.
pub fn run(config: &Config, addr: Option<SocketAddr>, raw: bool) -> anyhow::Result<bool> {
    let addr = match addr {
        Some(addr) => addr,
        None if config.metrics.enabled => config.metrics.listen,
        None => {
            println!(
                "rxsentry-sensor: metrics are off in this config ([metrics] enabled = false), \
                 so the running daemon's figures cannot be read; \
                 `systemctl status rxsentry-sensor` tells whether it runs"
            );
            return Ok(false);
        }
    };
    let page = match scrape(addr, Duration::from_secs(5)) {
        Ok(page) => page,
        Err(e) => {
            println!("rxsentry-sensor is NOT running (or its metrics endpoint is not up): {e}");
            return Ok(false);
        }
    };
    if raw {
        print!("{page}");
        return Ok(true);
    }
    let samples = parse(&page)?;
    print!("{}", render(&samples, now_unix_s()));
    Ok(true)
}

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The page as a person reads it.
fn render(s: &Samples, now: f64) -> String {
    let v = |name: &str| s.get(name, &[]).unwrap_or(0.0) as u64;
    let by =
        |name: &str, label: &str, value: &str| s.get(name, &[(label, value)]).unwrap_or(0.0) as u64;
    let mut out = String::new();
    let info = s.named("rxsentry_sensor_info").next();
    let started = s
        .get("rxsentry_sensor_start_time_seconds", &[])
        .unwrap_or(now);
    let _ = writeln!(
        out,
        "rxsentry-sensor {} running on host {} for {}",
        info.and_then(|i| i.label("version")).unwrap_or("?"),
        info.and_then(|i| i.label("host_id")).unwrap_or("?"),
        duration((now - started).max(0.0) as u64),
    );
    let stage = |stage| by("rxsentry_sensor_batches_total", "stage", stage);
    let _ = writeln!(
        out,
        "collector:   {}; batches sealed {}, sent {}, acked {}",
        if v("rxsentry_sensor_collector_connected") == 1 {
            "connected"
        } else {
            "NOT connected (batches wait in the spool)"
        },
        stage("sealed"),
        stage("sent"),
        stage("acked"),
    );
    let _ = writeln!(
        out,
        "waiting:     {} batches in memory, {} unacknowledged, {} in the spool ({} bytes)",
        v("rxsentry_sensor_upload_queue_batches"),
        v("rxsentry_sensor_inflight_batches"),
        v("rxsentry_sensor_spool_batches"),
        v("rxsentry_sensor_spool_bytes"),
    );
    let kinds: Vec<String> = s
        .named("rxsentry_sensor_events_total")
        .map(|e| format!("{} {}", e.label("kind").unwrap_or("?"), e.value as u64))
        .collect();
    let _ = writeln!(out, "events:      {}", kinds.join(", "));
    let losses = [
        (
            "kernel ring full",
            "rxsentry_sensor_kernel_drops_total",
            "ring",
        ),
        (
            "events lost",
            "rxsentry_sensor_dropped_events_total",
            "stage",
        ),
        (
            "batches lost",
            "rxsentry_sensor_dropped_batches_total",
            "stage",
        ),
    ];
    let mut lost = Vec::new();
    for (what, name, label) in losses {
        for sample in s.named(name).filter(|x| x.value > 0.0) {
            let at = sample.label(label).unwrap_or("?");
            lost.push(format!("{what} ({at}) {}", sample.value as u64));
        }
    }
    for (what, name) in [
        (
            "malformed kernel records",
            "rxsentry_sensor_malformed_kernel_records_total",
        ),
        (
            "corrupt spool records",
            "rxsentry_sensor_spool_corrupt_records_total",
        ),
    ] {
        if v(name) > 0 {
            lost.push(format!("{what} {}", v(name)));
        }
    }
    let _ = writeln!(
        out,
        "losses:      {}",
        if lost.is_empty() {
            "none".to_owned()
        } else {
            lost.join(", ")
        }
    );
    let backends: Vec<String> = s
        .named("rxsentry_sensor_backend_info")
        .map(|b| {
            format!(
                "{} {}",
                b.label("capability").unwrap_or("?"),
                b.label("backend").unwrap_or("?")
            )
        })
        .collect();
    let _ = writeln!(out, "backends:    {}", backends.join(", "));
    let generation = v("rxsentry_sensor_policy_generation");
    let refused = v("rxsentry_sensor_policy_reloads_refused_total");
    let _ = match generation {
        0 => writeln!(out, "allowlist:   no policy configured"),
        g => writeln!(
            out,
            "allowlist:   policy generation {g} in force{}",
            match refused {
                0 => String::new(),
                n => format!(" ({n} reloads REFUSED: see the log)"),
            }
        ),
    };
    let interfaces = v("rxsentry_sensor_isolation_interfaces");
    let _ = match (
        v("rxsentry_sensor_isolation_enabled"),
        v("rxsentry_sensor_isolated"),
    ) {
        (0, _) => writeln!(out, "isolation:   disabled in the config"),
        (_, 1) => writeln!(
            out,
            "isolation:   ISOLATED from the network ({interfaces} interfaces)"
        ),
        _ => writeln!(
            out,
            "isolation:   not isolated (programs on {interfaces} interfaces)"
        ),
    };
    let hits: Vec<String> = s
        .named("rxsentry_sensor_rule_hits_total")
        .map(|h| {
            format!(
                "{} {:?} {}",
                h.label("engine").unwrap_or("?"),
                h.label("rule").unwrap_or("?"),
                h.value as u64
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "detection:   {} alerts{}",
        v("rxsentry_sensor_alerts_total"),
        if hits.is_empty() {
            String::new()
        } else {
            format!("; rule hits: {}", hits.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "yara:        {} scans, {} alerts; not scanned: {} dropped (queue full), {} too large, {} errors",
        v("rxsentry_sensor_yara_scans_total"),
        v("rxsentry_sensor_yara_alerts_total"),
        v("rxsentry_sensor_yara_dropped_total"),
        v("rxsentry_sensor_yara_too_large_total"),
        v("rxsentry_sensor_yara_errors_total"),
    );
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_reads_the_figures() {
        let page = "\
rxsentry_sensor_info{version=\"0.1.0\",host_id=\"kiosk-7\"} 1
rxsentry_sensor_start_time_seconds 1000
rxsentry_sensor_events_total{kind=\"exec\"} 5
rxsentry_sensor_events_total{kind=\"fork\"} 2
rxsentry_sensor_kernel_drops_total{ring=\"file\"} 3
rxsentry_sensor_batches_total{stage=\"acked\"} 4
rxsentry_sensor_collector_connected 1
rxsentry_sensor_spool_batches 2
rxsentry_sensor_backend_info{capability=\"exec_allowlist\",backend=\"lsm\"} 1
rxsentry_sensor_policy_generation 3
rxsentry_sensor_isolation_enabled 1
rxsentry_sensor_isolated 1
rxsentry_sensor_isolation_interfaces 2
rxsentry_sensor_rule_hits_total{engine=\"sigma\",rule=\"Shell under POS\"} 1
";
        let text = render(&parse(page).unwrap(), 1000.0 + 3700.0);
        for want in [
            "host kiosk-7 for 1 h 1 min",
            "connected; batches sealed 0, sent 0, acked 4",
            "2 in the spool",
            "exec 5, fork 2",
            "kernel ring full (file) 3",
            "exec_allowlist lsm",
            "policy generation 3 in force\n",
            "ISOLATED from the network (2 interfaces)",
            "sigma \"Shell under POS\" 1",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
