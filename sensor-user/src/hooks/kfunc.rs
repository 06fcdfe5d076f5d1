//! Kernel functions (kfuncs) the programs call. aya 0.14 does not resolve
//! them, so the programs are built with a placeholder id in each call
//! instruction and the loader writes the running kernel's BTF id there,
//! as libbpf does for `__ksym` externs.

use std::{ffi::c_void, num::NonZeroUsize, ptr::NonNull};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use object::{Object as _, ObjectSection as _};
use sensor_common::KFUNC_PLACEHOLDER_RDONLY_CAST;

use super::btf::KernelBtf;

/// `call` with `src_reg` = `BPF_PSEUDO_KFUNC_CALL`, `dst_reg` 0, `off` 0.
const KFUNC_CALL_OPCODE: [u8; 4] = [0x85, 0x20, 0x00, 0x00];

/// What the typed open programs need from the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypedReads {
    /// BTF id of the `bpf_rdonly_cast` kfunc.
    pub rdonly_cast: u32,
    /// BTF id of the struct a slot of the fd table is cast to: one whose
    /// first field is a `struct file *`.
    pub fd_slot: u32,
}

/// The struct the programs read an fd table slot as, and its field at
/// offset 0: `struct kiocb` has begun with `struct file *ki_filp` since
/// Linux 2.6; checked, not assumed.
const FD_SLOT_STRUCT: (&str, &str) = ("kiocb", "ki_filp");

impl TypedReads {
    /// The ids, when this kernel has `bpf_rdonly_cast` (Linux 6.2+) and a
    /// slot struct as the programs expect it.
    pub fn resolve(btf: &KernelBtf) -> Option<Self> {
        let (strukt, field) = FD_SLOT_STRUCT;
        (btf.field_offset(strukt, field).ok()? == 0).then_some(())?;
        Some(Self {
            rdonly_cast: btf.func_id("bpf_rdonly_cast")?,
            fd_slot: btf.struct_id(strukt)?,
        })
    }
}

/// A patched copy of the eBPF object in its own anonymous mapping: page
/// aligned (the ELF parser needs 8), and given back to the kernel when
/// dropped. A heap copy of these ~5 MB stayed in the daemon's RSS (+5-7
/// MiB measured) after the load. The DWARF sections (`.debug_*`, half the
/// object; the loader reads the BTF made from them at link time, never
/// them) are left as untouched zero pages, so neither the copy nor the
/// binary's pages it was read from become resident for them. (Their
/// relocation sections are copied: the ELF parser reads those.)
pub struct Object {
    ptr: NonNull<c_void>,
    len: NonZeroUsize,
}

impl Object {
    fn copy_of(bytes: &[u8]) -> nix::Result<Self> {
        let len = NonZeroUsize::new(bytes.len()).ok_or(nix::Error::EINVAL)?;
        // SAFETY: a fresh private mapping, no address requested.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }?;
        let mut object = Self { ptr, len };
        let copy = object.bytes_mut();
        let mut from = 0;
        for skip in debug_sections(bytes) {
            copy[from..skip.start].copy_from_slice(&bytes[from..skip.start]);
            from = skip.end;
        }
        copy[from..].copy_from_slice(&bytes[from..]);
        Ok(object)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: our mapping of `len` readable bytes, alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len.get()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and writable; `&mut self` makes it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.len.get()) }
    }
}

/// File ranges of the DWARF sections of an ELF object, in order, never
/// overlapping (empty when it does not parse: then all is copied).
fn debug_sections(elf: &[u8]) -> Vec<std::ops::Range<usize>> {
    let Ok(file) = object::File::parse(elf) else {
        return Vec::new();
    };
    let mut ranges: Vec<_> = file
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".debug_")))
        .filter_map(|s| s.file_range())
        .filter_map(|(start, size)| {
            let start = usize::try_from(start).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            (end <= elf.len()).then_some(start..end)
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut from = 0;
    ranges.retain(|r| {
        let keep = r.start >= from;
        from = from.max(r.end);
        keep
    });
    ranges
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `copy_of`, unmapped once.
        let _ = unsafe { munmap(self.ptr, self.len.get()) };
    }
}

/// A copy of `object` whose `bpf_rdonly_cast` calls carry the kernel's id
/// `rdonly_cast`, and how many calls were patched. Instructions are 8-byte
/// aligned in the ELF, so only aligned words are looked at.
pub fn patch_rdonly_cast(object: &[u8], rdonly_cast: u32) -> nix::Result<(Object, usize)> {
    let mut placeholder = [0u8; 8];
    placeholder[..4].copy_from_slice(&KFUNC_CALL_OPCODE);
    placeholder[4..].copy_from_slice(&KFUNC_PLACEHOLDER_RDONLY_CAST.to_le_bytes());
    let mut copy = Object::copy_of(object)?;
    let mut patched = 0;
    for word in copy.bytes_mut().chunks_exact_mut(8) {
        if *word == placeholder {
            word[4..].copy_from_slice(&rdonly_cast.to_le_bytes());
            patched += 1;
        }
    }
    Ok((copy, patched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(imm: u32) -> Vec<u8> {
        let mut insn = KFUNC_CALL_OPCODE.to_vec();
        insn.extend_from_slice(&imm.to_le_bytes());
        insn
    }

    #[test]
    fn only_aligned_placeholder_calls_are_patched() {
        let mut object = vec![0xaa; 8];
        object.extend(call(KFUNC_PLACEHOLDER_RDONLY_CAST));
        object.extend(call(7)); // another kfunc: left alone
        object.extend([0u8; 4]);
        object.extend(call(KFUNC_PLACEHOLDER_RDONLY_CAST)); // misaligned
        object.extend([1, 2, 3]); // a short tail is kept
        let (patched, n) = patch_rdonly_cast(&object, 0x1234).expect("mapping");
        assert_eq!(n, 1);
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), object.len());
        assert_eq!(&bytes[8..16], call(0x1234).as_slice());
        assert_eq!(&bytes[16..], &object[16..]);
        assert_eq!(bytes.as_ptr() as usize % 8, 0);
    }

    /// The object built with this sensor calls the kfunc from the typed open
    /// programs, and this kernel (6.18) has it.
    #[test]
    fn the_built_object_and_this_kernel_have_the_cast() {
        let object = crate::object::EBPF_OBJECT;
        let (copy, n) = patch_rdonly_cast(object, 1).expect("mapping");
        assert!(n >= 4, "{n} kfunc calls in the object");
        let debug = debug_sections(object);
        let skipped: usize = debug.iter().map(|r| r.len()).sum();
        assert!(
            skipped > object.len() / 3,
            "DWARF: {skipped} of {} bytes",
            object.len()
        );
        assert!(
            debug
                .iter()
                .all(|r| copy.bytes()[r.clone()].iter().all(|&b| b == 0))
        );
        let btf = object::File::parse(copy.bytes())
            .expect("the copy parses")
            .section_by_name(".BTF")
            .expect(".BTF kept")
            .data()
            .expect("BTF data")
            .to_vec();
        assert!(btf.starts_with(&[0x9f, 0xeb]), "BTF magic");
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
        let ids = TypedReads::resolve(&btf).expect("bpf_rdonly_cast on this kernel");
        assert!(ids.rdonly_cast > 0 && ids.fd_slot > 0);
    }
}
