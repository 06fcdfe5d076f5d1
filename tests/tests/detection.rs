//! Sigma rules in the real sensor: an exec from /tmp (the default pack) and
//! a SOC's own rule from a rule directory alert at a real collector, with
//! the rule's author and ATT&CK ids; the same program elsewhere does not.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use proto::telemetry::v1::EventKind;
use tests::{Collector, Sensor, SensorOptions, Subscription, marker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_from_tmp_and_a_soc_rule_alert_at_the_collector() -> anyhow::Result<()> {
    let marker = marker("sigma-marker");
    // A SOC rule directory with one rule on this test's marker.
    let rules = tempfile::tempdir()?;
    let soc_rule = format!(
        "title: Test marker seen\nid: 0b0e7c1a-0000-4000-8000-000000000001\nauthor: soc-test\n\
         tags: [attack.execution, attack.t1059]\nlevel: low\n\
         logsource: {{product: linux, category: process_creation}}\n\
         detection:\n  selection:\n    CommandLine|contains: '{marker}'\n    Image|startswith: /usr/\n  condition: selection\n"
    );
    std::fs::write(rules.path().join("marker.yml"), soc_rule)?;
    // The payload: a copy of true under /tmp (tempdir's default root).
    let dropped = tempfile::Builder::new()
        .prefix("rxsentry-sigma-")
        .tempdir_in("/tmp")?;
    let payload = dropped.path().join("payload");
    std::fs::copy("/usr/bin/true", &payload)?;
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o755))?;
    let payload = payload.to_str().expect("utf-8 path").to_owned();

    let collector = Collector::start().await?;
    let mut sub =
        Subscription::open_kinds(&collector.url(), &[EventKind::Exec, EventKind::Alert]).await?;
    let options = SensorOptions::with_extra(&format!(
        "[detection]\nrule_dirs = [\"{}\"]\n",
        rules.path().display()
    ));
    let sensor = Sensor::start(&collector, options).await?;

    let mut from_tmp = std::process::Command::new(&payload).arg(&marker).spawn()?;
    let tmp_pid = from_tmp.id();
    assert!(from_tmp.wait()?.success());
    // The look-alike: the same program from /usr/bin, same marker.
    let mut benign = std::process::Command::new("/usr/bin/true")
        .arg(&marker)
        .spawn()?;
    let benign_pid = benign.id();
    assert!(benign.wait()?.success());

    sub.until(Duration::from_secs(20), |s| {
        !s.alerts_on(&payload).is_empty()
            && !s.alerts_on("/usr/bin/true").is_empty()
            && s.execs_with(&marker).len() == 2
    })
    .await?;

    let tmp_alerts = sub.alerts_on(&payload);
    assert_eq!(tmp_alerts.len(), 1, "{tmp_alerts:?}");
    let a = tmp_alerts[0];
    assert_eq!(a.rule_title, "Execution From a World-Writable Directory");
    assert_eq!(a.rule_author, "rxsentry");
    assert_eq!(a.rule_source, "builtin:exec_world_writable.yml");
    assert_eq!(a.level, "high");
    assert!(
        a.attack_ids.iter().any(|t| t == "T1204.002"),
        "{:?}",
        a.attack_ids
    );
    assert_eq!(a.matched_kind(), EventKind::Exec);
    assert_eq!(a.process.as_ref().map(|p| p.pid), Some(tmp_pid));

    // The SOC rule fires on /usr/bin/true only (Image|startswith: /usr/),
    // and the /tmp rule does not fire on it.
    let soc: Vec<_> = sub
        .alerts_on("/usr/bin/true")
        .into_iter()
        .filter(|a| a.process.as_ref().is_some_and(|p| p.pid == benign_pid))
        .collect();
    assert_eq!(soc.len(), 1, "{soc:?}");
    assert_eq!(soc[0].rule_title, "Test marker seen");
    assert_eq!(soc[0].rule_author, "soc-test");
    assert_eq!(soc[0].attack_ids, ["T1059"]);
    assert!(soc[0].rule_source.ends_with("marker.yml"));
    assert!(
        sub.alerts_on(&payload)
            .iter()
            .all(|a| a.rule_title != "Test marker seen"),
        "the SOC rule needs /usr/"
    );

    let status = sensor.stop().await?;
    assert!(status.success(), "sensor exit status: {status}");
    drop(collector);
    Ok(())
}
