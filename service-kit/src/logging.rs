//! Log output. Under systemd, when stderr is the journal (`JOURNAL_STREAM`
//! names our stderr), events go to journald natively with their fields
//! (`KIND`, `STATUS`, `TRACE_ID`...), so `journalctl -u service-b KIND=timeout`
//! works; otherwise they are text lines on stderr. `RUST_LOG` filters both
//! (default `info`).

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// OpenTelemetry's own complaints (a collector that is down fails every
/// export) are let through at most this often.
pub const SDK_ERROR_EVERY: Duration = Duration::from_secs(60);

/// A layer on the global subscriber (the OpenTelemetry bridge, for one).
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber with `extra` layers besides the output.
/// Returns a warning to log once logging works (a bad `RUST_LOG`, say).
pub fn init(extra: Vec<BoxedLayer>) -> Option<String> {
    let (filter, warning) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) if std::env::var_os("RUST_LOG").is_some() => (
            EnvFilter::new("info"),
            Some(format!(
                "RUST_LOG is not a valid filter ({e}); using \"info\""
            )),
        ),
        Err(_) => (EnvFilter::new("info"), None),
    };
    let mut layers = extra;
    layers.push(output().with_filter(rate_limit_sdk_errors()).boxed());
    let _ = Registry::default()
        .with(layers.with_filter(filter))
        .try_init();
    warning
}

/// Lets one error of the OpenTelemetry SDK through per [`SDK_ERROR_EVERY`]:
/// a dead collector is worth a line a minute, not one per export.
fn rate_limit_sdk_errors() -> FilterFn {
    static LAST: AtomicU64 = AtomicU64::new(0);
    FilterFn::new(|meta| {
        // Only errors repeat per export; warnings (spans dropped because the
        // queue is full) are logged once by the SDK and always get through.
        if !meta.target().starts_with("opentelemetry")
            || !meta.is_event()
            || *meta.level() != tracing::Level::ERROR
        {
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
}

fn output() -> BoxedLayer {
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        // No prefix: fields are KIND, STATUS, TRACE_ID, not F_KIND...
        return Box::new(journald.with_field_prefix(None));
    }
    Box::new(
        tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal()),
    )
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
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{value:?}"),
            name => write!(self.writer, "{sep}{name}={value:?}"),
        };
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
