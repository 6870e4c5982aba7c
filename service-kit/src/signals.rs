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

/// Registered early, so a signal that arrives while starting is not lost.
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
