//! Faults service-a injects on purpose, so that a learner can watch
//! service-b degrade in each way the contract names. Off unless a fault file
//! says otherwise; the file is read at start and again on SIGHUP
//! (`systemctl reload service-a`), and a bad file on reload leaves the fault
//! that was active.
//!
//! The file holds one line (blank lines and `#` comments aside):
//!
//! ```text
//! off
//! delay=1500ms            every answer 1.5 s late
//! delay=200ms..1500ms     late by a random time in that range
//! hang                    accept, read the request, never answer
//! status=503              answer this status (400-599) with a JSON error body
//! garbage                 a 200 that is not the expected JSON
//! reset                   close the connection without an answer
//! ```
//!
//! followed, optionally, by `ratio=0.1` (or `ratio=10%`): the share of
//! `/echo` requests the fault applies to (default: all of them).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use service_kit::cli::show_duration;

/// The longest delay accepted: far past any deadline worth testing.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// What happens to a request the fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answer late, by a time between the two (equal for a fixed delay).
    Delay(Duration, Duration),
    /// Never answer.
    Hang,
    /// Answer this status.
    Status(u16),
    /// Answer 200 with a body that is not `{"echo": string}`.
    Garbage,
    /// Close the connection without an answer.
    Reset,
}

impl Kind {
    /// The name on spans, in `/health` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Delay(..) => "delay",
            Self::Hang => "hang",
            Self::Status(_) => "status",
            Self::Garbage => "garbage",
            Self::Reset => "reset",
        }
    }
}

/// A fault and the share of requests it applies to; `None` is off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// What happens.
    pub kind: Option<Kind>,
    /// The share of `/echo` requests it happens to, in (0, 1].
    pub ratio: f64,
}

impl Fault {
    /// No fault.
    pub const OFF: Self = Self {
        kind: None,
        ratio: 1.0,
    };

    /// Whether this request is one the fault applies to; draws at random.
    pub fn draw(&self) -> Option<Kind> {
        let kind = self.kind?;
        (self.ratio >= 1.0 || fastrand::f64() < self.ratio).then_some(kind)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            None => return f.write_str("off"),
            Some(Kind::Delay(min, max)) if min == max => {
                write!(f, "delay={}", show_duration(min))?;
            }
            Some(Kind::Delay(min, max)) => {
                write!(f, "delay={}..{}", show_duration(min), show_duration(max))?;
            }
            Some(Kind::Status(code)) => write!(f, "status={code}")?,
            Some(kind) => f.write_str(kind.name())?,
        }
        if self.ratio < 1.0 {
            write!(f, " ratio={}", self.ratio)?;
        }
        Ok(())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        let Some(first) = words.next() else {
            return Ok(Self::OFF);
        };
        let (name, value) = match first.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (first, None),
        };
        let kind = match (name, value) {
            ("off", None) => None,
            ("hang", None) => Some(Kind::Hang),
            ("garbage", None) => Some(Kind::Garbage),
            ("reset", None) => Some(Kind::Reset),
            ("delay", Some(v)) => Some(parse_delay(v)?),
            ("status", Some(v)) => Some(Kind::Status(parse_status(v)?)),
            _ => {
                return Err(format!(
                    "unknown fault {first:?}; expected off, delay=DURATION[..DURATION], hang, status=CODE, garbage or reset"
                ));
            }
        };
        let mut ratio = 1.0;
        for word in words {
            match word.split_once('=') {
                Some(("ratio", v)) => ratio = parse_ratio(v)?,
                _ => return Err(format!("unknown option {word:?}; expected ratio=SHARE")),
            }
        }
        Ok(Self { kind, ratio })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration such as 300ms or 2s"))?;
    if d > MAX_DELAY {
        return Err(format!("{s:?} is longer than {}", show_duration(MAX_DELAY)));
    }
    Ok(d)
}

fn parse_delay(s: &str) -> Result<Kind, String> {
    let (min, max) = match s.split_once("..") {
        Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
        None => {
            let d = parse_duration(s)?;
            (d, d)
        }
    };
    if min > max {
        return Err(format!("delay range {s:?} runs backwards"));
    }
    Ok(Kind::Delay(min, max))
}

fn parse_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "status {s:?} is not an error status from 400 to 599"
        )),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let (number, scale) = match s.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (s, 1.0),
    };
    match number.parse::<f64>().map(|r| r / scale) {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!(
            "ratio {s:?} is not a share above 0 and at most 1 (or 100%)"
        )),
    }
}

/// Reads a fault file: one fault line, `#` comments and blank lines aside.
/// A file that does not exist means no fault.
pub fn read_file(path: &Path) -> Result<Fault, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Fault::OFF),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut lines = text
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before).trim())
        .filter(|l| !l.is_empty());
    let fault = match lines.next() {
        None => Fault::OFF,
        Some(line) => line
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?,
    };
    if lines.next().is_some() {
        return Err(format!(
            "{}: more than one fault line; one fault at a time",
            path.display()
        ));
    }
    Ok(fault)
}

