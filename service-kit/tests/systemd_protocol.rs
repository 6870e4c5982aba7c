//! The systemd protocols, spoken by the real binaries to a harness that
//! plays systemd's part: the notify socket (`READY=1`, `STATUS=`,
//! `STOPPING=1`), the watchdog (`WATCHDOG_USEC`), and socket activation
//! (`LISTEN_FDS`, through systemd's own `systemd-socket-activate`).
//! The same behaviours under a real systemd: `deploy/test-systemd.sh`.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use testkit::{Client, NotifyForm, Proc, ProcBuilder, Sig, eventually, unused_addr};

const DAEMONS: [&str; 2] = ["service-a", "service-b"];

fn count(notes: &[String], line: &str) -> usize {
    notes
        .iter()
        .filter(|n| n.lines().any(|l| l == line))
        .count()
}

#[tokio::test]
async fn ready_comes_with_a_status_a_person_can_read_and_only_once_serving() {
    for name in DAEMONS {
        let proc = ProcBuilder::new(name).spawn().await;
        // READY=1 was sent: the socket must already accept, no retry needed.
        let health = Client::new().get(&proc.url("/health")).await;
        assert_eq!(health.status, 200);
        let notes = proc.notifications();
        assert_eq!(count(&notes, "READY=1"), 1, "{notes:?}");
        let status = notes
            .iter()
            .flat_map(|n| n.lines())
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap();
        assert!(
            status.starts_with(&format!("serving on {}", proc.addr)),
            "{status}"
        );
        if name == "service-b" {
            assert!(
                status.contains("upstream http://127.0.0.1:8080/echo, deadline 1s"),
                "{status}"
            );
        }
        assert!(status.contains("OTLP traces and metrics to"), "{status}");
    }
}

#[tokio::test]
async fn stopping_is_announced_when_the_drain_starts() {
    for name in DAEMONS {
        let mut proc = ProcBuilder::new(name).spawn().await;
        proc.signal(Sig::SIGTERM);
        proc.wait_exit(Duration::from_secs(10)).await;
        let notes = proc.notifications();
        assert_eq!(count(&notes, "STOPPING=1"), 1, "{notes:?}");
        assert!(
            notes.concat().contains("STATUS=SIGTERM received, draining"),
            "{notes:?}"
        );
    }
}

#[tokio::test]
async fn ready_arrives_on_a_notify_socket_of_either_form() {
    // sd_notify(3): NOTIFY_SOCKET is a path, or `@name` in the abstract namespace.
    for name in DAEMONS {
        for form in [NotifyForm::Path, NotifyForm::Abstract] {
            let proc = ProcBuilder::new(name).notify_socket(form).spawn().await;
            let health = Client::new().get(&proc.url("/health")).await;
            assert_eq!(health.status, 200, "{name} with a {form:?} notify socket");
        }
    }
}

/// systemd's `WatchdogSec=400ms`, as `WATCHDOG_USEC`.
const WATCHDOG: Duration = Duration::from_millis(400);

fn with_watchdog(name: &str) -> ProcBuilder {
    ProcBuilder::new(name).env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
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

#[tokio::test]
async fn watchdog_pings_at_half_the_interval_and_stop_when_the_process_is_frozen() {
    for name in DAEMONS {
        let proc = with_watchdog(name).spawn().await;
        wait_pings(&proc, "5 watchdog pings", 5).await;
        // Half the interval between pings, give or take a loaded machine.
        let times = proc.notification_times("WATCHDOG=1");
        let spread = times[4] - times[0];
        assert!(
            spread >= WATCHDOG / 2 * 4 * 9 / 10,
            "{name}: 5 pings in {spread:?}"
        );
        proc.signal(Sig::SIGSTOP);
        proc.wait_watchdog_expiry(WATCHDOG, Duration::from_secs(10))
            .await;
        let frozen = pings(&proc);
        proc.signal(Sig::SIGCONT);
        wait_pings(&proc, "pings to resume", frozen + 1).await;
    }
}

/// The wedge a user meets: every connection slot held by clients that send
/// nothing (a slowloris, a stuck proxy), so the accept loop takes no new
/// connection. The timer task still runs; the daemon does not serve. Its
/// keep-alives must stop, so systemd restarts it, and `systemctl status`
/// says why; they resume once it serves again.
#[tokio::test]
async fn watchdog_stops_when_the_daemon_stops_accepting() {
    for name in DAEMONS {
        let proc = with_watchdog(name)
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
            "{name} did not say why: {notes:?}"
        );
        let wedged = pings(&proc);
        drop(idle);
        wait_pings(&proc, "pings to resume once it serves", wedged + 1).await;
        let notes = proc.notifications().concat();
        let last_status = notes
            .lines()
            .filter_map(|l| l.strip_prefix("STATUS="))
            .next_back()
            .unwrap();
        assert!(last_status.starts_with("serving on"), "{last_status}");
    }
}

#[tokio::test]
async fn watchdog_values_systemd_never_sends_neither_panic_nor_spin() {
    // 0 is not a watchdog (sd_watchdog_enabled(3) calls it invalid): off, with a warning.
    let proc = ProcBuilder::new("service-a")
        .env("WATCHDOG_USEC", "0")
        .spawn()
        .await;
    proc.wait_for_log("WATCHDOG_USEC", Duration::from_secs(10))
        .await;
    assert_eq!(Client::new().get(&proc.url("/health")).await.status, 200);
    let logs = proc.logs();
    assert!(logs.contains("watchdog off"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(pings(&proc), 0);

    // 1 µs cannot be met: the daemon checks itself no more often than every
    // 10 ms rather than spin (systemd will restart it; that is the setting).
    let proc = ProcBuilder::new("service-a")
        .env("WATCHDOG_USEC", "1")
        .spawn()
        .await;
    wait_pings(&proc, "5 watchdog pings", 5).await;
    let times = proc.notification_times("WATCHDOG=1");
    assert!(
        times[4] - times[0] >= Duration::from_millis(36),
        "5 pings in {:?}",
        times[4] - times[0]
    );
    assert!(!proc.logs().contains("panicked"), "{}", proc.logs());
}

#[tokio::test]
async fn no_watchdog_pings_unless_asked() {
    let not_ours = [
        vec![],
        // Set for another process (a wrapper's child): not ours to answer.
        vec![("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")],
    ];
    for envs in not_ours {
        let mut builder = ProcBuilder::new("service-a");
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

#[tokio::test]
async fn a_socket_from_systemd_is_served_instead_of_binding() {
    for name in DAEMONS {
        let addr = unused_addr();
        let listen = addr.to_string();
        // --listen names a port that is taken: it must not be used.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ignored = taken.local_addr().unwrap().to_string();
        let mut proc = ProcBuilder::new(name)
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
}
