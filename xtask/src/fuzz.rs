//! `cargo xtask fuzz`: the collector's property tests of hostile input
//! (`collector/tests/fuzz.rs`) with many more cases than the test run's
//! 256, bounded by a case count rather than open-ended.

use anyhow::{Result, bail};
use clap::Args;

use crate::cmd::{cargo, describe};

#[derive(Args)]
pub struct Options {
    /// Cases per property (the normal test run uses 256).
    #[arg(long, default_value_t = 20_000)]
    pub cases: u32,
}

pub fn fuzz(opts: &Options) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "collector", "--test", "fuzz"])
        .env("PROPTEST_CASES", opts.cases.to_string());
    println!("== {} (PROPTEST_CASES={})", describe(&cmd), opts.cases);
    let status = cmd.status()?;
    if !status.success() {
        bail!("fuzz properties failed ({status}); proptest printed the minimal input above");
    }
    Ok(())
}