/// The active fault, shared by the handler, `/health` and the reloader.
#[derive(Debug)]
pub struct Faults {
    /// Where the fault is read from, if anywhere.
    path: Option<PathBuf>,
    active: RwLock<Fault>,
}

impl Faults {
    /// Reads `path` (if any) for the fault to start with.
    pub fn load(path: Option<PathBuf>) -> Result<Self, String> {
        let fault = match &path {
            Some(path) => read_file(path)?,
            None => Fault::OFF,
        };
        Ok(Self::with(path, fault))
    }

    /// A fixed fault, for tests.
    pub fn with(path: Option<PathBuf>, fault: Fault) -> Self {
        Self {
            path,
            active: RwLock::new(fault),
        }
    }

    /// The fault now.
    pub fn active(&self) -> Fault {
        *self.active.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this request is one the fault in force applies to: read in
    /// place, without taking a copy of the fault (every `/echo` asks).
    pub fn draw(&self) -> Option<Kind> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .draw()
    }

    /// Reads the file again. On an error the active fault stays.
    pub fn reload(&self) -> Result<Fault, String> {
        let Some(path) = &self.path else {
            return Ok(self.active());
        };
        let fault = read_file(path)?;
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = fault;
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fault, String> {
        s.parse()
    }

    #[test]
    fn every_kind_parses_and_prints_back() {
        for s in [
            "off",
            "delay=1500ms",
            "hang",
            "status=503",
            "garbage",
            "reset ratio=0.1",
            "delay=200ms..1500ms ratio=0.5",
            "delay=2s",
            "delay=90s",
            "delay=10m",
        ] {
            let fault = parse(s).unwrap();
            assert_eq!(fault.to_string(), s, "{s}");
        }
        assert_eq!(parse("").unwrap(), Fault::OFF);
        assert_eq!(parse("status=500 ratio=10%").unwrap().ratio, 0.1);
    }

    #[test]
    fn what_is_shown_pastes_back_as_the_same_fault() {
        // `/health` and `systemctl status` show a fault as Display writes
        // it: a user copies that into the fault file.
        for written in [
            "delay=1500ms",
            "delay=1s500ms",
            "delay=1m30s",
            "delay=5m",
            "delay=250us",
            "delay=1ns..1ms",
            "delay=0s..1001ms ratio=0.25",
            "delay=1000000001ns",
            "reset ratio=10%",
            "status=503 ratio=0.3333",
            "hang ratio=1",
        ] {
            let fault = parse(written).unwrap();
            let shown = fault.to_string();
            assert_eq!(
                parse(&shown),
                Ok(fault),
                "{written:?} is shown as {shown:?}"
            );
            assert!(!shown.contains("  "), "{shown:?}");
        }
    }

    #[test]
    fn bad_faults_say_what_is_wrong() {
        for (s, needle) in [
            ("explode", "unknown fault"),
            ("status=200", "400 to 599"),
            ("status=abc", "400 to 599"),
            ("delay=fast", "not a duration"),
            ("delay=2s..1s", "backwards"),
            ("delay=1000h", "longer than"),
            ("hang ratio=0", "share above 0"),
            ("hang ratio=1.5", "share above 0"),
            ("hang ratio=150%", "share above 0"),
            ("hang please", "unknown option"),
            ("hang=1", "unknown fault"),
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn the_ratio_is_the_share_of_requests() {
        let fault = parse("garbage ratio=0.25").unwrap();
        let hits = (0..40_000).filter(|_| fault.draw().is_some()).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert_eq!(Fault::OFF.draw(), None);
        assert_eq!(parse("hang").unwrap().draw(), Some(Kind::Hang));
    }

    #[test]
    fn files_hold_one_fault_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fault");
        assert_eq!(read_file(&path).unwrap(), Fault::OFF, "missing: off");
        std::fs::write(
            &path,
            "# a comment\n\n status=500 ratio=0.1 # ten percent\n",
        )
        .unwrap();
        assert_eq!(
            read_file(&path).unwrap().to_string(),
            "status=500 ratio=0.1"
        );
        std::fs::write(&path, "hang\nreset\n").unwrap();
        assert!(
            read_file(&path)
                .unwrap_err()
                .contains("one fault at a time")
        );
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_active_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fault");
        std::fs::write(&path, "status=502").unwrap();
        let faults = Faults::load(Some(path.clone())).unwrap();
        assert_eq!(faults.active().to_string(), "status=502");
        std::fs::write(&path, "status=999").unwrap();
        assert!(faults.reload().is_err());
        assert_eq!(faults.active().to_string(), "status=502");
        std::fs::write(&path, "off").unwrap();
        assert_eq!(faults.reload().unwrap(), Fault::OFF);
        assert_eq!(faults.active(), Fault::OFF);
    }
}
