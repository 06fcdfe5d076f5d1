//! The one loader of the sensor's eBPF object (built from `sensor-ebpf` by
//! build.rs and embedded in every binary of this crate): typed lookups of
//! its programs and maps by the names in `sensor_common::names`, and one
//! error type for them. The daemon's hooks, network isolation and
//! `rxsentry-probe` all load through it.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapError},
    programs::{Program, ProgramError, RawTracePoint, TracePoint},
};

/// The eBPF object built by build.rs (empty when the toolchain was missing).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

/// Why the object, or one of its programs or maps, could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(
        "this sensor was built without its eBPF object (bpf-linker missing at build time); run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
}

/// Whether `dir`, or its nearest existing ancestor, is on a bpf
/// filesystem: pins (what outlives the daemon) need one. The error names
/// the directory that could not be examined.
pub fn on_bpffs(dir: &std::path::Path) -> Result<bool, (std::path::PathBuf, std::io::Error)> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("/"));
    let fs = nix::sys::statfs::statfs(existing).map_err(|e| (existing.to_owned(), e.into()))?;
    Ok(fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// The embedded object's bytes, or why there are none.
pub fn embedded() -> Result<&'static [u8], ObjectError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ObjectError::NoObject);
    }
    Ok(EBPF_OBJECT)
}

/// The loaded object: its maps are created, its programs not yet loaded
/// into the kernel. Dropping it detaches and unloads every program that
/// is not pinned.
pub struct SensorObject {
    ebpf: Ebpf,
}

impl SensorObject {
    /// Loads the embedded object with `loader`'s settings (globals, map
    /// sizes and pins).
    pub fn load(loader: &mut EbpfLoader) -> Result<Self, ObjectError> {
        Self::load_bytes(loader, embedded()?)
    }

    /// Loads `bytes`, a patched copy of the embedded object.
    pub fn load_bytes(loader: &mut EbpfLoader, bytes: &[u8]) -> Result<Self, ObjectError> {
        Ok(Self {
            ebpf: loader.load(bytes)?,
        })
    }

    /// The name of every program in the object, loaded or not.
    pub fn program_names(&self) -> impl Iterator<Item = &str> {
        self.ebpf.programs().map(|(name, _)| name)
    }

    /// aya's object, for what needs it whole (aya-log's reader).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Program `name` as its concrete type.
    pub fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, ObjectError>
    where
        &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(ObjectError::Missing(name))?
            .try_into()
            .map_err(|source| ObjectError::Program { name, source })
    }

    /// Takes map `name` out of the object as a typed map that owns it.
    pub fn take_map<T>(&mut self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = self.ebpf.take_map(name).ok_or(ObjectError::Missing(name))?;
        T::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    /// Map `name`, borrowed as a typed map (it stays in the object).
    pub fn map<'a, T>(&'a self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(ObjectError::Missing(name))?;
        T::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    /// Map `name`, borrowed mutably as a typed map (to fill it).
    pub fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(ObjectError::Missing(name))?;
        T::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    /// Loads program `name` and attaches it to raw tracepoint `tracepoint`.
    pub fn attach_raw_tracepoint(
        &mut self,
        name: &'static str,
        tracepoint: &str,
    ) -> Result<(), ObjectError> {
        let fail = |source| ObjectError::Program { name, source };
        let program: &mut RawTracePoint = self.program(name)?;
        program.load().map_err(fail)?;
        program.attach(tracepoint).map_err(fail)?;
        Ok(())
    }

    /// Loads tracepoint program `name` (once) and returns it, to attach.
    pub fn loaded_tracepoint(
        &mut self,
        name: &'static str,
    ) -> Result<&mut TracePoint, ObjectError> {
        let program: &mut TracePoint = self.program(name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| ObjectError::Program { name, source })?;
        }
        Ok(program)
    }

    /// Loads program `name` and attaches it to tracepoint `category:tracepoint`.
    pub fn attach_tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        tracepoint: &str,
    ) -> Result<(), ObjectError> {
        self.loaded_tracepoint(name)?
            .attach(category, tracepoint)
            .map_err(|source| ObjectError::Program { name, source })?;
        Ok(())
    }
}
