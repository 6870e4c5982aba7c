//! Where the listening socket comes from: systemd's (socket activation) or our own.

use std::io;
use std::net::SocketAddr;

use salvo::conn::tcp::TcpAcceptor;

/// How the daemon came by its listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Bound here from `--listen`.
    Bound,
    /// Handed over by systemd (`LISTEN_FDS`); `--listen` was not used.
    Inherited,
}

/// Connections the kernel queues before the daemon accepts them. std's
/// `bind` asks for 128, which a burst of clients overflows: their SYNs are
/// dropped and retried a second later. The kernel caps it at `somaxconn`.
pub const BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restart may bind while the old process's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Takes the socket systemd passed in `LISTEN_FDS`, if any, otherwise binds
/// `listen`. Errors are the caller's to report; nothing here panics.
pub async fn acquire(listen: SocketAddr) -> io::Result<(TcpAcceptor, SocketAddr, Origin)> {
    let (listener, origin) = match listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        Some(std_listener) => {
            std_listener.set_nonblocking(true)?;
            (
                tokio::net::TcpListener::from_std(std_listener)?,
                Origin::Inherited,
            )
        }
        None => (bind(listen)?, Origin::Bound),
    };
    let local = listener.local_addr()?;
    Ok((TcpAcceptor::try_from(listener)?, local, origin))
}
