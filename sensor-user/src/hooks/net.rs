//! Network hooks: their offsets (syscall record layouts from tracefs,
//! kernel structs from BTF), their settings global, exclusion maps, and the
//! tracepoint attachments.

use std::{collections::HashMap as StdHashMap, os::unix::fs::MetadataExt as _, path::Path};

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use sensor_common::{
    FileId, KernelOffsets, NetSettings, REMOTE_KEY_LEN, REMOTE_KEY_PORT_BITS, names, net_exclude,
};

use super::btf::{BtfError, KernelBtf};
use crate::{
    config::{NetworkConfig, RemotePrefix},
    object::{ObjectError, SensorObject},
};

/// Where tracefs is usually mounted, newest first.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum NetHookError {
    #[error(
        "cannot read tracepoint format {path}: {source} (is tracefs mounted at /sys/kernel/tracing?)"
    )]
    Format {
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    NoField {
        tracepoint: String,
        field: &'static str,
    },
    #[error(
        "tracepoint {tracepoint}: field {field} at offset {got}, expected {want} (syscall records are not laid out as on any known kernel)"
    )]
    Layout {
        tracepoint: String,
        field: &'static str,
        got: u32,
        want: u32,
    },
    #[error(
        "struct sock_common: {first} and {second} are not laid out as the two halves of {pair}"
    )]
    Pair {
        pair: &'static str,
        first: &'static str,
        second: &'static str,
    },
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// Field name -> (offset, size) of one tracepoint record, from its
/// `format` file.
pub struct TraceFormat {
    name: String,
    fields: StdHashMap<String, (u32, u32)>,
}

impl TraceFormat {
    /// Reads `events/<category>/<name>/format` under the mounted tracefs.
    pub fn read(category: &str, name: &str) -> Result<Self, NetHookError> {
        let root = TRACEFS
            .iter()
            .find(|r| Path::new(r).join("events").is_dir())
            .unwrap_or(&TRACEFS[0]);
        let path = format!("{root}/events/{category}/{name}/format");
        let text = std::fs::read_to_string(&path).map_err(|source| NetHookError::Format {
            path: path.clone(),
            source,
        })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines like `field:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;`;
    /// anything else is skipped.
    pub fn parse(name: &str, text: &str) -> Self {
        let mut fields = StdHashMap::new();
        for line in text.lines() {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                continue;
            };
            // The last word of the declaration, without an array suffix.
            let field = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let field = field.split('[').next().unwrap_or_default();
            if !field.is_empty() {
                fields.insert(field.to_owned(), (offset, size));
            }
        }
        Self {
            name: name.to_owned(),
            fields,
        }
    }

    pub fn offset(&self, field: &'static str) -> Result<u32, NetHookError> {
        self.fields
            .get(field)
            .map(|&(offset, _)| offset)
            .ok_or_else(|| NetHookError::NoField {
                tracepoint: self.name.clone(),
                field,
            })
    }

    fn expect(&self, field: &'static str, want: u32) -> Result<(), NetHookError> {
        let got = self.offset(field)?;
        if got != want {
            return Err(NetHookError::Layout {
                tracepoint: self.name.clone(),
                field,
                got,
                want,
            });
        }
        Ok(())
    }
}

