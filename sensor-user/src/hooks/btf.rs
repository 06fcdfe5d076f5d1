//! A minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux) that answers
//! one question: at which byte offset does `struct S` keep field `f`?
//!
//! Enough of the format is parsed to walk struct/union members, including
//! members of anonymous structs and unions (mm_struct keeps its fields in one).
//! aya's own BTF parser does not expose member lookups, and the only crate that
//! does is LGPL; this stays small instead.

use std::{collections::HashMap, path::Path};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("field {strukt}.{field} is a bitfield")]
    Bitfield { strukt: String, field: String },
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
enum Type {
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    /// typedef / const / volatile / restrict / type_tag: refers to another type.
    Alias(u32),
    Other,
}

/// Parsed struct and union layouts of one BTF blob.
pub struct KernelBtf {
    /// Index = type id; id 0 is void.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
    /// Kernel functions BTF describes (kfuncs among them), by name.
    funcs_by_name: HashMap<String, u32>,
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |off: usize| {
            data.get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let u32_at = |off: usize| {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let field = |off| u32_at(off).ok_or(BtfError::Malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let types_start = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let rest = strings.get(off as usize..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };

        let mut types = vec![Type::Other];
        let mut structs_by_name = HashMap::new();
        let mut funcs_by_name = HashMap::new();
        let mut pos = types_start;
        let end = types_start + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let word = |off: usize| u32_at(off).ok_or(BtfError::Malformed("truncated type"));
        while pos < end {
            let name_off = word(pos)?;
            let info = word(pos + 4)?;
            let size_or_type = word(pos + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let id = types.len() as u32;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let offset = word(m + 8)?;
                        members.push(Member {
                            name: name(word(m)?),
                            type_id: word(m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                            bitfield: kind_flag && offset >> 24 != 0,
                        });
                    }
                    pos += vlen * 12;
                    if kind == KIND_STRUCT {
                        let n = name(name_off);
                        if !n.is_empty() {
                            structs_by_name.entry(n).or_insert(id);
                        }
                    }
                    Type::Composite {
                        size: size_or_type,
                        members,
                    }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                other => {
                    if other == KIND_FUNC {
                        funcs_by_name.entry(name(name_off)).or_insert(id);
                    }
                    pos += match other {
                        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                        KIND_ARRAY => 12,
                        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                        2 | 7 | 12 | 16 => 0, // ptr, fwd, func, float
                        unknown => return Err(BtfError::UnknownKind(unknown)),
                    };
                    Type::Other
                }
            };
            types.push(ty);
        }
        Ok(Self {
            types,
            structs_by_name,
            funcs_by_name,
        })
    }

    /// Type id of `struct strukt`.
    pub fn struct_id(&self, strukt: &str) -> Option<u32> {
        self.structs_by_name.get(strukt).copied()
    }

    /// Type id of the kernel function `name` (a kfunc a program may call).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.funcs_by_name.get(name).copied()
    }

    /// Size in bytes of `struct strukt`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        match self.types.get(id as usize) {
            Some(Type::Composite { size, .. }) => Ok(*size),
            _ => Err(BtfError::NoStruct(strukt.to_owned())),
        }
    }

    /// Byte offset of `field` in `struct strukt`, looking through anonymous
    /// struct/union members.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (bits, bitfield) = self.find(id, field, 0).ok_or_else(|| BtfError::NoField {
            strukt: strukt.to_owned(),
            field: field.to_owned(),
        })?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    fn find(&self, id: u32, field: &str, depth: u32) -> Option<(u32, bool)> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members, .. } = self.types.get(self.resolve(id)? as usize)? else {
            return None;
        };
        for m in members {
            if m.name == field {
                return Some((m.bit_offset, m.bitfield));
            }
        }
        members.iter().filter(|m| m.name.is_empty()).find_map(|m| {
            self.find(m.type_id, field, depth + 1)
                .map(|(off, bf)| (m.bit_offset + off, bf))
        })
    }

    /// Follows typedef/const/volatile chains to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                _ => return Some(id),
            }
        }
        None
    }
}
