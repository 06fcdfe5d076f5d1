//! Kernel functions (kfuncs) the programs call. aya 0.14 does not resolve
//! them, so the programs are built with a placeholder id in each call
//! instruction and the loader writes the running kernel's BTF id there,
//! as libbpf does for `__ksym` externs.

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

/// An eBPF object in 8-byte aligned memory (the ELF parser needs it).
pub struct Object {
    words: Vec<u64>,
    len: usize,
}

impl Object {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the `u64`s we own, read as bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` whose `bpf_rdonly_cast` calls carry the kernel's id
/// `rdonly_cast`, and how many calls were patched. Instructions are 8-byte
/// aligned in the ELF, so only aligned words are looked at.
pub fn patch_rdonly_cast(object: &[u8], rdonly_cast: u32) -> (Object, usize) {
    let mut placeholder = [0u8; 8];
    placeholder[..4].copy_from_slice(&KFUNC_CALL_OPCODE);
    placeholder[4..].copy_from_slice(&KFUNC_PLACEHOLDER_RDONLY_CAST.to_le_bytes());
    let mut patched = 0;
    let words = object
        .chunks(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            if word == placeholder {
                word[4..].copy_from_slice(&rdonly_cast.to_le_bytes());
                patched += 1;
            }
            u64::from_ne_bytes(word)
        })
        .collect();
    let object = Object {
        words,
        len: object.len(),
    };
    (object, patched)
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
        let (patched, n) = patch_rdonly_cast(&object, 0x1234);
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
        let (_, n) = patch_rdonly_cast(super::super::EBPF_OBJECT, 1);
        assert!(n >= 4, "{n} kfunc calls in the object");
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
        let ids = TypedReads::resolve(&btf).expect("bpf_rdonly_cast on this kernel");
        assert!(ids.rdonly_cast > 0 && ids.fd_slot > 0);
    }
}
