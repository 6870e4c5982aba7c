//! The life of a daemon, shared by both: read settings, build the app, take
//! the listening socket, tell systemd, serve (re-reading what can change on
//! SIGHUP) until SIGTERM/SIGINT, drain, exit with a status that says what
//! happened.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use clap::{Args, Command, FromArgMatches};
use salvo::fuse::FuseConfig;
use salvo::{Router, Server, Service};

use crate::cli::{self, ConfigError, EXIT_CONFIG, EXIT_RUNTIME, ServerSettings, show_duration};
use crate::connection::{ClockedAcceptor, Clocks};
use crate::listener::{self, Origin};
use crate::observe::Observe;
use crate::policy::ResponsePolicy;
use crate::signals::{self, Event, Shutdown};
use crate::telemetry::{FLUSH_BOUND, Telemetry, TelemetrySettings};
use crate::watchdog::Watchdog;
use crate::{logging, notify};

/// What a daemon tells the shared lifecycle about itself.
pub trait Daemon: 'static {
    /// Program name, used in messages (`service-a`).
    const NAME: &'static str;
    /// One-line description for `--help`.
    const ABOUT: &'static str;
    /// Version for `--version`.
    const VERSION: &'static str;
    /// Prefix of the daemon's environment variables (`SERVICE_A`).
    const ENV_PREFIX: &'static str;
    /// Default `--listen` address.
    const DEFAULT_LISTEN: &'static str;
    /// The daemon's own settings, on top of [`ServerSettings`].
    type Args: Args + FromArgMatches;

    /// Builds the routes from settings that clap has already validated
    /// one by one. [`StartError::Config`] for settings that contradict each
    /// other (exit 2), [`StartError::Startup`] for a failure to start (exit 1).
    fn build(settings: &ServerSettings, args: Self::Args) -> Result<App, StartError>;
}

/// Why a daemon did not start; its exit status follows from the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// A bad setting, or settings that contradict each other: exit 2.
    Config(ConfigError),
    /// The settings are fine but starting failed (a port in use, no
    /// runtime, no HTTP client): exit 1.
    Startup(String),
}

