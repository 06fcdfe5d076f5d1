//! Coalesced opens: the kernel reports the first successful open of a
//! watched file by a process (per operation and flags) in a window and only
//! counts its repeats (`OPEN_REPEATS`, sensor-ebpf `repeated`). This turns
//! each count into one summary event when its window is over.
//!
//! Windows are generations: the daemon moves `OPEN_REPEAT_GEN` on every
//! window and collects the generation before last. A program reads the
//! generation and adds to its entry within one run (microseconds, with
//! preemption off), so nothing still writes an entry a whole window after
//! its generation ended: a count is read once, complete, and never raced.

use std::{
    collections::HashMap as StdHashMap,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, MapError, PerCpuHashMap};
use sensor_common::{
    file::{self, OpenRepeatCount, OpenRepeatKey},
    file_op, names,
};

use crate::events::{FileRecord, Repeats, kernel_dev_to_user};

/// A map operation of the coalescing failed.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {source}")]
pub struct RepeatsError {
    map: &'static str,
    source: MapError,
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> RepeatsError {
    move |source| RepeatsError { map, source }
}

/// The open-coalescing maps, owned by the ring buffer reader.
pub struct RepeatMaps {
    pub(crate) counts: PerCpuHashMap<MapData, OpenRepeatKey, OpenRepeatCount>,
    pub(crate) generation: Array<MapData, u32>,
}

/// A coalesced open, as userspace keys it (the kernel key without its
/// generation; the device in userspace encoding).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct OpenKey {
    tgid: u32,
    device: u64,
    inode: u64,
    flags: u32,
    op: u32,
}

impl OpenKey {
    fn of_record(f: &FileRecord) -> Option<Self> {
        let open = f.op == file_op::OPEN_READ || f.op == file_op::OPEN_WRITE;
        (open && f.result >= 0 && f.inode != 0 && f.repeats.is_none()).then_some(Self {
            tgid: f.task.tgid,
            device: f.device,
            inode: f.inode,
            flags: f.flags,
            op: f.op,
        })
    }

    fn of_kernel(k: &OpenRepeatKey) -> Self {
        Self {
            tgid: k.tgid,
            device: kernel_dev_to_user(k.dev),
            inode: k.ino,
            flags: k.flags,
            op: k.op,
        }
    }
}

/// Turns the kernel's counts of repeated opens into summary events.
pub struct OpenRepeats {
    maps: RepeatMaps,
    /// `None`: coalescing is off (the kernel reports every open).
    window: Option<Duration>,
    generation: u32,
    moved_at: Instant,
    /// The latest open reported in full per coalesced key, with the
    /// generation it was seen in: what a summary repeats.
    reported: StdHashMap<OpenKey, (FileRecord, u32)>,
}

impl OpenRepeats {
    /// Starts coalescing with `window` (zero: off, every open reported).
    pub fn start(mut maps: RepeatMaps, window: Duration) -> Result<Self, RepeatsError> {
        let (window, generation) = if window.is_zero() {
            (None, 0)
        } else {
            (Some(window), 1)
        };
        maps.generation
            .set(0, generation, 0)
            .map_err(map_err(names::OPEN_REPEAT_GEN))?;
        Ok(Self {
            maps,
            window,
            generation,
            moved_at: Instant::now(),
            reported: StdHashMap::new(),
        })
    }

    /// Remembers an open reported in full, for the summary of its repeats.
    pub fn observe(&mut self, f: &FileRecord) {
        if self.window.is_none() {
            return;
        }
        // Bounded like the kernel's map: past that, a summary names its
        // file by identity only (marked partial).
        let room = self.reported.len() < file::OPEN_REPEAT_ENTRIES as usize;
        if let Some(key) = OpenKey::of_record(f)
            && (room || self.reported.contains_key(&key))
        {
            self.reported.insert(key, (f.clone(), self.generation));
        }
    }

