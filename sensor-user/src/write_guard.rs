//! The BPF-LSM write guard's maps: which identities it guards, and whether
//! it is armed. The programs refuse nothing until [`WriteGuard::arm`].

use aya::maps::{Array, HashMap, MapData, MapError};
use sensor_common::FileId;

/// The guard's maps, taken from the loaded object once its programs are
/// attached.
pub struct WriteGuard {
    pub(crate) guarded: HashMap<MapData, FileId, u8>,
    pub(crate) armed: Array<MapData, u32>,
}

impl WriteGuard {
    /// Guards `entries` (identity, `guarded::*` bits) and arms the guard.
    /// On an error nothing is armed.
    pub fn arm(&mut self, entries: &[(FileId, u8)]) -> Result<(), MapError> {
        for (id, bits) in entries {
            self.guarded.insert(id, bits, 0)?;
        }
        self.armed.set(0, 1, 0)
    }
}
