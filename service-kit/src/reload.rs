//! `systemctl reload` that says whether it worked.
//!
//! A reload is a SIGHUP: the daemon re-reads what it can change and tells
//! systemd `RELOADING=1` then `READY=1`. systemd 253 would wait for that
//! itself (`Type=notify-reload`); systemd 252, which Debian 12 ships, runs
//! `ExecReload=` and calls the reload done when that command exits. A bare
//! `kill -HUP` exits at once, before the reload has run, and always with 0:
//! a refused fault file would pass unnoticed at the prompt.
//!
//! So the units run `ExecReload=<daemon> --reload $MAINPID`, which
//! [`request`]s a reload and waits for the daemon's answer: the daemon
//! [`answer`]s every reload in its runtime directory (`RuntimeDirectory=`,
//! which systemd creates, owned by the unit's user, and names in
//! `RUNTIME_DIRECTORY`), and the command returns once the answer for its own
//! SIGHUP is there: 0 when the change is in force, 1 with the reason when it
//! was refused. systemd runs reload jobs one at a time, so two `systemctl
//! reload` in a row each get their own answer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cli::{EXIT_CONFIG, EXIT_RUNTIME, show_duration};

/// The answers file, in the runtime directory.
const ANSWER: &str = "reload";
/// How long `--reload` waits for the daemon's answer: a file read and a
/// parse, far below systemd's default reload timeout (90 s).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Reloads answered by this process so far.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// One answer: which process, its how-manieth reload, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    pid: u32,
    reload: u64,
    applied: bool,
    /// What is now in force, or why the change was refused.
    text: String,
}

impl Answer {
    fn line(&self) -> String {
        let outcome = if self.applied { "applied" } else { "refused" };
        // One line: a reason never spans two.
        let text = self.text.replace(['\n', '\r'], " ");
        format!("{} {} {outcome} {text}\n", self.pid, self.reload)
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.trim_end_matches('\n').splitn(4, ' ');
        let pid = words.next()?.parse().ok()?;
        let reload = words.next()?.parse().ok()?;
        let applied = match words.next()? {
            "applied" => true,
            "refused" => false,
            _ => return None,
        };
        Some(Self {
            pid,
            reload,
            applied,
            text: words.next().unwrap_or_default().to_owned(),
        })
    }
}

/// The runtime directory systemd made for the unit (the first, if the unit
/// names several).
fn runtime_dir() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

fn read(dir: &Path) -> Option<Answer> {
    Answer::parse(&std::fs::read_to_string(dir.join(ANSWER)).ok()?)
}

/// The daemon's side: records the outcome of the reload it just ran, for a
/// waiting `--reload`. Without a runtime directory (started by hand) there
/// is nobody to answer; a failure to write is logged, and `--reload` then
/// says it heard nothing.
pub fn answer(outcome: &Result<String, String>) {
    let Some(dir) = runtime_dir() else {
        return;
    };
    let answer = Answer {
        pid: std::process::id(),
        reload: ANSWERED.fetch_add(1, Ordering::Relaxed) + 1,
        applied: outcome.is_ok(),
        text: match outcome {
            Ok(summary) => summary.clone(),
            Err(why) => why.clone(),
        },
    };
    // Written whole, then renamed: a reader never sees half an answer.
    let partial = dir.join(format!("{ANSWER}.partial"));
    let written = std::fs::write(&partial, answer.line())
        .and_then(|()| std::fs::rename(&partial, dir.join(ANSWER)));
    if let Err(e) = written {
        tracing::warn!(
            "cannot record the reload's outcome in {} ({e}): systemctl reload will not hear it",
            dir.display()
        );
    }
}

/// `--reload PID`: sends the daemon SIGHUP and waits for its answer. Exit 0
/// once the change is in force, 1 if it was refused (or no answer came), 2
/// if there is no runtime directory to hear the answer in. Prints one line.
pub fn request(name: &str, pid: u32) -> ExitCode {
    let Some(dir) = runtime_dir() else {
        eprintln!(
            "{name}: --reload hears the daemon's answer in RUNTIME_DIRECTORY, which is not set (the unit's RuntimeDirectory= sets it; by hand: kill -HUP {pid})"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let before = read(&dir).filter(|a| a.pid == pid).map_or(0, |a| a.reload);
    let target = i32::try_from(pid).map(nix::unistd::Pid::from_raw);
    let sent = target.map_err(|e| e.to_string()).and_then(|target| {
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGHUP).map_err(|e| e.to_string())
    });
    if let Err(e) = sent {
        eprintln!("{name}: cannot signal process {pid}: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let started = Instant::now();
    while started.elapsed() < ANSWER_WITHIN {
        if let Some(answer) = read(&dir).filter(|a| a.pid == pid && a.reload > before) {
            return if answer.applied {
                #[allow(clippy::print_stdout)] // The command's answer is its output.
                {
                    println!("{name}: reloaded: {}", answer.text);
                }
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{name}: reload refused, the settings in force stay: {}",
                    answer.text
                );
                ExitCode::from(EXIT_RUNTIME)
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "{name}: process {pid} did not answer the reload within {} (see its log)",
        show_duration(ANSWER_WITHIN)
    );
    ExitCode::from(EXIT_RUNTIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_one_line_that_reads_back() {
        let answer = Answer {
            pid: 42,
            reload: 7,
            applied: false,
            text: "fault: status \"999\" is not\nan error status".to_owned(),
        };
        let line = answer.line();
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert_eq!(
            Answer::parse(&line),
            Some(Answer {
                text: "fault: status \"999\" is not an error status".to_owned(),
                ..answer
            })
        );
        let applied = Answer::parse("1 2 applied fault off\n").unwrap();
        assert!(applied.applied);
        assert_eq!(applied.text, "fault off");
        for bad in ["", "1", "x 2 applied t", "1 2 maybe t"] {
            assert_eq!(Answer::parse(bad), None, "{bad:?}");
        }
    }
}
