//! Listening sockets: the start-up probe that refuses a port some other process listens on,
//! and the shards' listeners.
//!
//! Both set `SO_REUSEADDR`, for restarts: a connection the server closed first (keep-alive
//! connections at shutdown, `Connection: close`) stays in TIME_WAIT on the server's port for a
//! minute after the process has gone. Linux lets a socket with `SO_REUSEADDR` bind over such a
//! TIME_WAIT entry only when the entry's own socket had `SO_REUSEADDR` too (accepted sockets
//! inherit it from their listener), and never while any socket listens on the port. glommio's
//! `TcpListener::bind` sets only `SO_REUSEPORT`, so the shards build their sockets here.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Listen backlog of each shard's socket (what glommio's own `bind` uses).
pub const BACKLOG: i32 = 1024;

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_address(true)?;
    Ok(sk)
}

/// The start-up probe could not bind the server's port.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (is another server running on this port?)")]
pub struct PortInUse {
    /// The address probed.
    pub addr: SocketAddr,
    /// Why the bind failed (usually `EADDRINUSE`).
    #[source]
    pub source: io::Error,
}

/// Refuses to start when another process listens on `addr`. Each shard binds with
/// `SO_REUSEPORT` (the kernel spreads connections over the shards), which would also let a
/// second server (of the same user) bind the port and silently take a share of the traffic.
/// The probe binds without `SO_REUSEPORT`, so it fails if anything listens there; it sets
/// `SO_REUSEADDR`, so TIME_WAIT connections of an earlier run do not stop a restart. Port 0
/// picks a free port, so there is nothing to check.
pub fn check_port_free(addr: SocketAddr) -> Result<(), PortInUse> {
    if addr.port() == 0 {
        return Ok(());
    }
    let refused = |source: io::Error| PortInUse { addr, source };
    let probe = tcp_socket(addr).map_err(refused)?;
    probe.bind(&addr.into()).map_err(refused)?;
    drop(probe);
    Ok(())
}

/// Binds one shard's listener on `addr`: `SO_REUSEPORT`, so that every shard has a socket of
/// its own on the one port, and `SO_REUSEADDR` (see the module documentation). Must be called
/// on the shard's executor thread.
pub fn shard_listener(addr: SocketAddr) -> io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    let sk = tcp_socket(addr)?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(BACKLOG)?;
    let fd = sk.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket that nothing else owns: `into_raw_fd` gave
    // up `sk`'s ownership and the listener takes it over (closing it when dropped). glommio
    // offers no safe conversion from a socket it did not create.
    #[allow(unsafe_code)]
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
    Ok(listener)
}
