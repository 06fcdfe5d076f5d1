//! `rxsentry audit verify | show`: the collector's audit log, read from
//! its directory (on the collector's machine, or a copy). The checking is
//! the `audit` crate's, the same the collector runs at start.

use std::path::PathBuf;

use ::audit::{ArgValue, Chain, Located, Record, VerifyError, parse_utc_ms, read_chain};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the whole chain; exit 1 naming the first broken record.
    Verify(VerifyArgs),
    /// Print the records (those before a break, then the break).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The audit directory (the collector's --audit-dir).
    #[arg(default_value = ::audit::DEFAULT_DIR)]
    dir: PathBuf,
    /// A head exported earlier (`SEQ:SHA256`, as `verify` prints it and the
    /// collector logs it): that record must still be in the chain with
    /// that hash. Catches a chain truncated or rebuilt since. Repeatable.
    #[arg(long, value_name = "SEQ:SHA256", value_parser = parse_anchor)]
    anchor: Vec<(u64, String)>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The audit directory (the collector's --audit-dir).
    #[arg(default_value = ::audit::DEFAULT_DIR)]
    dir: PathBuf,
    /// Only records at or after this UTC time: YYYY-MM-DD[THH:MM[:SS[.mmm]]][Z].
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Each record as stored (one JSON object per line, with its hash).
    #[arg(long)]
    json: bool,
}

fn parse_anchor(text: &str) -> Result<(u64, String), String> {
    let bad = || format!("{text:?} is not SEQ:SHA256 (a record number, a colon, 64 hex digits)");
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((seq, hash))
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Show(args) => show(args),
    }
}

/// The chain in `dir`, `visit`ing each good record; a break is an error
/// naming it (after whatever `visit` did with the records before it).
fn read(dir: &std::path::Path, visit: impl FnMut(&Located)) -> anyhow::Result<Chain> {
    let chain = read_chain(dir, visit)?;
    match chain.broken.clone() {
        Some(brk) => Err(VerifyError::Broken {
            dir: dir.to_owned(),
            brk,
        })
        .with_context(|| format!("{} records verified before the break", chain.records)),
        None => Ok(chain),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut found: Vec<Option<String>> = vec![None; args.anchor.len()];
    let chain = read(&args.dir, |l| {
        for (i, (seq, _)) in args.anchor.iter().enumerate() {
            if l.record.seq == *seq {
                found[i] = Some(::audit::hex(&l.hash));
            }
        }
    })?;
    println!(
        "{}: {} records in {} files, chain intact",
        args.dir.display(),
        chain.records,
        chain.files.len()
    );
    println!("{}", chain.head_line());
    for ((seq, want), got) in args.anchor.iter().zip(found) {
        match got {
            Some(got) if &got == want => println!("anchor record {seq}: matches"),
            Some(got) => bail!(
                "anchor record {seq}: the chain has sha256 {got}, the exported head was {want}: the log was rebuilt from there on"
            ),
            None => bail!(
                "anchor record {seq}: not in the log, which ends at record {}: records were cut off the end",
                chain.head.map_or(0, |h| h.0)
            ),
        }
    }
    Ok(())
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let since = match &args.since {
        Some(text) => Some(parse_utc_ms(text).with_context(|| {
            format!("--since {text:?}: expected YYYY-MM-DD[THH:MM[:SS[.mmm]]][Z] (UTC)")
        })?),
        None => None,
    };
    let mut printed = 0u64;
    read(&args.dir, |l| {
        if since.is_some_and(|s| parse_utc_ms(&l.record.time).is_some_and(|t| t < s)) {
            return;
        }
        printed += 1;
        if args.json {
            // The stored line itself: the encoding is canonical.
            if let Ok((line, _)) = l.record.encode() {
                print!("{}", String::from_utf8_lossy(&line));
            }
        } else {
            println!("{}", row(l.record));
        }
    })?;
    if printed == 0 && !args.json {
        eprintln!("no records");
    }
    Ok(())
}

/// One record for a person: time, seq, operator, action, host, outcome,
/// arguments, detail. No control characters reach the terminal.
fn row(r: &Record) -> String {
    let e = &r.entry;
    let args: Vec<String> = e
        .args
        .iter()
        .map(|(k, v)| match v {
            ArgValue::One(s) => format!("{k}={s:?}"),
            ArgValue::Many(items) => format!("{k}=[{}]", items.join(",")),
        })
        .collect();
    let mut text = format!(
        "{} #{:<6} {:<12} {:<11} {:<20} {:<9} {}",
        r.time,
        r.seq,
        e.operator.as_deref().unwrap_or("-"),
        e.action,
        e.host.as_deref().unwrap_or("-"),
        e.outcome.as_str().to_uppercase(),
        args.join(" ")
    );
    if let Some(peer) = &e.peer {
        text.push_str(&format!(" from {peer}"));
    }
    if !e.detail.is_empty() {
        text.push_str(&format!(" ({})", e.detail));
    }
    text.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::audit::{Entry, Outcome};

    #[test]
    fn anchors_parse_or_say_why() {
        let h = "ab".repeat(32);
        assert_eq!(parse_anchor(&format!("7:{h}")), Ok((7, h.clone())));
        assert_eq!(
            parse_anchor(&format!("7:{}", h.to_uppercase())),
            Ok((7, h.clone()))
        );
        for bad in ["7", "x:ab", "7:abc", &format!("-1:{h}")] {
            assert!(
                parse_anchor(bad).unwrap_err().contains("SEQ:SHA256"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_row_names_who_did_what_without_escapes() {
        let mut e = Entry::new("isolate", Outcome::Refused);
        e.host = Some("kiosk\u{1b}[2J".into());
        e.args.insert("reason".into(), ArgValue::One("x".into()));
        e.detail = "operator token not recognised".into();
        let r = Record::new(3, "2026-11-24T12:00:00.000Z".into(), &::audit::GENESIS, e);
        let row = row(&r);
        assert!(row.starts_with("2026-11-24T12:00:00.000Z #3 "), "{row}");
        assert!(row.contains(" - ") && row.contains("REFUSED"), "{row}");
        assert!(row.contains("reason=\"x\""), "{row}");
        assert!(row.contains("(operator token not recognised)"), "{row}");
        assert!(!row.contains('\u{1b}'), "{row}");
    }
}
