//! Writes a compiled policy into the kernel's maps as one atomic swap.
//!
//! Two allowlist maps alternate: the new generation is written completely
//! into the one the kernel is not reading, then `POLICY_STATE` (one array
//! element) is updated to point at it, then the old one is emptied. At no
//! instant is there no policy, or half of one.
//!
//! The maps are pinned (`pins`): a starting sensor adopts the state an
//! earlier one left, and its first swap goes into the map the kernel is not
//! reading, exactly as a reload would.

use aya::maps::{Array, HashMap, MapData};
use sensor_common::{AllowEntry, DenyParentKey, DenyUidKey, FileId, PolicyState, mode};

use super::{
    compile::CompiledPolicy,
    file::{Mode, PolicyError},
};

/// The verdict maps, owned by the policy task.
pub struct PolicyMaps {
    pub(crate) allow: [HashMap<MapData, FileId, AllowEntry>; 2],
    pub(crate) deny_parent: [HashMap<MapData, DenyParentKey, u32>; 2],
    pub(crate) deny_uid: [HashMap<MapData, DenyUidKey, u32>; 2],
    pub(crate) state: Array<MapData, PolicyState>,
    pub(crate) scope: HashMap<MapData, u64, u8>,
    /// Capacity of each allowlist map.
    pub(crate) capacity: u32,
    current: PolicyState,
}

impl PolicyMaps {
    /// The maps, with the state now in them (an earlier sensor's, when
    /// they are pinned) as the current one.
    pub(crate) fn new(
        allow: [HashMap<MapData, FileId, AllowEntry>; 2],
        deny_parent: [HashMap<MapData, DenyParentKey, u32>; 2],
        deny_uid: [HashMap<MapData, DenyUidKey, u32>; 2],
        state: Array<MapData, PolicyState>,
        scope: HashMap<MapData, u64, u8>,
        capacity: u32,
    ) -> Result<Self, aya::maps::MapError> {
        let mut current = state.get(&0, 0)?;
        // Anything but 0 or 1 is not ours: start over from A.
        current.active = current.active.min(1);
        Ok(Self {
            allow,
            deny_parent,
            deny_uid,
            state,
            scope,
            capacity,
            current,
        })
    }

    /// The state in force when these maps were opened or last written.
    pub fn current(&self) -> PolicyState {
        self.current
    }

    /// Generation now in force (0: none).
    pub fn generation(&self) -> u64 {
        self.current.generation
    }

    /// Swaps `policy` in. On error the previous generation stays in force.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        origin: &std::path::Path,
    ) -> Result<u64, PolicyError> {
        if policy.entries.len() > self.capacity as usize {
            return Err(PolicyError::TooLarge {
                path: origin.to_owned(),
                entries: policy.entries.len(),
                max: self.capacity,
            });
        }
        let next = 1 - self.current.active as usize;
        clear(&mut self.allow[next])?;
        clear(&mut self.deny_parent[next])?;
        clear(&mut self.deny_uid[next])?;
        for (id, entry) in &policy.entries {
            self.allow[next].insert(id, entry, 0)?;
        }
        for (key, rule) in &policy.deny_parent {
            self.deny_parent[next].insert(key, rule, 0)?;
        }
        for (key, rule) in &policy.deny_uid {
            self.deny_uid[next].insert(key, rule, 0)?;
        }
        // Scope ids: add the new ones before the swap, drop stale ones after.
        for id in &policy.scope {
            self.scope.insert(id, 1, 0)?;
        }
        let state = PolicyState {
            active: next as u32,
            mode: match policy.mode {
                Mode::Monitor => mode::MONITOR,
                Mode::Enforce => mode::ENFORCE,
            },
            generation: self.current.generation + 1,
            scoped: u32::from(!policy.scope.is_empty()),
            _pad: 0,
        };
        self.state.set(0, state, 0)?;
        self.current = state;
        let stale: Vec<u64> = self
            .scope
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !policy.scope.contains(id))
            .collect();
        for id in stale {
            let _ = self.scope.remove(&id);
        }
        clear(&mut self.allow[1 - next])?;
        clear(&mut self.deny_parent[1 - next])?;
        clear(&mut self.deny_uid[1 - next])?;
        Ok(state.generation)
    }

    /// Replaces one entry of the live map (re-trust after a re-hash).
    pub fn update_live(&mut self, id: FileId, entry: AllowEntry) -> Result<(), PolicyError> {
        self.allow[self.current.active as usize].insert(id, entry, 0)?;
        Ok(())
    }
}

fn clear<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>) -> Result<(), PolicyError> {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        map.remove(&key)?;
    }
    Ok(())
}