/// Sets where syscall arguments start in `sys_enter_*` records (they
/// follow `__syscall_nr` in 8-byte slots) and checks, for each tracepoint,
/// that the arguments its program reads are where the programs index them.
pub fn syscall_args(
    o: &mut KernelOffsets,
    checks: &[(&str, &[&'static str])],
) -> Result<(), NetHookError> {
    for (name, args) in checks {
        let format = TraceFormat::read("syscalls", name)?;
        if o.tp_syscall_arg0 == 0 {
            o.tp_syscall_arg0 = format.offset(args[0])?;
            o.tp_syscall_arg_size = 8;
        }
        for (i, arg) in args.iter().enumerate() {
            format.expect(arg, o.tp_syscall_arg0 + i as u32 * 8)?;
        }
    }
    Ok(())
}

/// Fills the network part of `o`: record layouts from tracefs, struct
/// fields from BTF. Every missing piece is an error that names it.
pub fn resolve_offsets(o: &mut KernelOffsets, btf: &KernelBtf) -> Result<(), NetHookError> {
    syscall_args(
        o,
        &[
            ("sys_enter_connect", &["fd", "uservaddr"][..]),
            (
                "sys_enter_sendto",
                &["fd", "buff", "len", "flags", "addr"][..],
            ),
            ("sys_enter_sendmsg", &["fd", "msg"][..]),
            ("sys_enter_sendmmsg", &["fd", "mmsg"][..]),
        ],
    )?;
    let ret = TraceFormat::read("syscalls", "sys_exit_accept4")?.offset("ret")?;
    TraceFormat::read("syscalls", "sys_exit_accept")?.expect("ret", ret)?;
    o.tp_syscall_ret = ret;

    let f = |s: &str, f: &str| btf.field_offset(s, f);
    o.file_private_data = f("file", "private_data")?;
    o.socket_sk = f("socket", "sk")?;
    o.socket_file = f("socket", "file")?;
    let common = f("sock", "__sk_common")?;
    let c = |field: &str| Ok::<_, BtfError>(common + f("sock_common", field)?);
    o.sk_family = c("skc_family")?;
    o.sk_num = c("skc_num")?;
    o.sk_dport = c("skc_dport")?;
    o.sk_daddr = c("skc_daddr")?;
    o.sk_rcv_saddr = c("skc_rcv_saddr")?;
    o.sk_v6_daddr = c("skc_v6_daddr")?;
    o.sk_v6_rcv_saddr = c("skc_v6_rcv_saddr")?;
    // The programs read both addresses in one go, as the kernel's
    // `skc_addrpair` union lays them out.
    if c("skc_addrpair")? != o.sk_daddr || o.sk_rcv_saddr != o.sk_daddr + 4 {
        return Err(NetHookError::Pair {
            pair: "skc_addrpair",
            first: "skc_daddr",
            second: "skc_rcv_saddr",
        });
    }
    o.inet_sport = f("inet_sock", "inet_sport")?;
    o.sk_protocol = f("sock", "sk_protocol")?;
    o.tcp_bytes_sent = f("tcp_sock", "bytes_sent")?;
    o.tcp_bytes_received = f("tcp_sock", "bytes_received")?;
    o.msghdr_name = f("user_msghdr", "msg_name")?;
    o.kmsghdr_name = f("msghdr", "msg_name")?;
    o.msghdr_namelen = f("user_msghdr", "msg_namelen")?;
    o.msghdr_iov = f("user_msghdr", "msg_iov")?;
    o.mmsghdr_hdr = f("mmsghdr", "msg_hdr")?;
    o.iovec_base = f("iovec", "iov_base")?;
    o.iovec_len = f("iovec", "iov_len")?;
    o.sockaddr_family = f("sockaddr", "sa_family")?;
    o.sin_port = f("sockaddr_in", "sin_port")?;
    o.sin_addr = f("sockaddr_in", "sin_addr")?;
    o.sin6_port = f("sockaddr_in6", "sin6_port")?;
    o.sin6_addr = f("sockaddr_in6", "sin6_addr")?;
    Ok(())
}

/// What the network programs need from config, resolved at start.
#[derive(Clone, Debug, Default)]
pub struct NetHookConfig {
    pub enabled: bool,
    pub dns_ports: Vec<u16>,
    pub udp_window_ns: u64,
    pub exclude_local_ports: Vec<u16>,
    pub exclude_remote: Vec<RemotePrefix>,
    /// Executables found at start, by kernel file identity.
    pub exclude_exes: Vec<FileId>,
}

impl NetHookConfig {
    /// From `[network]`; executables that cannot be found are skipped with
    /// a warning (a missing program has no traffic to hide).
    pub fn from_config(c: &NetworkConfig) -> Self {
        let exclude_exes = c
            .exclude_executables
            .iter()
            .filter_map(|path| match std::fs::metadata(path) {
                Ok(meta) => Some(FileId {
                    dev: crate::events::user_dev_to_kernel(meta.dev()),
                    _pad: 0,
                    ino: meta.ino(),
                }),
                Err(e) => {
                    tracing::warn!(
                        "network.exclude_executables: {}: {e}; not excluded",
                        path.display()
                    );
                    None
                }
            })
            .collect();
        Self {
            enabled: c.enabled,
            dns_ports: c.dns_ports.clone(),
            udp_window_ns: c.udp_dedup_window_ms * 1_000_000,
            exclude_local_ports: c.exclude_local_ports.clone(),
            // Validated with the config.
            exclude_remote: c
                .exclude_remote
                .iter()
                .filter_map(|r| r.prefix().ok())
                .collect(),
            exclude_exes,
        }
    }

    /// The `NET_SETTINGS` global for this config.
    pub fn settings(&self) -> NetSettings {
        let mut exclude = 0;
        for (present, bit) in [
            (!self.exclude_exes.is_empty(), net_exclude::EXE),
            (!self.exclude_remote.is_empty(), net_exclude::REMOTE),
            (
                !self.exclude_local_ports.is_empty(),
                net_exclude::LOCAL_PORT,
            ),
        ] {
            if present {
                exclude |= bit;
            }
        }
        NetSettings {
            enabled: u32::from(self.enabled),
            self_tgid: std::process::id(),
            udp_window_ns: self.udp_window_ns,
            exclude,
            _pad: 0,
        }
    }
}

/// The LPM-trie key of a remote rule.
pub fn remote_key(p: &RemotePrefix) -> Key<[u8; REMOTE_KEY_LEN]> {
    let mut data = [0u8; REMOTE_KEY_LEN];
    data[..2].copy_from_slice(&p.port.to_be_bytes());
    data[4..].copy_from_slice(&p.addr);
    Key::new(REMOTE_KEY_PORT_BITS + p.bits, data)
}

/// Fills the DNS-port and exclusion maps (the loader attaches the
/// programs, `hooks::attach_net_programs`).
pub fn fill_maps(object: &mut SensorObject, c: &NetHookConfig) -> Result<(), ObjectError> {
    let fail = |name| move |source| ObjectError::Map { name, source };
    let mut dns: HashMap<_, u16, u8> = object.map_mut(names::NET_DNS_PORTS)?;
    for port in &c.dns_ports {
        dns.insert(port, 1, 0).map_err(fail(names::NET_DNS_PORTS))?;
    }
    let mut lports: HashMap<_, u16, u32> = object.map_mut(names::NET_EXCLUDE_LPORT)?;
    for (i, port) in c.exclude_local_ports.iter().enumerate() {
        lports
            .insert(port, i as u32, 0)
            .map_err(fail(names::NET_EXCLUDE_LPORT))?;
    }
    let mut exes: HashMap<_, FileId, u32> = object.map_mut(names::NET_EXCLUDE_EXE)?;
    for (i, exe) in c.exclude_exes.iter().enumerate() {
        exes.insert(exe, i as u32, 0)
            .map_err(fail(names::NET_EXCLUDE_EXE))?;
    }
    let mut remote: LpmTrie<_, [u8; REMOTE_KEY_LEN], u32> =
        object.map_mut(names::NET_EXCLUDE_REMOTE)?;
    for (i, rule) in c.exclude_remote.iter().enumerate() {
        remote
            .insert(&remote_key(rule), i as u32, 0)
            .map_err(fail(names::NET_EXCLUDE_REMOTE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_fields_arrays_and_pointers() {
        let f = TraceFormat::parse(
            "sock:x",
            "name: x\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
             \tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;\n\
             garbage line; offset:zz;\n\nprint fmt: \"x\"\n",
        );
        assert_eq!(f.offset("skaddr").unwrap(), 8);
        assert_eq!(f.offset("saddr_v6").unwrap(), 40);
        assert_eq!(f.offset("uservaddr").unwrap(), 24);
        assert_eq!(
            f.offset("nope").unwrap_err().to_string(),
            "tracepoint sock:x has no field nope"
        );
        assert!(matches!(
            f.expect("skaddr", 16),
            Err(NetHookError::Layout { got: 8, .. })
        ));
    }

    /// The running kernel's tracefs and BTF have every field the programs
    /// read, and the ones fixed by ABI sit where the ABI puts them.
    #[test]
    fn resolves_on_this_kernel() {
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
        let mut o = KernelOffsets::default();
        resolve_offsets(&mut o, &btf).expect("network offsets");
        assert_eq!((o.tp_syscall_arg0, o.tp_syscall_arg_size), (16, 8));
        assert_eq!(o.tp_syscall_ret, 16);
        assert_eq!(
            (o.sin_port, o.sin_addr, o.sin6_port, o.sin6_addr),
            (2, 4, 2, 8)
        );
        assert_eq!(o.sockaddr_family, 0);
        assert_eq!(o.tcp_bytes_received % 8, 0);
        assert_ne!(o.sk_v6_daddr, o.sk_v6_rcv_saddr);
        assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4, "skc_addrpair halves");
        assert_ne!(o.inet_sport, 0);
    }

    #[test]
    fn remote_keys_put_the_port_first() {
        let p = RemotePrefix {
            addr: std::net::Ipv4Addr::new(10, 0, 0, 0)
                .to_ipv6_mapped()
                .octets(),
            bits: 104,
            port: 443,
        };
        let k = remote_key(&p);
        assert_eq!(k.prefix_len(), 32 + 104);
        assert_eq!(&k.data()[..4], &[1, 187, 0, 0]);
        assert_eq!(k.data()[14..], [0xff, 0xff, 10, 0, 0, 0]);
    }
}
