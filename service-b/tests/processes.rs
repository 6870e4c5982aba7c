//! The two real daemons as processes on real sockets: what a user sees with
//! curl while service-a works, stops, hangs and comes back, and how a
//! process starts, drains and stops. Which failure of service-a is which
//! kind of 503 is tests/api.rs's; hostile answers are tests/faults.rs's.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use serde_json::json;
use testkit::{
    Behaviour, Client, FakeUpstream, Proc, ProcBuilder, Sig, eventually, form_encode, refused_addr,
};

async fn service_a() -> Proc {
    ProcBuilder::new("service-a").spawn().await
}

async fn service_b(service_a_url: &str) -> Proc {
    ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", service_a_url)
        .spawn()
        .await
}

async fn call(b: &Proc, msg: &str) -> testkit::Reply {
    Client::new()
        .get(&b.url(&format!("/call-echo?msg={}", form_encode(msg))))
        .await
}

#[tokio::test]
async fn awkward_messages_reach_service_a_intact() {
    let a = service_a().await;
    let b = service_b(&a.url("")).await;
    for msg in [
        "plain",
        "a&b=c",
        "#not-a-fragment",
        "100% + 1",
        "  spaces  ",
        "multi\nline\r\n",
        "../../etc/passwd",
        "?msg=second",
        "Ünïcödé ✓ 🦀",
    ] {
        let r = call(&b, msg).await;
        assert_eq!(r.status, 200, "{msg:?}: {}", r.text);
        assert_eq!(
            r.json,
            json!({"service_b": "ok", "service_a": {"echo": msg}}),
            "{msg:?}"
        );
    }
}

/// The deadline as the process reads it: 1 s unless SERVICE_B_UPSTREAM_TIMEOUT
/// says otherwise. (Which failure is which kind, hung, refused or trickling,
/// is tests/api.rs's.)
#[tokio::test]
async fn the_deadline_is_1s_by_default_and_the_setting_changes_it() {
    let fake = FakeUpstream::start(Behaviour::Hang).await;
    let b = service_b(&fake.url()).await;
    let r = call(&b, "hi").await;
    assert_eq!((r.status, r.json["error"].clone()), (503, json!("timeout")));
    assert_eq!(r.json["http_status"], 504);
    assert!(r.latency >= Duration::from_secs(1), "{:?}", r.latency);
    assert!(r.latency < Duration::from_millis(1100), "{:?}", r.latency);

    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", fake.url())
        .env("SERVICE_B_UPSTREAM_TIMEOUT", "300ms")
        .spawn()
        .await;
    let r = call(&b, "hi").await;
    assert_eq!(r.json["error"], "timeout");
    assert!(r.latency >= Duration::from_millis(300), "{:?}", r.latency);
    assert!(r.latency < Duration::from_millis(400), "{:?}", r.latency);
}

