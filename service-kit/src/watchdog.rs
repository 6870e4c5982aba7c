//! The systemd watchdog (`WatchdogSec=`, seen as `WATCHDOG_USEC`).
//!
//! A keep-alive must mean "this daemon serves", not "a timer fires": a
//! wedged accept loop, or every connection slot held by clients that send
//! nothing, leaves timers running. So before each `WATCHDOG=1` the daemon
//! asks itself `GET /health` through its own listening socket (the address
//! it serves on, whether bound here or inherited from systemd), and pings
//! only if the answer is a 200 within a quarter of the interval. When the
//! check fails it does not ping, and says why in `STATUS=`, so
//! `systemctl status` shows the reason while systemd restarts the daemon.
//!
//! The check is an ordinary request: it is counted in the metrics of
//! `/health` and has an access line like any other. Under the journal
//! successful access lines are off by default ([`crate::logging`]), so a
//! check every few seconds does not fill it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::cli::show_duration;
use crate::notify;

/// Checks (and pings) at most this often. `WATCHDOG_USEC=1` would ask for
/// one every 500 ns: a spinning daemon that systemd restarts anyway.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The largest answer to the check that is read.
const MAX_ANSWER: u64 = 4096;

/// What systemd asked for, and the daemon's pace for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// `WatchdogSec=`: systemd kills the daemon after this without a ping.
    pub timeout: Duration,
    /// A check, and a ping if it passes, this often: half the timeout, so
    /// one slow check alone never lets the timeout pass.
    pub period: Duration,
    /// How long the check may take: half a period.
    pub check_within: Duration,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_watchdog_enabled(3)
    /// does. `Ok(None)`: no watchdog (unset, or meant for another process);
    /// `Err`: a value systemd never sends, to log; no watchdog then either.
    pub fn from_env() -> Result<Option<Self>, String> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_values(usec.as_deref(), pid.as_deref(), std::process::id())
    }

    fn from_values(
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Option<Self>, String> {
        let Some(usec) = usec else {
            return Ok(None);
        };
        if let Some(pid) = pid
            && pid.parse::<u32>().ok() != Some(own_pid)
        {
            return Ok(None);
        }
        let timeout = match usec.parse::<u64>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "WATCHDOG_USEC={usec:?} is not a watchdog interval (microseconds, more than 0): watchdog off"
                ));
            }
            Ok(usec) => Duration::from_micros(usec),
        };
        let period = (timeout / 2).max(MIN_PERIOD);
        Ok(Some(Self {
            timeout,
            period,
            check_within: period / 2,
        }))
    }

    /// A line for the log: what the daemon will do.
    pub fn describe(&self) -> String {
        format!(
            "systemd watchdog on ({}): GET /health through the listening socket every {}, keep-alive only if it answers within {}",
            show_duration(self.timeout),
            show_duration(self.period),
            show_duration(self.check_within)
        )
    }

    /// Checks and pings from a task on the serving runtime until the task
    /// is stopped (at the drain). `serving` is the address the daemon
    /// listens on; `status` its usual `STATUS=` line, restored when a check
    /// passes again.
    pub fn spawn(self, serving: SocketAddr, status: Arc<Mutex<String>>) -> JoinHandle<()> {
        let target = reachable(serving);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let checked = tokio::time::timeout(self.check_within, check(target)).await;
                let why = match checked {
                    Ok(Ok(())) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("watchdog: the daemon serves again; keep-alives resume");
                            notify::status(&status.lock().unwrap_or_else(PoisonError::into_inner));
                        }
                        notify::watchdog();
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {}", show_duration(self.check_within)),
                };
                failing = true;
                let line =
                    format!("watchdog: GET /health on {target} failed ({why}): no keep-alive");
                tracing::error!("{line}");
                notify::status(&line);
            }
        })
    }
}

/// Where to reach a socket listening on `addr`: a wildcard address
/// (`0.0.0.0`, `::`) is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `GET /health` over a fresh connection: a 200 or an error saying what came.
async fn check(target: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(target).await?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {target}\r\nUser-Agent: service-kit-watchdog\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
    let status_line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    if status_line.starts_with(b"HTTP/1.1 200 ") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(status_line)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(usec: Option<&str>, pid: Option<&str>) -> Result<Option<Watchdog>, String> {
        Watchdog::from_values(usec, pid, 42)
    }

    #[test]
    fn reads_the_interval_as_systemd_means_it() {
        assert_eq!(from(None, None), Ok(None));
        let on = from(Some("10000000"), None).ok().flatten();
        assert_eq!(
            on,
            Some(Watchdog {
                timeout: Duration::from_secs(10),
                period: Duration::from_secs(5),
                check_within: Duration::from_millis(2500),
            })
        );
        assert_eq!(from(Some("10000000"), Some("42")).ok().flatten(), on);
        assert_eq!(from(Some("10000000"), Some("1")), Ok(None));
        assert!(from(Some("0"), None).is_err());
        assert!(from(Some("soon"), None).is_err());
        assert!(from(Some("-1"), None).is_err());
        let tiny = from(Some("1"), None).ok().flatten().map(|w| w.period);
        assert_eq!(tiny, Some(MIN_PERIOD));
    }

    #[test]
    fn a_wildcard_address_is_reached_through_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reachable(v4).to_string(), "127.0.0.1:8080");
        let v6: SocketAddr = "[::]:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reachable(v6).to_string(), "[::1]:8080");
        let own: SocketAddr = "127.0.0.2:1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reachable(own), own);
    }
}
