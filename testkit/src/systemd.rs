//! The systemd protocols, spoken by a daemon's real binary to this harness,
//! which plays systemd's part: the notify socket (`READY=1`, `STATUS=`,
//! `STOPPING=1`, as a path or `@name`), the watchdog (`WATCHDOG_USEC`), and
//! socket activation (`LISTEN_FDS`, through systemd's own
//! `systemd-socket-activate`). Each function is one test, run against one
//! daemon by [`crate::daemon_contract_tests`]. The same behaviours under a
//! real systemd: `deploy/tests/units.sh`.

use std::time::Duration;

use crate::{Client, Daemon, NotifyForm, Proc, ProcBuilder, Sig, eventually, unused_addr};

/// systemd's `WatchdogSec=400ms`, as `WATCHDOG_USEC`.
const WATCHDOG: Duration = Duration::from_millis(400);

/// Notifications that have `line` as one of their lines.
pub fn count(notes: &[String], line: &str) -> usize {
    notes
        .iter()
        .filter(|n| n.lines().any(|l| l == line))
        .count()
}

/// The `STATUS=` text of the last notification that had one.
pub fn last_status(proc: &Proc) -> Option<String> {
    let notes = proc.notifications().concat();
    notes
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS="))
        .next_back()
        .map(str::to_owned)
}

fn with_watchdog(d: &Daemon) -> ProcBuilder {
    d.proc()
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
}

fn pings(proc: &Proc) -> usize {
    count(&proc.notifications(), "WATCHDOG=1")
}

async fn wait_pings(proc: &Proc, what: &str, at_least: usize) {
    eventually(what, Duration::from_secs(10), || {
        let n = pings(proc);
        async move { (n >= at_least).then_some(()) }
    })
    .await;
}

/// `READY=1` once, only when serving, with a `STATUS=` a person can read.
pub async fn ready_comes_with_a_status_a_person_can_read_and_only_once_serving(d: &Daemon) {
    let proc = d.proc().spawn().await;
    // READY=1 was sent: the socket must already accept, no retry needed.
    let health = Client::new().get(&proc.url("/health")).await;
    assert_eq!(health.status, 200);
    let notes = proc.notifications();
    assert_eq!(count(&notes, "READY=1"), 1, "{notes:?}");
    let status = last_status(&proc).unwrap();
    assert!(
        status.starts_with(&format!("serving on {}", proc.addr)),
        "{status}"
    );
    assert!(status.contains("OTLP traces and metrics to"), "{status}");
}

/// `STOPPING=1` and a `STATUS=` when SIGTERM starts the drain.
pub async fn stopping_is_announced_when_the_drain_starts(d: &Daemon) {
    let mut proc = d.proc().spawn().await;
    proc.signal(Sig::SIGTERM);
    proc.wait_exit(Duration::from_secs(10)).await;
    let notes = proc.notifications();
    assert_eq!(count(&notes, "STOPPING=1"), 1, "{notes:?}");
    assert!(
        notes.concat().contains("STATUS=SIGTERM received, draining"),
        "{notes:?}"
    );
}

/// sd_notify(3): `NOTIFY_SOCKET` is a path, or `@name` in the abstract namespace.
pub async fn ready_arrives_on_a_notify_socket_of_either_form(d: &Daemon) {
    for form in [NotifyForm::Path, NotifyForm::Abstract] {
        let proc = d.proc().notify_socket(form).spawn().await;
        let health = Client::new().get(&proc.url("/health")).await;
        assert_eq!(
            health.status, 200,
            "{} with a {form:?} notify socket",
            d.name
        );
    }
}

/// Keep-alives at half the interval; a frozen process sends none, so the
/// watchdog expires; they resume on SIGCONT.
pub async fn watchdog_pings_at_half_the_interval_and_stop_when_the_process_is_frozen(d: &Daemon) {
    let proc = with_watchdog(d).spawn().await;
    wait_pings(&proc, "5 watchdog pings", 5).await;
    // Half the interval between pings, give or take a loaded machine.
    let times = proc.notification_times("WATCHDOG=1");
    let spread = times[4] - times[0];
    assert!(
        spread >= WATCHDOG / 2 * 4 * 9 / 10,
        "{}: 5 pings in {spread:?}",
        d.name
    );
    proc.signal(Sig::SIGSTOP);
    proc.wait_watchdog_expiry(WATCHDOG, Duration::from_secs(10))
        .await;
    let frozen = pings(&proc);
    proc.signal(Sig::SIGCONT);
    wait_pings(&proc, "pings to resume", frozen + 1).await;
}

