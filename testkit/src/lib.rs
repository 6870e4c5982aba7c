//! Test harness shared by both daemons' tests.
//!
//! - [`Proc`]: a daemon started as a real process on port 0. It is ready when
//!   it says `READY=1` on a notify socket the harness owns (the same
//!   protocol systemd speaks), which also tells the harness the bound port.
//! - [`FakeUpstream`]: a small real TCP server that misbehaves on purpose
//!   (hangs, trickles, sends garbage...) in place of service-a.
//! - [`Client`]: an HTTP client that returns status, parsed JSON and latency.
//!
//! A harness panics on failure: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod client;
pub mod compose;
mod fake;
pub mod jaeger;
mod otlp;
mod process;
pub mod program;
mod prom;
pub mod systemd;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use client::{Client, Reply, get_in_process, request_in_process};
pub use fake::{Behaviour, FakeUpstream, Recorded};
pub use otlp::{Attr, OtlpReceiver, Point, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, Span};
pub use process::{Exited, NotifyForm, Proc, ProcBuilder, Sig};
pub use prom::{
    MetricsBackend, Prometheus, Sample, duration_secs, read_yaml, stack_dir, tools_dir,
};

/// Path of one of the workspace's binaries, next to the test executable,
/// for a test that cannot name it with `env!("CARGO_BIN_EXE_<name>")` (that
/// is set only in the tests of the crate that owns the binary; prefer it,
/// through [`Daemon`]). `cargo test -p service-b` does not build
/// service-a's binary, so a binary older than the sources it is built from
/// is refused, by the rule cargo itself uses (modification times), rather
/// than tested in place of the code at hand.
///
/// Why not escargot, which would build the binary from the test: it runs
/// `cargo build` of that one package, and cargo resolves its features apart
/// from the workspace's test build (here libc, futures-util and reqwest get
/// fewer), so most of the dependency tree is built a second time, the two
/// builds take turns replacing `target/debug/service-a`, and the first
/// build happens inside a test with a timeout. A clear refusal of a stale
/// binary costs none of that.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    if let Some(newer) = newer_source(&path, name) {
        panic!(
            "{} is older than {}: it was not built from this source. Build it \
             (`cargo build -p {name}`) or run `cargo test --workspace`",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A source of the workspace binary `name` (its crate's and service-kit's
/// `src/`, and the lock file) modified after `binary` was built, if any.
/// Manifests are left out: cargo rebuilds nothing for a change it deems
/// irrelevant to the binary (the `.deb`'s metadata in `service-b/Cargo.toml`),
/// and a dependency that changes changes the lock file too.
fn newer_source(binary: &Path, name: &str) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut todo = vec![root.join("Cargo.lock")];
    for krate in [name, "service-kit"] {
        todo.push(root.join(krate).join("src"));
    }
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).ok()?;
            todo.extend(entries.flatten().map(|e| e.path()));
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

/// One daemon under test, for the checks both daemons share
/// ([`program`], [`systemd`], run by [`daemon_contract_tests`]).
#[derive(Debug, Clone, Copy)]
pub struct Daemon {
    /// `service-a`.
    pub name: &'static str,
    /// `env!("CARGO_BIN_EXE_service-a")` in the daemon's own tests: cargo
    /// builds that binary from the current source before they run.
    pub bin: &'static str,
    /// Prefix of its variables (`SERVICE_A`).
    pub env_prefix: &'static str,
    /// The port of its default `--listen`.
    pub default_port: u16,
    /// How its `--help` starts.
    pub about: &'static str,
}

impl Daemon {
    /// A process of this daemon, as [`ProcBuilder::new`] sets it up.
    pub fn proc(&self) -> ProcBuilder {
        ProcBuilder::at(self.bin)
    }
}

/// Defines, in a daemon's integration tests, one `#[tokio::test]` per check
/// both daemons share, each run against `$daemon` (a [`Daemon`]).
#[macro_export]
macro_rules! daemon_contract_tests {
    ($daemon:expr) => {
        $crate::daemon_contract_tests!(@each $daemon;
            program::help_documents_every_flag_with_its_variable_and_default,
            program::version_prints_and_exits_0,
            program::a_bad_setting_is_one_line_naming_flag_and_variable_and_exit_2,
            program::an_absurd_duration_is_refused_at_start_naming_the_range,
            program::an_unknown_flag_is_one_line_and_exit_2,
            program::a_port_in_use_is_one_line_and_exit_1,
            program::check_config_validates_without_listening,
            program::sigterm_and_sigint_stop_cleanly_with_status_0,
            program::the_shipped_settings_files_show_every_setting_with_its_default,
            program::every_answer_carries_the_common_headers,
            program::a_sighup_while_starting_is_not_fatal,
            program::an_idle_connection_lasts_the_idle_timeout_and_no_shorter,
            program::a_stalled_log_reader_stalls_no_answer_and_drops_are_counted,
            program::a_stop_answers_every_connection_it_accepted,
            program::a_request_whose_client_left_while_the_daemon_was_frozen_is_recorded,
            systemd::ready_comes_with_a_status_a_person_can_read_and_only_once_serving,
            systemd::stopping_is_announced_when_the_drain_starts,
            systemd::ready_arrives_on_a_notify_socket_of_either_form,
            systemd::watchdog_pings_at_half_the_interval_and_stop_when_the_process_is_frozen,
            systemd::watchdog_stops_when_the_daemon_stops_accepting,
            systemd::watchdog_values_systemd_never_sends_neither_panic_nor_spin,
            systemd::no_watchdog_pings_unless_asked,
            systemd::a_socket_from_systemd_is_served_instead_of_binding,
            systemd::the_status_names_each_signals_collector,
        );
    };
    (@each $daemon:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $crate::$module::$test(&$daemon).await;
            }
        )*
    };
}

