//! Loopback ports held for a server that starts later, or must come back
//! on the same address (a collector stopped and restarted in an outage
//! test).
//!
//! A port the OS gave with `bind(0)` and then released can be handed to
//! anything else at once: another test's `bind(0)` or the local port of any
//! outgoing connection. A [`HeldPort`] stays bound (SO_REUSEADDR, never
//! listening) for as long as the test keeps it: connections to it are
//! refused as if nothing were there, the kernel hands it to no `bind(0)`
//! and no outgoing connection, and a server that binds with SO_REUSEADDR
//! (tokio's and std's listeners, so the collector) may listen on it, stop,
//! and listen again.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// A loopback TCP port the OS chose, held until dropped.
pub struct HeldPort {
    _socket: Socket,
    port: u16,
}

impl HeldPort {
    /// Binds 127.0.0.1:0 and keeps the socket, without listening.
    pub fn new() -> anyhow::Result<Self> {
        let socket = reusable_socket()?;
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .context("binding 127.0.0.1:0")?;
        let port = socket
            .local_addr()?
            .as_socket()
            .context("not an inet address")?
            .port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A listener on the held port (SO_REUSEADDR, as a restarted server's):
    /// the port stays held after it is dropped.
    pub fn listen(&self) -> anyhow::Result<std::net::TcpListener> {
        let socket = reusable_socket()?;
        socket.bind(&self.addr().into())?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }
}

fn reusable_socket() -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn a_held_port_refuses_until_a_server_listens_and_again_after_it_stops() {
        let held = HeldPort::new().unwrap();
        assert!(TcpStream::connect(held.addr()).is_err(), "nothing listens");
        // Nobody else can bind it (a plain bind, without SO_REUSEADDR).
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(other.bind(&held.addr().into()).is_err(), "taken by another");
        for _ in 0..2 {
            let listener = held.listen().unwrap();
            TcpStream::connect(held.addr()).unwrap();
            drop(listener);
            assert!(TcpStream::connect(held.addr()).is_err(), "stopped");
        }
    }
}