    /// Once a window is over: moves the generation and returns the
    /// summaries of the generation before last. With `all` (the hooks are
    /// detached, nothing writes any more), returns every count at once.
    /// Fails only when the generation cannot be moved (nothing collected).
    pub fn collect(&mut self, now: Instant, all: bool) -> Result<Vec<FileRecord>, RepeatsError> {
        let Some(window) = self.window else {
            return Ok(Vec::new());
        };
        if !all {
            if now.duration_since(self.moved_at) < window {
                return Ok(Vec::new());
            }
            self.generation = next_generation(self.generation);
            self.moved_at = now;
            self.maps
                .generation
                .set(0, self.generation, 0)
                .map_err(map_err(names::OPEN_REPEAT_GEN))?;
        }
        let current = self.generation;
        let done: Vec<OpenRepeatKey> = self
            .maps
            .counts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| all || age(current, k.generation) >= 2)
            .collect();
        let mut summaries = Vec::new();
        for key in done {
            // A count that cannot be read stays in the map for the next
            // round; one that was read is reported even if its removal
            // failed: a failure here never drops the summaries already made.
            let per_cpu = match self.maps.counts.get(&key, 0) {
                Ok(per_cpu) => per_cpu,
                Err(e) => {
                    tracing::warn!(error = %map_err(names::OPEN_REPEATS)(e), "repeated opens left for the next window");
                    continue;
                }
            };
            let count = OpenRepeatCount::sum(per_cpu.iter().copied());
            if let Err(e) = self.maps.counts.remove(&key) {
                tracing::warn!(error = %map_err(names::OPEN_REPEATS)(e), "cannot remove a collected count");
            }
            if count.count > 0 {
                summaries.push(self.summary(&key, &count));
            }
        }
        // What no kernel entry can name any more.
        self.reported
            .retain(|_, (_, seen)| !all && age(current, *seen) < 3);
        Ok(summaries)
    }

    /// The summary of `count` repeats: the reported open's fields, or the
    /// key alone when that open never reached the daemon (its loss is
    /// counted where it happened).
    fn summary(&self, key: &OpenRepeatKey, count: &OpenRepeatCount) -> FileRecord {
        let open = OpenKey::of_kernel(key);
        let mut f = match self.reported.get(&open) {
            Some((f, _)) => f.clone(),
            None => {
                let mut f = FileRecord {
                    op: key.op,
                    flags: key.flags,
                    device: open.device,
                    inode: key.ino,
                    partial: true,
                    ..FileRecord::default()
                };
                f.task.tgid = key.tgid;
                f.task.tid = key.tgid;
                f
            }
        };
        f.timestamp_ns = count.last_ns;
        f.result = 0;
        f.repeats = Some(Repeats {
            count: count.count,
            first_ns: count.first_ns,
            last_ns: count.last_ns,
        });
        f
    }
}

/// The generation after `g`; 0 means "off" and is skipped.
fn next_generation(g: u32) -> u32 {
    g.checked_add(1).unwrap_or(1)
}

/// Windows since generation `g`, seen from `current` (wrapping).
fn age(current: u32, g: u32) -> u32 {
    current.wrapping_sub(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::user_dev_to_kernel;

    fn open(tgid: u32, device: u64, result: i64) -> FileRecord {
        let mut f = FileRecord {
            op: file_op::OPEN_READ,
            flags: 0o2000000,
            result,
            device,
            inode: 42,
            ..FileRecord::default()
        };
        f.task.tgid = tgid;
        f
    }

    #[test]
    fn a_kernel_key_names_the_open_it_was_made_for() {
        // st_dev of 259:1 (an NVMe partition), as stat(2) gives it.
        let f = open(7, kernel_dev_to_user((259 << 20) | 1), 3);
        let kernel = OpenRepeatKey {
            tgid: 7,
            dev: user_dev_to_kernel(f.device),
            ino: 42,
            flags: 0o2000000,
            op: file_op::OPEN_READ,
            generation: 9,
            _pad: 0,
        };
        assert_eq!(OpenKey::of_kernel(&kernel), OpenKey::of_record(&f).unwrap());
        let other_process = OpenRepeatKey { tgid: 8, ..kernel };
        assert_ne!(
            OpenKey::of_kernel(&other_process),
            OpenKey::of_record(&f).unwrap()
        );
    }

    #[test]
    fn only_successful_opens_are_coalesced() {
        assert!(OpenKey::of_record(&open(7, 1, 3)).is_some());
        assert!(OpenKey::of_record(&open(7, 1, -13)).is_none(), "refused");
        let mut unlink = open(7, 1, 0);
        unlink.op = file_op::UNLINK;
        assert!(OpenKey::of_record(&unlink).is_none());
        let mut summary = open(7, 1, 0);
        summary.repeats = Some(Repeats::default());
        assert!(
            OpenKey::of_record(&summary).is_none(),
            "a summary is no head"
        );
    }

    #[test]
    fn per_cpu_counts_add_up_and_span_every_cpu() {
        let cpu = |count, first_ns, last_ns| OpenRepeatCount {
            count,
            first_ns,
            last_ns,
        };
        let total = OpenRepeatCount::sum([cpu(5, 100, 900), cpu(0, 0, 0), cpu(7, 50, 400)]);
        assert_eq!(total, cpu(12, 50, 900));
        assert_eq!(OpenRepeatCount::sum([]), cpu(0, 0, 0));
    }

    #[test]
    fn generations_skip_zero_and_age_across_the_wrap() {
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u32::MAX), 1, "0 means off");
        assert_eq!(age(5, 3), 2);
        assert_eq!(age(1, u32::MAX), 2, "across the wrap");
        assert_eq!(age(4, 4), 0);
    }
}