#[tokio::test]
async fn service_b_rides_out_service_a_stopping_and_restarting() {
    let mut a = service_a().await;
    let addr = a.addr.to_string();
    let b = service_b(&a.url("")).await;
    let b_pid = b.pid();
    assert_eq!(call(&b, "before").await.status, 200);

    a.signal(Sig::SIGTERM);
    a.wait_exit(Duration::from_secs(10)).await;
    let down = call(&b, "while down").await;
    assert_eq!(
        (down.status, down.json["error"].clone()),
        (503, json!("connection_refused"))
    );
    assert_eq!(Client::new().get(&b.url("/health")).await.status, 200);

    let _a = ProcBuilder::new("service-a")
        .no_listen()
        .args(["--listen", &addr])
        .spawn()
        .await;
    let back = call(&b, "after").await;
    assert_eq!(back.status, 200, "{}", back.text);
    assert_eq!(back.json["service_a"]["echo"], "after");
    assert_eq!(b.pid(), b_pid, "service-b was restarted");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_all_succeed() {
    let a = service_a().await;
    let b = service_b(&a.url("")).await;
    let client = Client::new();
    let calls = (0..200).map(|i| {
        let client = client.clone();
        let url = b.url(&format!("/call-echo?msg=n{i}"));
        async move { (i, client.get(&url).await) }
    });
    for (i, r) in futures::future::join_all(calls).await {
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        assert_eq!(r.json["service_a"]["echo"], format!("n{i}"));
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_get_its_503_then_exits_0() {
    let fake = FakeUpstream::start(Behaviour::Hang).await;
    let mut b = service_b(&fake.url()).await;
    let url = b.url("/call-echo?msg=in-flight");
    let in_flight = tokio::spawn(async move { Client::new().get(&url).await });
    eventually(
        "the call to reach service-a",
        Duration::from_secs(5),
        || {
            let n = fake.requests().len();
            async move { (n > 0).then_some(()) }
        },
    )
    .await;

    b.signal(Sig::SIGTERM);
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (503, json!("timeout")),
        "{}",
        r.text
    );
    let status = b.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", b.logs());
    // New connections are no longer served once the drain has finished.
    assert!(Client::new().try_get(&b.url("/health")).await.is_err());
}

#[tokio::test]
async fn every_degraded_answer_is_logged_at_warn_with_its_kind_and_status() {
    let b = service_b(&format!("http://{}", refused_addr())).await;
    call(&b, "hi").await;
    b.wait_for_log("degraded:", Duration::from_secs(5)).await;
    let line = b
        .logs()
        .lines()
        .find(|l| l.contains("degraded:"))
        .unwrap()
        .to_owned();
    for needle in [
        "WARN",
        "endpoint=/call-echo",
        "status=503",
        "kind=connection_refused",
        "upstream_status=502",
        "latency_ms=",
        "trace_id=",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
}

#[tokio::test]
async fn a_fault_file_makes_service_a_fail_a_share_of_requests_and_traffic_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let fault_file = dir.path().join("fault");
    std::fs::write(&fault_file, "status=500 ratio=0.5\n").unwrap();
    let a = ProcBuilder::new("service-a")
        .env("SERVICE_A_FAULT_FILE", fault_file.to_str().unwrap())
        .spawn()
        .await;
    assert_eq!(
        Client::new().get(&a.url("/health")).await.json["fault"],
        "status=500 ratio=0.5"
    );
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", a.url(""))
        .env("SERVICE_B_BREAKER_FAILURES", "0")
        .spawn()
        .await;
    let summary = testkit::traffic(&b.url(""), &["--rate", "200", "--duration", "2s"]).await;
    assert_eq!(summary["answered"], 400, "{summary}");
    let (ok, failed) = (
        testkit::traffic_count(&summary, "ok"),
        testkit::traffic_count(&summary, "upstream_status"),
    );
    assert_eq!(ok + failed, 400, "{summary}");
    // Binomial, n = 400, p = 0.5: ±60 is more than six standard deviations.
    assert!((140..=260).contains(&failed), "{summary}");
}

#[tokio::test]
async fn a_deadline_the_drain_cannot_wait_for_is_a_bad_setting() {
    // SIGTERM drains for --shutdown-timeout: a call allowed to run longer
    // would be cut without an answer.
    let check = |upstream: &str, shutdown: &str| {
        ProcBuilder::new("service-b")
            .env("SERVICE_B_UPSTREAM_TIMEOUT", upstream)
            .env("SERVICE_B_SHUTDOWN_TIMEOUT", shutdown)
            .arg("--check-config")
            .run_to_exit(Duration::from_secs(10))
    };
    let refused = check("5s", "5s").await;
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    for needle in ["SERVICE_B_UPSTREAM_TIMEOUT", "SERVICE_B_SHUTDOWN_TIMEOUT"] {
        assert!(refused.stderr.contains(needle), "{}", refused.stderr);
    }
    assert_eq!(check("4s", "5s").await.code, Some(0));
    assert_eq!(check("10s", "15s").await.code, Some(0));
}