/// The wedge a user meets: every connection slot held by clients that send
/// nothing (a slowloris, a stuck proxy), so the accept loop takes no new
/// connection. The timer task still runs; the daemon does not serve. Its
/// keep-alives must stop, so systemd restarts it, and `systemctl status`
/// says why; they resume once it serves again.
pub async fn watchdog_stops_when_the_daemon_stops_accepting(d: &Daemon) {
    let proc = with_watchdog(d)
        .args(["--max-connections", "2", "--header-timeout", "1h"])
        .spawn()
        .await;
    wait_pings(&proc, "a first ping", 1).await;
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(proc.addr).unwrap())
        .collect();
    proc.wait_watchdog_expiry(WATCHDOG, Duration::from_secs(10))
        .await;
    let notes = proc.notifications().concat();
    assert!(
        notes.contains("STATUS=watchdog: GET /health on"),
        "{} did not say why: {notes:?}",
        d.name
    );
    let wedged = pings(&proc);
    drop(idle);
    wait_pings(&proc, "pings to resume once it serves", wedged + 1).await;
    let status = last_status(&proc).unwrap();
    assert!(status.starts_with("serving on"), "{status}");
}

/// `WATCHDOG_USEC=0` (invalid per sd_watchdog_enabled(3)) turns the watchdog
/// off with a warning; `1` (1 µs, unmeetable) is checked every 10 ms at
/// most rather than spun on. Neither panics.
pub async fn watchdog_values_systemd_never_sends_neither_panic_nor_spin(d: &Daemon) {
    let proc = d.proc().env("WATCHDOG_USEC", "0").spawn().await;
    proc.wait_for_log("WATCHDOG_USEC", Duration::from_secs(10))
        .await;
    assert_eq!(Client::new().get(&proc.url("/health")).await.status, 200);
    let logs = proc.logs();
    assert!(logs.contains("watchdog off"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(pings(&proc), 0);

    let proc = d.proc().env("WATCHDOG_USEC", "1").spawn().await;
    wait_pings(&proc, "5 watchdog pings", 5).await;
    let times = proc.notification_times("WATCHDOG=1");
    assert!(
        times[4] - times[0] >= Duration::from_millis(36),
        "5 pings in {:?}",
        times[4] - times[0]
    );
    assert!(!proc.logs().contains("panicked"), "{}", proc.logs());
}

/// No `WATCHDOG_USEC`, or one meant for another process: no keep-alives.
pub async fn no_watchdog_pings_unless_asked(d: &Daemon) {
    let not_ours = [
        vec![],
        // Set for another process (a wrapper's child): not ours to answer.
        vec![("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")],
    ];
    for envs in not_ours {
        let mut builder = d.proc();
        for (k, v) in &envs {
            builder = builder.env(*k, *v);
        }
        let proc = builder.spawn().await;
        // The watchdog is decided, and logged, before READY=1; the access
        // line of this request comes after it.
        assert_eq!(Client::new().get(&proc.url("/health")).await.status, 200);
        proc.wait_for_log("GET /health 200", Duration::from_secs(10))
            .await;
        assert!(
            !proc.logs().contains("watchdog on"),
            "{envs:?}: {}",
            proc.logs()
        );
        assert_eq!(pings(&proc), 0, "{envs:?}");
    }
}

/// With `LISTEN_FDS` the daemon serves systemd's socket, not `--listen`,
/// and its watchdog checks itself through that socket.
pub async fn a_socket_from_systemd_is_served_instead_of_binding(d: &Daemon) {
    let addr = unused_addr();
    let listen = addr.to_string();
    // --listen names a port that is taken: it must not be used.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ignored = taken.local_addr().unwrap().to_string();
    let mut proc = d
        .proc()
        .no_listen()
        .args(["--listen", &ignored])
        .via(&[
            "systemd-socket-activate",
            "-l",
            &listen,
            "-E",
            "NOTIFY_SOCKET",
            "-E",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "-E",
            "WATCHDOG_USEC",
        ])
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .spawn_unready();
    // The daemon starts on the first connection, which waits in the
    // kernel's queue meanwhile and is then served. (Retried only until
    // systemd-socket-activate has bound the address.)
    let first = tokio::spawn({
        let url = format!("http://{addr}/health");
        async move {
            eventually("the activation socket", Duration::from_secs(10), || {
                let url = url.clone();
                async move { Client::new().try_get(&url).await.ok() }
            })
            .await
        }
    });
    proc.wait_ready().await;
    assert_eq!(proc.addr, addr);
    assert_eq!(first.await.unwrap().status, 200);
    let status = proc.notifications().concat();
    assert!(status.contains("(socket from systemd)"), "{status}");
    // The watchdog's self-check reaches the daemon through that socket.
    wait_pings(&proc, "keep-alives through the inherited socket", 2).await;
    proc.signal(Sig::SIGTERM);
    assert_eq!(
        proc.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

/// SIGTERM with a request in flight: the drain runs, the listening socket is
/// closed on purpose, and the watchdog's self-check would fail. It stops
/// when the drain starts (systemd, told `STOPPING=1`, stops watching too),
/// so a clean stop logs no watchdog ERROR and `STATUS=` keeps saying
/// "draining". `builder` starts a daemon on which `GET hung` never answers.
pub async fn the_watchdog_keeps_quiet_through_a_drain(builder: ProcBuilder, hung: &str) {
    let mut proc = builder
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .args(["--shutdown-timeout", "3s"])
        .spawn()
        .await;
    wait_pings(&proc, "a first ping", 1).await;
    let fds = crate::open_fds(proc.pid());
    let url = proc.url(hung);
    let in_flight = tokio::spawn(async move { Client::new().try_get(&url).await });
    let pid = proc.pid();
    eventually(
        "the hung request's connection",
        Duration::from_secs(10),
        || {
            let now = crate::open_fds(pid);
            async move { (now > fds).then_some(()) }
        },
    )
    .await;
    proc.signal(Sig::SIGTERM);
    proc.wait_exit(Duration::from_secs(10)).await;
    let _ = in_flight.await;
    let logs = proc.logs();
    assert!(!logs.contains("watchdog: GET /health"), "{logs}");
    let notes = proc.notifications();
    let stopping = notes
        .iter()
        .position(|n| n.lines().any(|l| l == "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 in {notes:?}"));
    let after: Vec<&String> = notes[stopping..]
        .iter()
        .filter(|n| n.contains("STATUS="))
        .collect();
    assert!(
        after.iter().all(|n| !n.contains("STATUS=watchdog")),
        "the drain's status was replaced: {after:?}"
    );
}

/// `STATUS=` (what `systemctl status` shows) names where each signal is
/// exported, the per-signal endpoints included: a user checking why no
/// trace arrives reads the address the daemon really sends to.
pub async fn the_status_names_each_signals_collector(d: &Daemon) {
    let traces = "http://127.0.0.1:9/v1/traces";
    let metrics = "http://127.0.0.1:7/v1/metrics";
    let proc = d
        .proc()
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics)
        .spawn()
        .await;
    let status = last_status(&proc).unwrap();
    assert!(
        status.contains(&format!("OTLP traces to {traces}, metrics to {metrics}")),
        "{}: {status}",
        d.name
    );
    // One per-signal variable: the other signal goes to the base endpoint.
    let base = proc.url("").replace("http://", "http://base-");
    let proc = d
        .proc()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics)
        .spawn()
        .await;
    let status = last_status(&proc).unwrap();
    assert!(
        status.contains(&format!("OTLP traces to {base}, metrics to {metrics}")),
        "{}: {status}",
        d.name
    );
}
