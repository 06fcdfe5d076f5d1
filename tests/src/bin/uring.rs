//! `uring`: what a process can do without the syscalls the sensor's
//! tracepoints see, for the tests that prove it is seen anyway (the kiosk
//! guest has no python to make these calls).
//!
//! ```text
//! uring read PATH [--worker]          open (IORING_OP_OPENAT) and read PATH through
//!                                     io_uring; prints "read <bytes>"
//! uring sendmsg ADDR PORT [--worker]  one UDP datagram to ADDR:PORT from an
//!                                     unconnected socket (IORING_OP_SENDMSG)
//! uring send ADDR PORT [--worker]     connect a UDP socket to ADDR:PORT
//!                                     (IORING_OP_CONNECT), then one datagram (IORING_OP_SEND)
//! uring handle PATH                   name_to_handle_at, then open_by_handle_at and
//!                                     read: an open without a path lookup; prints "read <bytes>"
//! ```
//!
//! `--worker` hands each request to io_uring's worker threads
//! (`IOSQE_ASYNC`) instead of running it inline in `io_uring_enter`: the
//! sensor must see both. Exit status 0 when every step succeeded.

use std::{
    ffi::CString,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
};

use io_uring::{IoUring, opcode, squeue, types};
use socket2::SockAddr;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let worker = args.iter().any(|a| a == "--worker");
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let dest = || -> Result<SocketAddr, String> {
        let addr: IpAddr = arg(1).parse().map_err(|e| format!("ADDR: {e}"))?;
        let port: u16 = arg(2).parse().map_err(|e| format!("PORT: {e}"))?;
        Ok(SocketAddr::new(addr, port))
    };
    let result = match arg(0) {
        "read" => read(arg(1), worker),
        "sendmsg" => dest().and_then(|to| sendmsg(to, worker)),
        "send" => dest().and_then(|to| send(to, worker)),
        "handle" => by_handle(arg(1)),
        other => Err(format!(
            "unknown command {other:?} (read, sendmsg, send, handle)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request through a fresh ring: its result (>= 0), or the error.
fn submit(ring: &mut IoUring, entry: squeue::Entry, worker: bool) -> Result<i32, String> {
    let entry = if worker {
        entry.flags(squeue::Flags::ASYNC)
    } else {
        entry
    };
    // SAFETY: every buffer the entry points to outlives the wait below.
    unsafe { ring.submission().push(&entry) }.map_err(|e| format!("queue full: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe = ring.completion().next().ok_or("no completion")?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()).to_string());
    }
    Ok(cqe.result())
}

fn ring() -> Result<IoUring, String> {
    IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))
}

fn read(path: &str, worker: bool) -> Result<(), String> {
    let mut ring = ring()?;
    let name = CString::new(path).map_err(|e| e.to_string())?;
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), name.as_ptr())
        .flags(libc::O_RDONLY | libc::O_CLOEXEC)
        .build();
    let fd = submit(&mut ring, open, worker).map_err(|e| format!("openat {path}: {e}"))?;
    // SAFETY: the ring just opened this descriptor for us.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = [0u8; 4096];
    let read = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), 4096).build();
    let n = submit(&mut ring, read, worker).map_err(|e| format!("read {path}: {e}"))?;
    println!("read {n}");
    Ok(())
}

/// A UDP socket of `to`'s family, bound to any local port.
fn udp_for(to: SocketAddr) -> Result<UdpSocket, String> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))
}

const PAYLOAD: &[u8] = b"rxsentry io_uring datagram";

fn sendmsg(to: SocketAddr, worker: bool) -> Result<(), String> {
    let mut ring = ring()?;
    let socket = udp_for(to)?;
    let name = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut _,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the fields that matter are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = name.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let entry = opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), &msg).build();
    submit(&mut ring, entry, worker).map_err(|e| format!("sendmsg to {to}: {e}"))?;
    Ok(())
}

fn send(to: SocketAddr, worker: bool) -> Result<(), String> {
    let mut ring = ring()?;
    let socket = udp_for(to)?;
    let name = SockAddr::from(to);
    let connect = opcode::Connect::new(
        types::Fd(socket.as_raw_fd()),
        name.as_ptr().cast(),
        name.len(),
    )
    .build();
    submit(&mut ring, connect, worker).map_err(|e| format!("connect to {to}: {e}"))?;
    let entry = opcode::Send::new(
        types::Fd(socket.as_raw_fd()),
        PAYLOAD.as_ptr(),
        PAYLOAD.len() as u32,
    )
    .build();
    submit(&mut ring, entry, worker).map_err(|e| format!("send to {to}: {e}"))?;
    Ok(())
}

/// `struct file_handle` with room for any filesystem's handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

fn by_handle(path: &str) -> Result<(), String> {
    let name = CString::new(path).map_err(|e| e.to_string())?;
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the handle has room for `handle_bytes`; mount_id is an int.
    let named = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            name.as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if named != 0 {
        return Err(format!(
            "name_to_handle_at {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Any descriptor on the file's mount: its directory.
    let dir = std::path::Path::new(path)
        .parent()
        .ok_or("PATH has no directory")?;
    let mount = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: a handle the kernel just filled; flags O_RDONLY.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut FileHandle,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open_by_handle_at {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just opened this descriptor for us.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut content).map_err(|e| format!("read: {e}"))?;
    println!("read {}", content.len());
    Ok(())
}
