//! The systemd protocols, spoken by the real binaries to a harness that
//! plays systemd's part: the notify socket (`READY=1`, `STATUS=`,
//! `STOPPING=1`), the watchdog (`WATCHDOG_USEC`), and socket activation
//! (`LISTEN_FDS`, through systemd's own `systemd-socket-activate`).
//! The same behaviours under a real systemd: `deploy/test-systemd.sh`.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use testkit::{Client, ProcBuilder, Sig, eventually, unused_addr};

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
async fn watchdog_pings_at_half_the_interval_and_stop_when_the_process_is_frozen() {
    for name in DAEMONS {
        let proc = ProcBuilder::new(name)
            .env("WATCHDOG_USEC", "200000")
            .spawn()
            .await;
        let pings = || count(&proc.notifications(), "WATCHDOG=1");
        // Every 100 ms: at least 5 in a second.
        eventually("5 watchdog pings", Duration::from_secs(2), || {
            let n = pings();
            async move { (n >= 5).then_some(()) }
        })
        .await;
        proc.signal(Sig::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(50)).await; // let an in-flight datagram land
        let frozen = pings();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pings(), frozen, "{name} pinged while frozen");
        proc.signal(Sig::SIGCONT);
        eventually("pings to resume", Duration::from_secs(2), || {
            let n = pings();
            async move { (n > frozen).then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn no_watchdog_pings_unless_asked() {
    let proc = ProcBuilder::new("service-a").spawn().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&proc.notifications(), "WATCHDOG=1"), 0);
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
            ])
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
        proc.signal(Sig::SIGTERM);
        assert_eq!(
            proc.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
    }
}
