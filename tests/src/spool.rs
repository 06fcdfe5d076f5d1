//! Reads a sensor's spool directory the way docs/durability.md lays it out,
//! without the sensor's code (and without its lock: read while a sensor
//! writes, a torn last record is an error, i.e. "not yet"). The CRC is not
//! checked here: the sensor's own tests cover it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prost::Message as _;
use proto::telemetry::v1::SensorBatch;

/// One record of a segment file.
pub struct SpoolRecord {
    pub segment: PathBuf,
    /// Where the record starts in its segment, and its length (header and
    /// body).
    pub offset: usize,
    pub len: usize,
    pub batch: SensorBatch,
}

/// The segment files, oldest first.
pub fn segments(spool: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spl"))
        .collect();
    v.sort();
    Ok(v)
}

/// Bytes in segment files.
pub fn spool_bytes(spool: &Path) -> anyhow::Result<u64> {
    Ok(segments(spool)?
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum())
}

/// Every record of the segment at `path`.
pub fn read_segment(path: &Path) -> anyhow::Result<Vec<SpoolRecord>> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(bytes.starts_with(b"RXSPOOL1"), "segment magic");
    let u32_at = |at: usize| -> anyhow::Result<usize> {
        let b = bytes.get(at..at + 4).context("short record")?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let mut records = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        anyhow::ensure!(
            bytes.get(at..at + 4) == Some(b"RXSR"),
            "record magic at {at}"
        );
        let body_len = u32_at(at + 4)?;
        let body = bytes.get(at + 12..at + 12 + body_len).context("torn")?;
        let audit_len = u32_at(at + 12 + 20)?;
        let batch = SensorBatch::decode(body.get(24 + audit_len..).context("audit")?)?;
        records.push(SpoolRecord {
            segment: path.to_owned(),
            offset: at,
            len: 12 + body_len,
            batch,
        });
        at += 12 + body_len;
    }
    Ok(records)
}

/// Every record in the spool now, in order.
pub fn spooled(spool: &Path) -> anyhow::Result<Vec<SpoolRecord>> {
    let mut out = Vec::new();
    for path in segments(spool)? {
        out.extend(read_segment(&path)?);
    }
    Ok(out)
}
