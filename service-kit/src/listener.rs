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
        None => (tokio::net::TcpListener::bind(listen).await?, Origin::Bound),
    };
    let local = listener.local_addr()?;
    Ok((TcpAcceptor::try_from(listener)?, local, origin))
}
