//! The signals a daemon acts on: SIGTERM (systemd, kill) and SIGINT (Ctrl-C)
//! end it; SIGHUP (`systemctl reload`) asks it to re-read what it can
//! change without a restart.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Stop: SIGTERM or SIGINT, named.
    Stop(&'static str),
    /// Re-read the settings that can change while running (SIGHUP).
    Reload,
}

/// Catches SIGHUP from the first line of `main`, before anything else runs
/// (the async runtime that [`Shutdown`] needs takes a few milliseconds to
/// build). Its default action ends the process: a `systemctl reload` or a
/// script's `kill -HUP` just after start would kill a daemon that had not
/// got that far. One caught here comes before the settings are read, so it
/// needs no reload. SIGTERM and SIGINT keep their default until
/// [`Shutdown::register`]: to end a process that has not started is what
/// they ask.
pub fn catch_sighup_at_once() -> io::Result<()> {
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, ignored).map(drop)
}

/// Registered as soon as the runtime is up, before the settings are read,
/// so a signal that arrives while starting is not lost: a SIGHUP then is a
/// reload once the daemon serves; a SIGTERM a stop.
#[derive(Debug)]
pub struct Shutdown {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Shutdown {
    /// Starts listening for SIGTERM, SIGINT and SIGHUP.
    pub fn register() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one.
    pub async fn recv(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
        }
    }

    /// Waits for the next signal to stop, and names it; a SIGHUP meanwhile
    /// is ignored.
    pub async fn stopped(&mut self) -> &'static str {
        loop {
            if let Event::Stop(name) = self.recv().await {
                return name;
            }
        }
    }
}
