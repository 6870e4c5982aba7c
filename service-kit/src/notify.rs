//! The systemd notify protocol: `READY=1`, `STATUS=`, `STOPPING=1` and the
//! `WATCHDOG=1` keep-alive (sent by [`crate::watchdog`]). Every call is a
//! no-op when `NOTIFY_SOCKET` is unset, so a daemon started by hand behaves
//! the same.
//!
//! `NOTIFY_SOCKET` is a socket file (`/run/systemd/notify`) or, as
//! sd_notify(3) allows, a name in Linux's abstract namespace (`@name`, no
//! file). The sd-notify crate (0.5) takes both for paths, so a manager that
//! hands out `@name` would never hear `READY=1`: the datagram is sent here.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use sd_notify::NotifyState;

/// Tells systemd the daemon serves, with a line `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload has started (`RELOADING=1`, with the monotonic
/// time systemd 253+ requires); [`ready`] ends it.
pub fn reloading(status: &str) {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(status)];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells systemd the drain has started.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Replaces the line `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// One watchdog keep-alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState<'_>]) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, states) {
        tracing::warn!(error = %e, notify_socket = ?target, "cannot notify systemd");
    }
}

fn send_to(target: &OsStr, states: &[NotifyState<'_>]) -> io::Result<()> {
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &address(target)?)?;
    if sent != message.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(())
}

/// The address `NOTIFY_SOCKET` names: `@name` is abstract, `/path` a file.
fn address(target: &OsStr) -> io::Result<SocketAddr> {
    match target.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(target),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_notify_socket() {
        let abstract_ = address(OsStr::new("@systemd/notify")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(abstract_.as_abstract_name(), Some(&b"systemd/notify"[..]));
        let path = address(OsStr::new("/run/systemd/notify")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(address(OsStr::new("vsock:2:1234")).is_err());
        assert!(address(OsStr::new("")).is_err());
    }
}
