//! A bad configuration stops start-up with an error that names the key, and
//! nothing is attached to the kernel.

use tests::{sensor_programs_after_exit, sensor_with_config};

async fn refused(text: &str, must_name: &str) -> anyhow::Result<()> {
    let (status, stderr) = sensor_with_config(text).await?;
    assert!(!status.success(), "sensor accepted {text:?}");
    assert!(
        stderr.contains(must_name),
        "error for {text:?} does not name {must_name:?}: {stderr}"
    );
    assert!(
        sensor_programs_after_exit().await?.is_empty(),
        "a refused config left programs attached"
    );
    Ok(())
}

#[tokio::test]
async fn out_of_range_value_names_its_key() -> anyhow::Result<()> {
    refused("[batching]\nmax_events = 0\n", "batching.max_events").await
}

#[tokio::test]
async fn ring_buffer_size_must_be_a_power_of_two() -> anyhow::Result<()> {
    refused(
        "[kernel]\nprocess_ringbuf_bytes = 5000\n",
        "kernel.process_ringbuf_bytes",
    )
    .await
}

#[tokio::test]
async fn unknown_key_is_refused_by_name() -> anyhow::Result<()> {
    refused("[kernel]\nringbuffer_bytes = 4096\n", "ringbuffer_bytes").await
}

#[tokio::test]
async fn syntax_error_is_refused() -> anyhow::Result<()> {
    refused("[collector\nendpoint = 1\n", "TOML parse error").await
}

#[tokio::test]
async fn bad_policy_stops_start_up_by_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n[[allow]]\npath = \"/bin/true\"\nsha256 = \"0\"\n",
    )?;
    refused(
        &format!("[policy]\npath = \"{}\"\n", policy.display()),
        "allow[0].sha256",
    )
    .await
}

/// A scope that names no cgroup v2 directory would enforce nothing: the
/// policy is refused, naming the entry (a plain directory, and one on the
/// cgroup v2 mount point's parent file system).
#[tokio::test]
async fn a_scope_that_is_not_a_cgroup_is_refused_by_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    for scope in [dir.path().to_path_buf(), dir.path().join("missing")] {
        std::fs::write(
            &policy,
            format!(
                "mode = \"enforce\"\nscope_cgroups = [\"{}\"]\n",
                scope.display()
            ),
        )?;
        refused(
            &format!("[policy]\npath = \"{}\"\n", policy.display()),
            "scope_cgroups[0]",
        )
        .await?;
    }
    Ok(())
}

/// A broken Sigma rule file in a rule directory stops start-up, naming the
/// file and what is wrong (a SIGHUP would keep the last good set instead).
#[tokio::test]
async fn a_broken_detection_rule_stops_start_up_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("broken-rule.yml"),
        "title: t\nlogsource: {product: linux, category: process_creation}\n\
         detection:\n  selection:\n    Image: /x\n  condition: selection and filter\n",
    )?;
    let config = format!("[detection]\nrule_dirs = [\"{}\"]\n", dir.path().display());
    refused(&config, "broken-rule.yml").await?;
    refused(&config, "condition names `filter`").await
}
