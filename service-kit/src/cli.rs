//! Settings both daemons share, read from flags and environment variables.
//!
//! Each daemon names its variables with its own prefix (`SERVICE_A_LISTEN`,
//! `SERVICE_B_LISTEN`), so the shared flags are built at run time from that
//! prefix rather than declared twice. A bad value is one line
//! on stderr that names both the flag and the variable, and exit status 2.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, ArgMatches, Command};

/// Exit status for a bad setting (the same status clap uses for usage errors).
pub const EXIT_CONFIG: u8 = 2;
/// Exit status for a failure at run time, such as a port already in use.
pub const EXIT_RUNTIME: u8 = 1;

/// Default limit on a decoded `msg`, in bytes.
pub const DEFAULT_MAX_MSG_BYTES: usize = 4096;
/// Largest `msg` limit accepted: a request line longer than this is not a
/// message any more.
pub const MAX_MAX_MSG_BYTES: usize = 1 << 20;

/// A bad setting, or settings that contradict each other: exit status
/// [`EXIT_CONFIG`]. The message names the flag and its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The settings every daemon has.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on (ignored when systemd hands over a socket).
    pub listen: SocketAddr,
    /// Longest `msg` accepted, in decoded bytes.
    pub max_msg_bytes: usize,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_timeout: Duration,
    /// Validate the configuration, print it, and exit without serving.
    pub check_config: bool,
    /// Not a daemon: ask the one running as this process to reload, and
    /// report its answer (`ExecReload=`, see [`crate::reload`]).
    pub reload: Option<u32>,
    /// Limits on what clients may do to the server.
    pub limits: ServerLimits,
}

/// Limits on clients, each with a default that a well-behaved client never
/// meets. Past them the server answers 431, closes the connection, or stops
/// accepting until a connection closes (the kernel queues new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Request line plus headers, in bytes; more is a 431.
    pub max_header_bytes: usize,
    /// Time a client has to send its request line and headers (slowloris).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
}

/// A flag of the shared set: its long name, value name, help and default.
struct Shared {
    long: &'static str,
    env_suffix: &'static str,
    value_name: &'static str,
    help: &'static str,
}

const LISTEN: Shared = Shared {
    long: "listen",
    env_suffix: "LISTEN",
    value_name: "ADDR",
    help: "Address and port to listen on (IP:PORT)",
};
const MAX_MSG_BYTES: Shared = Shared {
    long: "max-msg-bytes",
    env_suffix: "MAX_MSG_BYTES",
    value_name: "BYTES",
    help: "Longest msg accepted, in bytes after decoding; longer is a 400 msg_too_long",
};
const MAX_CONNECTIONS: Shared = Shared {
    long: "max-connections",
    env_suffix: "MAX_CONNECTIONS",
    value_name: "N",
    help: "Connections served at once; more wait in the kernel's queue until one closes",
};
const MAX_HEADER_BYTES: Shared = Shared {
    long: "max-header-bytes",
    env_suffix: "MAX_HEADER_BYTES",
    value_name: "BYTES",
    help: "Largest request line plus headers; larger is a 431 (at least 8192, and room for a percent-encoded msg at the limit)",
};
const HEADER_TIMEOUT: Shared = Shared {
    long: "header-timeout",
    env_suffix: "HEADER_TIMEOUT",
    value_name: "DURATION",
    help: "Time a client has to send its request line and headers; slower connections are closed",
};
const IDLE_TIMEOUT: Shared = Shared {
    long: "idle-timeout",
    env_suffix: "IDLE_TIMEOUT",
    value_name: "DURATION",
    help: "An idle keep-alive connection is closed after this",
};
const SHUTDOWN_TIMEOUT: Shared = Shared {
    long: "shutdown-timeout",
    env_suffix: "SHUTDOWN_TIMEOUT",
    value_name: "DURATION",
    help: "On SIGTERM/SIGINT, how long in-flight requests may finish before they are cut",
};

