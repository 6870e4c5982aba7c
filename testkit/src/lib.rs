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
mod fake;
mod otlp;
mod process;
mod prom;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use client::{Client, Reply, get_in_process, request_in_process};
pub use fake::{Behaviour, FakeUpstream, Recorded};
pub use otlp::{Attr, OtlpReceiver, Point, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, Span};
pub use process::{Exited, Proc, ProcBuilder, Sig};
pub use prom::{
    MetricsBackend, Prometheus, Sample, duration_secs, read_yaml, stack_dir, tools_dir,
};

/// Path of one of the workspace's binaries, next to the test executable.
/// `cargo test --workspace` builds every binary before any test runs.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics after `timeout` saying
/// what was awaited. The way to wait for something: never a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// An address on which nothing listens (bound, then released).
pub fn unused_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
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