impl StartError {
    /// A [`StartError::Config`] with this message, which names the settings.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config(ConfigError(message.into()))
    }

    /// The exit status this failure is reported with.
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Startup(_) => EXIT_RUNTIME,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Startup(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// Re-reads what a daemon can change while running; the new summary, or
/// why the change was refused (the old settings then stay). It may block
/// (it reads files): it runs on a blocking thread.
pub type Reload = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A built daemon, ready to serve.
pub struct App {
    /// The daemon's routes.
    pub router: Router,
    /// What this instance does, in words (`upstream http://..., deadline 1s`),
    /// for `systemctl status` and `--check-config`.
    pub summary: String,
    /// What SIGHUP (`systemctl reload`) does, if anything.
    pub reload: Option<Reload>,
}

impl App {
    /// Routes and their summary; nothing to reload.
    pub fn new(router: Router, summary: String) -> Self {
        Self {
            router,
            summary,
            reload: None,
        }
    }

    /// What SIGHUP re-reads.
    pub fn on_reload(
        mut self,
        reload: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.reload = Some(Arc::new(reload));
        self
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("summary", &self.summary)
            .field("reload", &self.reload.is_some())
            .finish_non_exhaustive()
    }
}

/// Wraps a daemon's routes with what every request gets: observed (the
/// server span and metrics, the access log) from outside, the response
/// policy (the common headers, the JSON 404/405) inside, so what is
/// observed is what is sent. Tests use this too, so they see what the
/// network sees.
pub fn service<D: Daemon>(router: Router) -> Service {
    Service::new(router)
        .hoop(Observe::new(D::NAME))
        .hoop(ResponsePolicy)
}

/// The whole program; `main.rs` of each daemon calls only this.
pub fn main<D: Daemon>() -> ExitCode {
    // SIGHUP first, then the runtime and every signal the daemon handles,
    // before anything else: see the signals module.
    if let Err(e) = signals::catch_sighup_at_once() {
        return fail::<D>(&StartError::Startup(format!("cannot handle SIGHUP: {e}")));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail::<D>(&StartError::Startup(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let shutdown = match runtime.block_on(async { Shutdown::register() }) {
        Ok(shutdown) => shutdown,
        Err(e) => {
            return fail::<D>(&StartError::Startup(format!("cannot handle signals: {e}")));
        }
    };
    // The daemon's Args doc comment would become the about text: set ours last.
    let shared = cli::with_server_args(Command::new(D::NAME), D::ENV_PREFIX, D::DEFAULT_LISTEN);
    let cmd = D::Args::augment_args(shared)
        .version(D::VERSION)
        .about(D::ABOUT);
    let parsed = cmd.clone().try_get_matches().and_then(|m| {
        let own = D::Args::from_arg_matches(&m)?;
        Ok((ServerSettings::from_matches(&m)?, own))
    });
    let (settings, args) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return cli::report_cli_error(D::NAME, &cmd, &e),
    };
    if let Some(pid) = settings.reload {
        return crate::reload::request(D::NAME, pid);
    }
    if let Err(e) = settings.check(D::ENV_PREFIX) {
        return fail::<D>(&e.into());
    }
    raise_fd_limit();
    let otel = match TelemetrySettings::from_env() {
        Ok(otel) => otel,
        Err(e) => return fail::<D>(&StartError::config(e)),
    };
    // --check-config starts no exporter: it only reads settings.
    let (telemetry, otel_layer) = if settings.check_config {
        (Telemetry::default(), None)
    } else {
        match Telemetry::start(&otel, D::NAME, D::VERSION) {
            Ok(started) => started,
            Err(e) => return fail::<D>(&StartError::Startup(e)),
        }
    };
    let logging = logging::init(otel_layer.into_iter().collect());
    if let Some(warning) = &logging.warning {
        tracing::warn!("{warning}");
    }
    let code = runtime.block_on(async {
        logging.spawn_drop_reports();
        match run::<D>(settings, args, otel, shutdown).await {
            Ok(code) => {
                telemetry.shutdown(FLUSH_BOUND).await;
                code
            }
            // It never served: nothing to flush, and no reason to wait.
            Err(e) => {
                telemetry.abandon();
                fail::<D>(&e)
            }
        }
    });
    // A flush that gave up may still block a thread on a collector that
    // never answers; dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    // Then the lines still buffered are written (within a second).
    drop(logging);
    code
}

async fn run<D: Daemon>(
    settings: ServerSettings,
    args: D::Args,
    otel: TelemetrySettings,
    mut shutdown: Shutdown,
) -> Result<ExitCode, StartError> {
    let app = D::build(&settings, args)?;
    if settings.check_config {
        #[allow(clippy::print_stdout)] // --check-config's answer is its output.
        {
            println!(
                "{}: configuration OK: listen {}, shutdown timeout {}; {}; {}",
                D::NAME,
                settings.listen,
                show_duration(settings.shutdown_timeout),
                app.summary,
                otel.summary()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (acceptor, addr, origin) = listener::acquire(settings.listen).await.map_err(|e| {
        let setting = format!("--listen / {}_LISTEN", D::ENV_PREFIX);
        StartError::Startup(format!(
            "cannot listen on {} ({setting}): {e}",
            settings.listen
        ))
    })?;

    let limits = settings.limits;
    // The header and idle timeouts are the connection's own clocks (see the
    // connection module): hyper's header clock, and salvo's, which counts
    // any silence (a slow answer too), are off.
    let fuse = FuseConfig::default()
        .with_http1_header_timeout(None)
        .with_connection_idle_timeout(None);
    let clocks = Clocks {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
    };
    let acceptor = ClockedAcceptor::new(acceptor, clocks);
    let intake = acceptor.intake();
    let mut server = Server::new(acceptor)
        .fuse_config(fuse)
        .max_connections(limits.max_connections);
    server
        .http1_mut()
        .max_buf_size(limits.max_header_bytes)
        .header_read_timeout(None);
    let handle = server.handle();
    let mut serving = tokio::spawn(server.try_serve(service::<D>(app.router)));

    let socket = match origin {
        Origin::Bound => "",
        Origin::Inherited => " (socket from systemd)",
    };
    let status_of =
        |summary: &str| format!("serving on {addr}{socket}; {summary}; {}", otel.summary());
    let status = Arc::new(Mutex::new(status_of(&app.summary)));
    let status_now = |s: &Mutex<String>| s.lock().unwrap_or_else(PoisonError::into_inner).clone();
    tracing::info!(version = D::VERSION, "{}", status_now(&status));
    // Decided, and said, before READY=1: a reader of the log knows whether
    // keep-alives are coming.
    let watchdog = match Watchdog::from_env() {
        Ok(watchdog) => watchdog,
        Err(warning) => {
            tracing::warn!("{warning}");
            None
        }
    };
    if let Some(watchdog) = &watchdog {
        tracing::info!("{}", watchdog.describe());
    }
    notify::ready(&status_now(&status));
    let watchdog = watchdog.map(|watchdog| watchdog.spawn(addr, status.clone()));

    let signal = loop {
        tokio::select! {
            event = shutdown.recv() => match event {
                Event::Stop(signal) => break signal,
                Event::Reload => {
                    reload(app.reload.clone(), &status, &status_of).await;
                }
            },
            ended = &mut serving => {
                let why = match ended {
                    Ok(Ok(())) => "the server stopped on its own".to_owned(),
                    Ok(Err(e)) => format!("the server failed: {e}"),
                    Err(e) => format!("the server task failed: {e}"),
                };
                // It served: a failure at run time (exit 1), and telemetry to flush.
                eprintln!("{}: {why}", D::NAME);
                return Ok(ExitCode::from(EXIT_RUNTIME));
            }
        }
    };
    // The drain closes the listening socket, so the watchdog's self-check
    // would fail: it stops here (systemd, told STOPPING=1, stops watching),
    // and once it has, nothing but the drain writes STATUS=.
    if let Some(watchdog) = watchdog {
        watchdog.abort();
        let _ = watchdog.await;
    }
    let grace = show_duration(settings.shutdown_timeout);
    tracing::info!("{signal} received: draining in-flight requests for up to {grace}");
    notify::stopping(&format!("{signal} received, draining for up to {grace}"));
    // No new connection; those accepted already are read from before the
    // graceful stop, which would close them unread (see the connection
    // module).
    intake.stop();
    intake.settled(SETTLE_WITHIN).await;
    handle.stop_graceful(Some(settings.shutdown_timeout));
    tokio::select! {
        _ = &mut serving => {}
        signal = shutdown.stopped() => {
            tracing::warn!("{signal} received again: stopping now");
            handle.stop_forceful();
            let _ = serving.await;
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How long a drain waits for accepted connections to be read from.
const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// SIGHUP: tells systemd a reload runs (`RELOADING=1`), re-reads on a
/// blocking thread, says `READY=1` with the status line of what is now in
/// force, and answers a waiting `systemctl reload` ([`crate::reload`]). A
/// refused change is one ERROR line; the settings in force stay. The reload
/// is a span of its own (a `tracing` span, bridged by tracing-opentelemetry),
/// so a trace view shows when a fault was switched, next to the requests it
/// changed.
async fn reload(
    reload: Option<Reload>,
    status: &Mutex<String>,
    status_of: &dyn Fn(&str) -> String,
) {
    let Some(reload) = reload else {
        tracing::info!("SIGHUP received: nothing to reload");
        crate::reload::answer(&Ok("nothing to reload".to_owned()));
        return;
    };
    let span = tracing::info_span!(
        "reload",
        otel.name = "reload",
        otel.kind = "internal",
        "reload.outcome" = tracing::field::Empty,
        "reload.settings" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    notify::reloading("reloading");
    let outcome = tokio::task::spawn_blocking(move || reload())
        .await
        .unwrap_or_else(|e| Err(format!("the reload failed: {e}")));
    let _entered = span.enter();
    let line = match &outcome {
        Ok(summary) => {
            let line = status_of(summary);
            *status.lock().unwrap_or_else(PoisonError::into_inner) = line.clone();
            span.record("reload.outcome", "applied");
            span.record("reload.settings", summary.as_str());
            tracing::info!("reloaded: {summary}");
            line
        }
        Err(e) => {
            span.record("reload.outcome", "refused");
            span.record("otel.status_code", "error");
            span.record("otel.status_description", e.as_str());
            tracing::error!("reload refused, the settings in force stay: {e}");
            status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    };
    notify::ready(&line);
    crate::reload::answer(&outcome);
}

/// Lifts the soft limit on open files to the hard one: each connection is a
/// file, and a soft limit of 1024 (the usual default) would stop accepting
/// long before `--max-connections`. Under systemd, `LimitNOFILE=` sets both.
fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// The one line a failure to start prints, and its exit status.
fn fail<D: Daemon>(e: &StartError) -> ExitCode {
    eprintln!("{}: {e}", D::NAME);
    ExitCode::from(e.exit_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_follows_from_the_kind_of_failure() {
        let bad = StartError::config("--upstream-timeout must be below --shutdown-timeout");
        assert_eq!(bad.exit_status(), 2);
        assert_eq!(
            bad.to_string(),
            "--upstream-timeout must be below --shutdown-timeout"
        );
        let broken = StartError::Startup("cannot listen".to_owned());
        assert_eq!(broken.exit_status(), 1);
    }
}