/// Adds the shared flags to `cmd`: variables named `<env_prefix>_LISTEN`...,
/// and `--listen` defaulting to `default_listen`.
pub fn with_server_args(cmd: Command, env_prefix: &str, default_listen: &str) -> Command {
    let arg = |s: &Shared, default: String| {
        clap::Arg::new(s.long)
            .long(s.long)
            .env(format!("{env_prefix}_{}", s.env_suffix))
            .value_name(s.value_name)
            .help(s.help)
            .default_value(default)
    };
    cmd.arg(arg(&LISTEN, default_listen.to_owned()).value_parser(parse_socket_addr))
        .arg(arg(&MAX_MSG_BYTES, DEFAULT_MAX_MSG_BYTES.to_string()).value_parser(parse_msg_limit))
        .arg(arg(&SHUTDOWN_TIMEOUT, "5s".to_owned()).value_parser(parse_duration))
        .arg(arg(&MAX_CONNECTIONS, "4096".to_owned()).value_parser(parse_max_connections))
        .arg(arg(&MAX_HEADER_BYTES, "16384".to_owned()).value_parser(parse_header_bytes))
        .arg(arg(&HEADER_TIMEOUT, "10s".to_owned()).value_parser(parse_duration))
        .arg(arg(&IDLE_TIMEOUT, "60s".to_owned()).value_parser(parse_duration))
        .arg(
            clap::Arg::new("reload")
                .long("reload")
                .value_name("PID")
                .value_parser(clap::value_parser!(u32).range(1..))
                .help("Ask the daemon running as PID to re-read what it can change (SIGHUP) and wait for its answer: exit 0 once in force, 1 with the reason if refused (what `systemctl reload` runs)"),
        )
        .arg(
            clap::Arg::new("check-config")
                .long("check-config")
                .action(ArgAction::SetTrue)
                .help("Validate the configuration, print it and exit (0 if valid, 2 if not) without listening"),
        )
}

impl ServerSettings {
    /// Reads the shared settings back out of parsed matches.
    pub fn from_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            listen: value(m, LISTEN.long)?,
            max_msg_bytes: value(m, MAX_MSG_BYTES.long)?,
            shutdown_timeout: value(m, SHUTDOWN_TIMEOUT.long)?,
            check_config: m.get_flag("check-config"),
            reload: m.get_one::<u32>("reload").copied(),
            limits: ServerLimits {
                max_connections: value(m, MAX_CONNECTIONS.long)?,
                max_header_bytes: value(m, MAX_HEADER_BYTES.long)?,
                header_timeout: value(m, HEADER_TIMEOUT.long)?,
                idle_timeout: value(m, IDLE_TIMEOUT.long)?,
            },
        })
    }

    /// Checks the settings against each other; the error names them.
    pub fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        // The worst case of a msg at the limit: every byte sent as %XX.
        let needed = self.max_msg_bytes * 3 + 1024;
        if self.limits.max_header_bytes < needed {
            return Err(ConfigError(format!(
                "--max-header-bytes / {prefix}_MAX_HEADER_BYTES is {} but a msg of --max-msg-bytes / {prefix}_MAX_MSG_BYTES {} bytes needs up to {needed}",
                self.limits.max_header_bytes, self.max_msg_bytes
            )));
        }
        Ok(())
    }
}

/// Every shared flag has a default and a typed parser, so this only fails if
/// the flags above and this function disagree.
fn value<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Result<T, clap::Error> {
    m.try_get_one::<T>(id)
        .ok()
        .flatten()
        .cloned()
        .ok_or_else(|| clap::Error::raw(ErrorKind::MissingRequiredArgument, format!("--{id}")))
}

/// Parses `IP:PORT`. Host names are refused: a daemon that resolves its own
/// listen address at start-up binds to whatever DNS says that day.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080".to_owned())
}

