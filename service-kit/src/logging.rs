//! Log output. Under systemd, when stderr is the journal (`JOURNAL_STREAM`
//! names our stderr), events go to journald natively with their fields
//! (`KIND`, `STATUS`, `TRACE_ID`...), so `journalctl -u service-b KIND=timeout`
//! works; otherwise they are text lines on stderr. `RUST_LOG` filters both.
//!
//! The default filter depends on where lines go. On a terminal or a file it
//! is `info`: every request's access line. Under the journal it is
//! [`JOURNAL_DEFAULT`], which leaves out the access lines of requests that
//! went well (INFO): journald drops a unit's messages past its rate limit
//! (10 000 per 30 s by default), and at service-b's request rates the
//! successful lines would use it up and the WARN and ERROR lines that matter
//! (degraded answers, 5xx) would be the ones lost. `RUST_LOG=info` asks for
//! every line anyway.
//!
//! Text lines are written by a thread of their own, from a bounded buffer
//! ([`BUFFERED_LINES`]): a reader that stalls (stderr piped into a paused
//! `less`, a terminal on scroll lock) must not stall the answers, as it
//! would if the workers wrote the lines themselves (they block in write(2)
//! once the pipe's 64 KiB are full, `/health` included). Past the buffer,
//! lines are dropped, counted, and the count is logged as soon as a line
//! gets through again ([`report_drops`]). The journal is written directly,
//! as tracing-journald does: journald is systemd's own, and a daemon
//! stuck on a wedged journald stops answering its watchdog's self-check,
//! so systemd restarts it.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{DynFilterFn, LevelFilter};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// OpenTelemetry's own complaints (a collector that is down fails every
/// export) are let through at most this often.
pub const SDK_ERROR_EVERY: Duration = Duration::from_secs(60);

/// A layer on the global subscriber (the OpenTelemetry bridge, for one).
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Text lines waiting for the writer thread, at most: a burst of about a
/// megabyte, or a second of a stall at four thousand lines a second.
pub const BUFFERED_LINES: usize = 4096;

/// The log output, once installed: keep it until the process ends.
#[derive(Debug, Default)]
pub struct Logging {
    /// A warning to log once logging works (a bad `RUST_LOG`, say).
    pub warning: Option<String>,
    /// Text lines dropped because the reader did not keep up.
    dropped: Option<tracing_appender::non_blocking::ErrorCounter>,
    /// Flushes what is buffered when dropped (at exit).
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber with `extra` layers besides the output;
/// each extra layer carries its own filter.
pub fn init(extra: Vec<BoxedLayer>) -> Logging {
    let journal = stderr_is_journal();
    let default = default_filter(journal);
    let (filter, warning) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) if std::env::var_os("RUST_LOG").is_some() => (
            EnvFilter::new(default),
            Some(format!(
                "RUST_LOG is not a valid filter ({e}); using \"{default}\""
            )),
        ),
        Err(_) => (EnvFilter::new(default), None),
    };
    // RUST_LOG filters the log output only: the other layers (the
    // OpenTelemetry bridge) choose what they see themselves, so turning logs
    // down never turns traces off.
    // Every filter states the most verbose level it can let through, so
    // that `debug!`/`trace!` in the libraries stay free when nothing wants them.
    let hint = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let mut layers = extra;
    let (output, mut logging) = output(journal);
    layers.push(
        output
            .with_filter(filter)
            .with_filter(output_filter(hint))
            .boxed(),
    );
    let _ = Registry::default().with(layers).try_init();
    logging.warning = warning;
    logging
}

impl Logging {
    /// Starts [`report_drops`] on the current runtime, if lines can be dropped.
    pub fn spawn_drop_reports(&self) {
        if let Some(dropped) = self.dropped.clone() {
            tokio::spawn(report_drops(dropped, DROP_REPORTS_EVERY));
        }
    }
}

/// How often the count of dropped lines is looked at.
const DROP_REPORTS_EVERY: Duration = Duration::from_secs(1);

/// Logs how many text lines were dropped so far, every `period`, whenever
/// the count has grown; runs until the process ends. The report is itself a
/// line that may be dropped, and then counted: it is repeated until one
/// gets through, so drops are never silent.
async fn report_drops(dropped: tracing_appender::non_blocking::ErrorCounter, period: Duration) {
    let mut reported = 0;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = dropped.dropped_lines();
        if now > reported {
            reported = now;
            tracing::warn!(
                dropped_lines = now,
                "{now} log lines dropped so far: the reader of stderr did not keep up (lines are dropped rather than stall the answers)"
            );
        }
    }
}

