//! What the CLI tests share.

/// Stdout lines of a finished CLI run, which must have succeeded (its
/// stderr is in the failure message).
pub fn success_lines(out: std::process::Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}