/// Longest duration any setting accepts. Every duration of both daemons is
/// a timeout or a cooldown measured in seconds; far past a day a value is a
/// typo, and `Instant + d` overflows (a panic) long before `u64` seconds do.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `250ms`, `1s`, `1m30s`...; zero and more than [`MAX_DURATION`]
/// are refused, so no later `Instant + d` can overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| "expected a duration such as 250ms, 2s or 1m".to_owned())?;
    if d.is_zero() || d > MAX_DURATION {
        return Err("must be greater than zero and at most 24h".to_owned());
    }
    Ok(d)
}

fn parse_msg_limit(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| "expected a whole number of bytes, such as 4096".to_owned())?;
    if n == 0 || n > MAX_MAX_MSG_BYTES {
        return Err(format!("must be between 1 and {MAX_MAX_MSG_BYTES}"));
    }
    Ok(n)
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expected a number of connections from 1 to 1000000".to_owned()),
    }
}

fn parse_header_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        // hyper's floor is 8 KiB.
        Ok(n) if (8192..=16 << 20).contains(&n) => Ok(n),
        _ => Err("expected a number of bytes from 8192 to 16777216".to_owned()),
    }
}

/// Formats a duration as one word that every setting (and service-a's fault
/// file, which splits on spaces) reads back as the same duration: a whole
/// number of the largest unit that divides it (`5s`, `1500ms`, `90m`).
pub fn show_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (per, unit) = UNITS
        .iter()
        .find(|(per, _)| nanos.is_multiple_of(*per))
        .unwrap_or(&(1, "ns"));
    format!("{}{unit}", nanos / per)
}

/// Turns a clap error into what the contract promises: help and version go
/// to stdout with status 0; anything else is one line on stderr naming the
/// flag and its environment variable, and status 2.
pub fn report_cli_error(name: &str, cmd: &Command, err: &clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    eprintln!("{name}: {}", one_line(cmd, err));
    ExitCode::from(EXIT_CONFIG)
}

fn one_line(cmd: &Command, err: &clap::Error) -> String {
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let reason = std::error::Error::source(err).map(ToString::to_string);
    match (err.kind(), arg, value, reason) {
        (ErrorKind::ValueValidation, Some(arg), Some(value), Some(reason)) => {
            format!(
                "invalid value {value:?} for {}: {reason}",
                describe_arg(cmd, &arg)
            )
        }
        _ => {
            // clap's own first line, without its "error: " prefix.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            format!("{} (see --help)", first.trim_start_matches("error: "))
        }
    }
}

/// `--listen <ADDR>` becomes `--listen / SERVICE_A_LISTEN`, so the user
/// knows where the value came from whichever way they set it.
fn describe_arg(cmd: &Command, rendered: &str) -> String {
    let long = rendered
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let env = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    match env {
        Some(env) => format!("--{long} / {env}"),
        None => format!("--{long}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert!(parse_duration("24h 1ns").is_err());
        assert!(parse_duration("500000000y").is_err());
    }

    #[test]
    fn durations_are_shown_as_one_word_that_parses_back() {
        for (d, shown) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(show_duration(d), shown);
            assert_eq!(humantime::parse_duration(shown), Ok(d), "{shown}");
        }
    }

    #[test]
    fn addresses() {
        assert!(parse_socket_addr("127.0.0.1:8080").is_ok());
        assert!(parse_socket_addr("[::1]:0").is_ok());
        assert!(parse_socket_addr("localhost:8080").is_err());
        assert!(parse_socket_addr("127.0.0.1").is_err());
        assert!(parse_socket_addr("127.0.0.1:99999").is_err());
    }

    #[test]
    fn msg_limits() {
        assert_eq!(parse_msg_limit("4096"), Ok(4096));
        assert!(parse_msg_limit("0").is_err());
        assert!(parse_msg_limit("-1").is_err());
        assert!(parse_msg_limit("2MB").is_err());
    }
}
