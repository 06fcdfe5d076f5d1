//! Keeps the kernel's filter maps equal to a [`CompiledWatches`].
//!
//! New entries go in before stale ones come out, so a refresh never opens a
//! window in which a path that stays watched is unwatched.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData};
use sensor_common::{FileId, FileSettings, WatchEntry, file, names};

use super::{CompiledWatches, WatchError};

/// The file programs' maps, owned by the watch manager.
pub struct WatchMaps {
    pub(crate) watched: HashMap<MapData, FileId, WatchEntry>,
    pub(crate) prefixes: HashMap<MapData, u64, WatchEntry>,
    pub(crate) excluded_exes: HashMap<MapData, FileId, u8>,
    pub(crate) settings: Array<MapData, FileSettings>,
    /// The kernel's filter of `watched` inode numbers, and what it holds.
    pub(crate) ino_bits: Array<MapData, u64>,
    pub(crate) ino_words: Vec<u64>,
    /// Last `FileSettings::generation` written.
    pub(crate) generation: u32,
    /// Watched files by identity, and the kernel's filter of their inode
    /// numbers (the kernel adds bits too: never cleared, read back first).
    pub(crate) inodes: HashMap<MapData, FileId, WatchEntry>,
    pub(crate) inode_bits: Array<MapData, u64>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> WatchError {
    move |source| WatchError::Map { map, source }
}

impl WatchMaps {
    /// Makes the maps hold exactly `c`, then turns the programs on.
    pub fn apply(&mut self, c: &CompiledWatches) -> Result<(), WatchError> {
        for (map, needed, capacity) in [
            (names::WATCHED, c.watched.len(), file::WATCH_ENTRIES),
            (
                names::WATCH_PREFIXES,
                c.prefixes.len(),
                file::WATCH_PREFIX_ENTRIES,
            ),
            (
                names::WATCH_EXCLUDED_EXES,
                c.excluded_exes.len(),
                file::EXCLUDED_EXE_ENTRIES,
            ),
        ] {
            if needed > capacity as usize {
                return Err(WatchError::TooLarge {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        let watched: Vec<(FileId, WatchEntry)> = c
            .watched
            .iter()
            .map(|(&(dev, ino), entry)| (FileId { dev, _pad: 0, ino }, *entry))
            .collect();
        let exes: Vec<(FileId, u8)> = c.excluded_exes.iter().map(|id| (*id, 1)).collect();
        let prefixes: Vec<(u64, WatchEntry)> = c.prefixes.iter().map(|(k, v)| (*k, *v)).collect();
        // The filter must cover every key the map holds at any moment: the
        // old and new keys together while the map changes, then the new.
        let wanted = ino_words(watched.iter().map(|(id, _)| id.ino));
        let both: Vec<u64> = wanted
            .iter()
            .zip(&self.ino_words)
            .map(|(new, old)| new | old)
            .collect();
        self.write_ino_words(&both)?;
        sync(&mut self.watched, &watched).map_err(map_err(names::WATCHED))?;
        self.write_ino_words(&wanted)?;
        sync(&mut self.prefixes, &prefixes).map_err(map_err(names::WATCH_PREFIXES))?;
        sync(&mut self.excluded_exes, &exes).map_err(map_err(names::WATCH_EXCLUDED_EXES))?;
        self.generation = self.generation.wrapping_add(1);
        let settings = FileSettings {
            enabled: 1,
            self_tgid: std::process::id(),
            generation: self.generation,
            excluded_exes: exes.len() as u32,
        };
        self.settings
            .set(0, settings, 0)
            .map_err(map_err(names::FILE_SETTINGS))
    }

    /// Writes the filter words that differ from what the kernel holds.
    fn write_ino_words(&mut self, words: &[u64]) -> Result<(), WatchError> {
        for (index, (&word, held)) in words.iter().zip(self.ino_words.iter_mut()).enumerate() {
            if word != *held {
                self.ino_bits
                    .set(index as u32, word, 0)
                    .map_err(map_err(names::WATCHED_INO_BITS))?;
                *held = word;
            }
        }
        Ok(())
    }

    /// Makes `WATCHED_INODES` hold the files of a scan (plus what the kernel
    /// added meanwhile that the scan also found); the filter gets their bits.
    /// Returns the files the map refused (full: counted, not silent).
    pub fn apply_identities(
        &mut self,
        files: &std::collections::HashMap<FileId, WatchEntry>,
    ) -> Result<u64, WatchError> {
        self.add_bits(files.keys())?;
        let refused = self.insert_identities(files)?;
        let stale: Vec<FileId> = self
            .inodes
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !files.contains_key(id))
            .collect();
        for id in stale {
            match self.inodes.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err(names::WATCHED_INODES)(source)),
            }
        }
        Ok(refused)
    }

    /// Adds files renamed or linked into the watched set; returns how many
    /// the map refused.
    pub fn add_identities(
        &mut self,
        files: &std::collections::HashMap<FileId, WatchEntry>,
    ) -> Result<u64, WatchError> {
        self.add_bits(files.keys())?;
        self.insert_identities(files)
    }

    fn insert_identities(
        &mut self,
        files: &std::collections::HashMap<FileId, WatchEntry>,
    ) -> Result<u64, WatchError> {
        let mut refused = 0;
        for (id, entry) in files {
            match self.inodes.insert(id, entry, 0) {
                Ok(()) => {}
                // E2BIG: the map is full.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(7) =>
                {
                    refused += 1
                }
                Err(source) => return Err(map_err(names::WATCHED_INODES)(source)),
            }
        }
        Ok(refused)
    }

    /// ORs the bits of `ids` into the kernel's filter words (read back: the
    /// kernel sets bits of the files it adds).
    fn add_bits<'a>(&mut self, ids: impl Iterator<Item = &'a FileId>) -> Result<(), WatchError> {
        let mut words: BTreeMap<u32, u64> = BTreeMap::new();
        for id in ids {
            let (word, bit) = file::inode_bit(id.ino);
            *words.entry(word).or_default() |= bit;
        }
        for (index, bits) in words {
            let held = self
                .inode_bits
                .get(&index, 0)
                .map_err(map_err(names::WATCHED_INODE_BITS))?;
            if held | bits != held {
                self.inode_bits
                    .set(index, held | bits, 0)
                    .map_err(map_err(names::WATCHED_INODE_BITS))?;
            }
        }
        Ok(())
    }

    /// Turns the file programs off (they then return at once).
    pub fn disable(&mut self) -> Result<(), WatchError> {
        self.settings
            .set(0, FileSettings::default(), 0)
            .map_err(map_err(names::FILE_SETTINGS))
    }
}

/// The `WATCHED_INO_BITS` words that stand for `inos`.
fn ino_words(inos: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut words = vec![0; file::WATCHED_INO_WORDS as usize];
    for ino in inos {
        let (word, bit) = file::ino_bit(ino);
        words[word as usize] |= bit;
    }
    words
}

/// Inserts every wanted pair, then removes keys no longer wanted.
fn sync<K, V>(
    map: &mut HashMap<MapData, K, V>,
    wanted: &[(K, V)],
) -> Result<(), aya::maps::MapError>
where
    K: aya::Pod + PartialEq,
    V: aya::Pod,
{
    for (key, value) in wanted {
        map.insert(key, value, 0)?;
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.iter().any(|(k, _)| k == key))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(())
}