/// Polls `check` until it returns `Some`, or panics after `timeout` saying
/// what was awaited. The way to wait for something: never a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(what, timeout, Duration::from_millis(20), || {
        let attempt = check();
        async move { attempt.await.ok_or_else(String::new) }
    })
    .await
}

/// [`eventually`] for a check that costs its target something (a query to
/// a server): polls every `every`, and `check` says why an attempt failed
/// (the panic after `timeout` shows the last reason, when not empty).
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(v) => return v,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}{why}",
            if why.is_empty() { "" } else { "; last: " }
        );
        tokio::time::sleep(every).await;
    }
}

/// Percent-encodes `msg` as a form value, the way a browser would.
pub fn form_encode(msg: &str) -> String {
    url::form_urlencoded::byte_serialize(msg.as_bytes()).collect()
}

/// Serves `service` in this process on `127.0.0.1:0` until the test ends;
/// returns its address.
pub async fn serve_in_process(service: salvo::Service) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
    tokio::spawn(salvo::Server::new(acceptor).try_serve(service));
    addr
}

/// A free address for a program that must bind it itself (a port chosen by
/// binding `:0`, then released). Another process may take the port in
/// between: use it only where no listener can be handed over (a program
/// that takes no socket), and [`refused_addr`] where nothing must listen.
pub fn unused_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An address where every connection is refused, for as long as the test
/// binary runs: a socket bound to it but not listening holds the port, so
/// no other process can take it (as could happen to a port merely freed).
pub fn refused_addr() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held for the process's life: the port stays bound and refusing.
    std::mem::forget(socket);
    addr
}

/// A server that accepts connections and never answers, for the whole test
/// binary's life (a plain thread: it outlives each test's runtime).
pub fn black_hole() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        addr
    })
}

/// Lifts this process's soft limit on open files to the hard limit, for
/// tests that open thousands of connections (the daemons it starts inherit it).
pub fn raise_fd_limit() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`...).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Runs `bench/traffic.py` against service-b at `base_url` with `args`
/// (`--rate`, `--duration`...) and returns its summary (`--json`).
pub async fn traffic(base_url: &str, args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/traffic.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", base_url, "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "traffic.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// How many answers of `kind` (`ok`, `upstream_status`...) a [`traffic`]
/// summary counts.
pub fn traffic_count(summary: &serde_json::Value, kind: &str) -> u64 {
    summary["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| o["count"].as_u64().unwrap())
        .sum()
}
