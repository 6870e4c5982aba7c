//! The systemd notify protocol: `READY=1`, `STATUS=`, `STOPPING=1` and the
//! watchdog keep-alive. Every call is a no-op when `NOTIFY_SOCKET` is unset,
//! so a daemon started by hand behaves the same.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon serves, with a line `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the drain has started.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// When systemd asked for keep-alives (`WATCHDOG_USEC`), sends `WATCHDOG=1`
/// at half the interval from a task on the serving runtime: if that runtime
/// wedges, the pings stop and systemd restarts the daemon.
pub fn spawn_watchdog() -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
    Some(interval * 2)
}