/// The filter when `RUST_LOG` is unset under the journal: requests that went
/// well have no line; degraded answers (WARN) and failures (ERROR) do.
pub const JOURNAL_DEFAULT: &str = "info,access=warn";

/// The filter when `RUST_LOG` is unset.
fn default_filter(journal: bool) -> &'static str {
    if journal { JOURNAL_DEFAULT } else { "info" }
}

/// What the output takes besides `RUST_LOG` (whose most verbose level is
/// `hint`): events, not spans (a line names its request by its own
/// `trace_id` field, so the output need not follow every span, which costs
/// work on each poll of each request); and one error of the OpenTelemetry
/// SDK per [`SDK_ERROR_EVERY`] (a dead collector is worth a line a minute,
/// not one per export).
fn output_filter<S>(hint: LevelFilter) -> impl Filter<S> {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let sdk_error = |meta: &Metadata<'_>| {
        meta.target().starts_with("opentelemetry") && *meta.level() == Level::ERROR
    };
    DynFilterFn::new(move |meta: &Metadata<'_>, _: &Context<'_, S>| {
        if !meta.is_event() || hint < *meta.level() {
            return false;
        }
        if !sdk_error(meta) {
            return true;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST.load(Ordering::Relaxed);
        (last == 0 || now >= last + SDK_ERROR_EVERY.as_secs())
            && LAST
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    })
    .with_max_level_hint(hint)
    // Decided once per call site, except the SDK's errors: those are
    // counted each time.
    .with_callsite_filter(move |meta| {
        if !meta.is_event() || hint < *meta.level() {
            Interest::never()
        } else if sdk_error(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    })
}

fn output(journal: bool) -> (BoxedLayer, Logging) {
    if journal && let Ok(journald) = tracing_journald::layer() {
        // No prefix: fields are KIND, STATUS, TRACE_ID, not F_KIND...
        return (
            Box::new(journald.with_field_prefix(None)),
            Logging::default(),
        );
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let logging = Logging {
        warning: None,
        dropped: Some(writer.error_counter()),
        _writer: Some(guard),
    };
    let layer = tracing_subscriber::fmt::layer()
        .fmt_fields(TextFields)
        .with_timer(Rfc3339Micros)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    (Box::new(layer), logging)
}

/// Fields on a text line as `name=value`, without the `otel.*` fields that
/// only steer the OpenTelemetry bridge: `request{trace_id=...}`.
#[derive(Debug)]
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    /// A plain word is written as is (`kind=timeout`); a string with spaces,
    /// quotes or `=` is quoted and escaped, so a line still splits cleanly.
    fn record_str(&mut self, field: &Field, value: &str) {
        let plain = !value
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'"' || b == b'=' || b.is_ascii_control());
        if field.name() == "message" || (plain && !value.is_empty()) {
            self.write(field, |w| w.write_str(value));
        } else {
            self.write(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, |w| write!(w, "{value:?}"));
    }
}

impl TextVisitor<'_> {
    /// `name=value` (the message bare), space-separated; the pieces are
    /// written one by one rather than through one format string per field.
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let w = &mut self.writer;
        let sep = if self.first {
            Ok(())
        } else {
            w.write_char(' ')
        };
        self.first = false;
        self.result = sep
            .and_then(|()| match field.name() {
                "message" => Ok(()),
                name => w.write_str(name).and_then(|()| w.write_char('=')),
            })
            .and_then(|()| value(w));
    }
}

/// Timestamps as the default timer writes them (RFC 3339, UTC, microseconds:
/// `2026-11-30T11:15:59.887009Z`), through humantime, which fills a buffer
/// by integer arithmetic where the default formats each part with
/// `core::fmt`: a fifth of an access line's cost.
struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{}", humantime::format_rfc3339_micros(SystemTime::now()))
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the stream it connected to
/// stderr; it only counts if stderr is still that stream (not redirected).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut line = String::new();
        Rfc3339Micros
            .format_time(&mut Writer::new(&mut line))
            .unwrap();
        // 2026-11-30T11:15:59.887009Z
        assert_eq!(line.len(), 27, "{line}");
        let shape: String = line
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.ddddddZ", "{line}");
    }
}
