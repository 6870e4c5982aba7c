//! Log output. Under systemd, when stderr is the journal (`JOURNAL_STREAM`
//! names our stderr), events go to journald natively with their fields
//! (`KIND`, `STATUS`, `TRACE_ID`...), so `journalctl -u service-b KIND=timeout`
//! works; otherwise they are text lines on stderr. `RUST_LOG` filters both
//! (default `info`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    layers.push(output());
    let _ = Registry::default()
        .with(layers.with_filter(filter))
        .try_init();
    warning
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
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal()),
    )
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
