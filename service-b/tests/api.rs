//! service-b's contract, row by row, at the handler level: salvo's
//! in-process test client in front, and behind it a real service-a served in
//! this process, or a fake that fails the way the row needs.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use salvo::Service;
use salvo::http::Method;
use serde_json::json;
use service_b::upstream::Upstream;
use testkit::{Behaviour, FakeUpstream, form_encode, get_in_process as get, unused_addr};

const LIMIT: usize = 4096;

fn service_b(upstream: SocketAddr, deadline: Duration) -> Service {
    let url = format!("http://{upstream}").parse().unwrap();
    let upstream = Upstream::new(&url, deadline, LIMIT).unwrap();
    service_kit::service::<service_b::ServiceB>(service_b::router(
        upstream,
        service_b::Protection::from_args(&service_b::Args::defaults().unwrap()),
        LIMIT,
    ))
}

async fn with_real_service_a() -> Service {
    let a = testkit::serve_in_process(service_kit::service::<service_a::ServiceA>(
        service_a::router(LIMIT),
    ))
    .await;
    service_b(a, Duration::from_secs(1))
}

async fn with_fake(behaviour: Behaviour, deadline: Duration) -> (Service, FakeUpstream) {
    let fake = FakeUpstream::start(behaviour).await;
    (service_b(fake.addr, deadline), fake)
}

/// Checks the contract's 503 body and returns it.
async fn degraded(app: &Service, kind: &str, http_status: u16) -> testkit::Reply {
    degraded_for(app, "hi", kind, http_status).await
}

/// Like [`degraded`], for `msg`.
async fn degraded_for(app: &Service, msg: &str, kind: &str, http_status: u16) -> testkit::Reply {
    let r = get(app, &format!("/call-echo?msg={}", form_encode(msg))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["service_b"], "ok", "{}", r.text);
    assert_eq!(r.json["service_a"], "unavailable", "{}", r.text);
    assert_eq!(r.json["error"], kind, "{}", r.text);
    assert_eq!(r.json["http_status"], http_status, "{}", r.text);
    assert!(
        r.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
    assert_eq!(r.content_type, "application/json; charset=utf-8");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["cache-control"], "no-store");
    r
}

#[tokio::test]
async fn health_is_ok_even_with_service_a_down() {
    let app = service_b(unused_addr(), Duration::from_secs(1));
    let r = get(&app, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["service"], "service-b");
}

#[tokio::test]
async fn call_echo_wraps_service_a_body() {
    let app = with_real_service_a().await;
    for msg in [
        "hello",
        "a+b c",
        "&msg=evil#frag",
        "100%",
        "line\nbreak",
        "żółć 🦀",
        "",
    ] {
        let r = get(&app, &format!("/call-echo?msg={}", form_encode(msg))).await;
        assert_eq!(r.status, 200, "{msg:?}: {}", r.text);
        assert_eq!(
            r.json,
            json!({"service_b": "ok", "service_a": {"echo": msg}}),
            "{msg:?}"
        );
    }
}

#[tokio::test]
async fn msg_errors_are_400_before_any_upstream_call() {
    let (app, fake) = with_fake(
        Behaviour::json(200, r#"{"echo":"x"}"#),
        Duration::from_secs(1),
    )
    .await;
    let too_long = get(&app, &format!("/call-echo?msg={}", "x".repeat(LIMIT + 1))).await;
    assert_eq!(
        (too_long.status, too_long.json["error"].clone()),
        (400, json!("msg_too_long"))
    );
    let bad = get(&app, "/call-echo?msg=%ff").await;
    assert_eq!(
        (bad.status, bad.json["error"].clone()),
        (400, json!("bad_request"))
    );
    assert!(
        fake.requests().is_empty(),
        "service-a was called: {:?}",
        fake.requests()
    );
    let at_limit = get(&app, &format!("/call-echo?msg={}", "x".repeat(LIMIT))).await;
    assert_eq!(at_limit.status, 200, "{}", at_limit.text);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_404_and_405() {
    let app = service_b(unused_addr(), Duration::from_secs(1));
    let r = get(&app, "/call-echo/x").await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (404, json!("not_found"))
    );
    let r = testkit::request_in_process(&app, Method::POST, "/call-echo?msg=x").await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (405, json!("method_not_allowed"))
    );
}

#[tokio::test]
async fn hung_service_a_is_timeout_504_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let (app, _fake) = with_fake(Behaviour::Hang, deadline).await;
    let r = degraded(&app, "timeout", 504).await;
    assert!(
        r.latency >= deadline,
        "answered before the deadline: {:?}",
        r.latency
    );
    assert!(
        r.latency < deadline + Duration::from_millis(100),
        "late: {:?}",
        r.latency
    );
}

#[tokio::test]
async fn a_body_that_trickles_past_the_deadline_is_timeout() {
    let trickle = Behaviour::Trickle {
        head: Behaviour::chunked_json_head(),
        chunk: Behaviour::chunk(b" "),
        every: Duration::from_millis(50),
    };
    let deadline = Duration::from_millis(300);
    let (app, _fake) = with_fake(trickle, deadline).await;
    let r = degraded(&app, "timeout", 504).await;
    assert!(
        r.latency < deadline + Duration::from_millis(100),
        "late: {:?}",
        r.latency
    );
}

#[tokio::test]
async fn nothing_listening_is_connection_refused_502_at_once() {
    let app = service_b(unused_addr(), Duration::from_secs(1));
    let r = degraded(&app, "connection_refused", 502).await;
    assert!(r.latency < Duration::from_millis(200), "{:?}", r.latency);
}

#[tokio::test]
async fn a_reset_connection_is_connection_failed_502() {
    let (app, _fake) = with_fake(Behaviour::Reset, Duration::from_secs(1)).await;
    degraded(&app, "connection_failed", 502).await;
}

#[tokio::test]
async fn a_connection_closed_without_answer_is_connection_failed_502() {
    let (app, _fake) = with_fake(Behaviour::Raw(Bytes::new()), Duration::from_secs(1)).await;
    degraded(&app, "connection_failed", 502).await;
}

#[tokio::test]
async fn a_non_2xx_answer_is_upstream_status_with_service_a_status() {
    for status in [500, 503, 404, 429] {
        let (app, _fake) = with_fake(
            Behaviour::json(status, r#"{"error":"x"}"#),
            Duration::from_secs(1),
        )
        .await;
        degraded(&app, "upstream_status", status).await;
    }
    let redirect = Behaviour::Raw(Bytes::from_static(
        b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n",
    ));
    let (app, _fake) = with_fake(redirect, Duration::from_secs(1)).await;
    degraded(&app, "upstream_status", 302).await;
}

#[tokio::test]
async fn a_2xx_that_is_not_the_expected_json_is_invalid_response_502() {
    let cases = [
        Behaviour::json(200, "not json"),
        Behaviour::json(200, r#"{"echo": 42}"#),
        Behaviour::json(200, r#"["echo"]"#),
        Behaviour::json(200, r#"{"echo":"x"} trailing"#),
        Behaviour::json(204, ""),
        Behaviour::response(200, "text/html", r#"{"echo":"x"}"#),
        Behaviour::json(
            200,
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        Behaviour::Raw(Bytes::from_static(b"garbage, not HTTP at all\r\n\r\n")),
    ];
    for behaviour in cases {
        let (app, _fake) = with_fake(behaviour.clone(), Duration::from_secs(1)).await;
        let r = get(&app, "/call-echo?msg=hi").await;
        assert_eq!(
            (
                r.status,
                r.json["error"].clone(),
                r.json["http_status"].clone()
            ),
            (503, json!("invalid_response"), json!(502)),
            "{behaviour:?}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn an_answer_that_is_not_valid_http_is_invalid_response_502() {
    let huge_head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-huge: {}\r\ncontent-length: 12\r\n\r\n{{\"echo\":\"x\"}}",
        "h".repeat(1 << 20)
    );
    for (what, raw) in [
        (
            "not HTTP",
            Bytes::from_static(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        ),
        (
            "a bad status line",
            Bytes::from_static(b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n"),
        ),
        ("a head too large", Bytes::from(huge_head)),
    ] {
        let (app, _fake) = with_fake(Behaviour::Raw(raw), Duration::from_secs(1)).await;
        let r = degraded(&app, "invalid_response", 502).await;
        assert!(
            r.json["message"]
                .as_str()
                .unwrap()
                .contains("not valid HTTP"),
            "{what}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn the_message_names_the_address_refused_or_what_the_failure_was() {
    let addr = unused_addr();
    let app = service_b(addr, Duration::from_secs(1));
    let r = degraded(&app, "connection_refused", 502).await;
    assert_eq!(
        r.json["message"],
        format!("nothing listens at {addr}"),
        "{}",
        r.text
    );
    // reqwest's own message is "error sending request for url (...)": the
    // causes under it say what happened.
    let (app, _fake) = with_fake(Behaviour::Raw(Bytes::new()), Duration::from_secs(1)).await;
    let r = degraded(&app, "connection_failed", 502).await;
    let message = r.json["message"].as_str().unwrap();
    assert!(
        message.starts_with("calling service-a failed: error sending request"),
        "{message}"
    );
    assert!(message.contains("closed"), "{message}");
}

#[tokio::test]
async fn a_huge_body_is_invalid_response_without_reading_it_all() {
    let mb = 1 << 20;
    // Declared up front...
    let declared = Behaviour::Flood {
        head: Bytes::from(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            50 * mb
        )),
        chunk: Bytes::from(vec![b' '; 64 * 1024]),
        total: Some(50 * mb),
    };
    // ...or streamed without end.
    let endless = Behaviour::Flood {
        head: Behaviour::chunked_json_head(),
        chunk: Behaviour::chunk(&[b' '; 64 * 1024]),
        total: None,
    };
    for behaviour in [declared, endless] {
        let (app, _fake) = with_fake(behaviour, Duration::from_secs(5)).await;
        let r = degraded(&app, "invalid_response", 502).await;
        assert!(r.latency < Duration::from_secs(1), "{:?}", r.latency);
    }
}

#[tokio::test]
async fn a_fresh_connection_closed_without_an_answer_is_not_sent_again() {
    // service-a may have crashed on this very request: one try only. (A
    // kept-alive connection closed under a request is sent again once:
    // tests/upstream.rs.)
    let (app, fake) = with_fake(Behaviour::Raw(Bytes::new()), Duration::from_secs(1)).await;
    degraded(&app, "connection_failed", 502).await;
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_client_cannot_open_the_breaker_with_4xx_answers_it_causes() {
    // service-a's own msg limit is smaller than service-b's: service-b
    // passes the msg on and service-a answers 400, which is the caller's
    // doing, not service-a failing.
    let a = testkit::serve_in_process(service_kit::service::<service_a::ServiceA>(
        service_a::router(16),
    ))
    .await;
    let app = service_b(a, Duration::from_secs(1));
    let long = "x".repeat(100);
    for _ in 0..12 {
        degraded_for(&app, &long, "upstream_status", 400).await;
    }
    let r = get(&app, "/call-echo?msg=short").await;
    assert_eq!(r.status, 200, "the breaker opened for everyone: {}", r.text);
}

#[tokio::test]
async fn each_fault_service_a_injects_is_the_kind_the_readme_promises() {
    use service_a::fault::{Fault, Faults};
    let deadline = Duration::from_millis(300);
    for (spec, expected) in [
        ("off", None),
        ("delay=50ms", None),
        ("delay=600ms", Some(("timeout", 504))),
        ("hang", Some(("timeout", 504))),
        ("status=500", Some(("upstream_status", 500))),
        ("status=429", Some(("upstream_status", 429))),
        ("garbage", Some(("invalid_response", 502))),
        ("reset", Some(("connection_failed", 502))),
    ] {
        let fault: Fault = spec.parse().unwrap();
        let faults = std::sync::Arc::new(Faults::with(None, fault));
        let a = testkit::serve_in_process(service_kit::service::<service_a::ServiceA>(
            service_a::router_with_faults(LIMIT, faults),
        ))
        .await;
        let app = service_b(a, deadline);
        match expected {
            None => {
                let r = get(&app, "/call-echo?msg=hi").await;
                assert_eq!(r.status, 200, "{spec}: {}", r.text);
            }
            Some((kind, status)) => {
                degraded(&app, kind, status).await;
            }
        }
    }
}

/// HAProxy 2.6's own answers, byte for byte, as `deploy/haproxy/` configures
/// it: no replica could take the call, and none answered in time.
const HAPROXY_503: &str = "HTTP/1.1 503 Service Unavailable\r\nbalancer-error: no_healthy_upstream\r\ncontent-length: 125\r\ncontent-type: application/json; charset=utf-8\r\n\r\n{\"error\":\"no_healthy_upstream\",\"message\":\"no service-a replica could take the call; replicas passing their health checks: 0\"}";
const HAPROXY_504: &str = "HTTP/1.1 504 Gateway Time-out\r\nbalancer-error: timeout\r\ncontent-length: 69\r\ncontent-type: application/json; charset=utf-8\r\n\r\n{\"error\":\"timeout\",\"message\":\"no service-a replica answered in time\"}";

#[tokio::test]
async fn behind_a_balancer_with_no_replica_left_the_answer_says_so_and_the_breaker_stays_closed() {
    let answers = vec![Bytes::from_static(HAPROXY_503.as_bytes()); 20];
    let (app, fake) = with_fake(Behaviour::KeepAlive(answers), Duration::from_secs(1)).await;
    // More than the breaker's 5 failures in a row: each call still goes to
    // the balancer, which answers at once, and each says why.
    for _ in 0..12 {
        let r = degraded(&app, "no_healthy_upstream", 503).await;
        let message = r.json["message"].as_str().unwrap();
        assert!(message.contains("balancer"), "{message}");
    }
    assert_eq!(fake.requests().len(), 12);
    assert_eq!(get(&app, "/health").await.json["breaker"], "closed");
}

#[tokio::test]
async fn behind_a_balancer_a_timeout_it_reports_is_a_timeout_and_a_replicas_own_503_is_its_status()
{
    let answer = Bytes::from_static(HAPROXY_504.as_bytes());
    let (app, _fake) = with_fake(Behaviour::KeepAlive(vec![answer]), Duration::from_secs(1)).await;
    degraded(&app, "timeout", 504).await;
    // The same status from a replica (no balancer-error header) is the
    // replica's answer.
    let (app, _fake) = with_fake(
        Behaviour::json(503, r#"{"error":"unavailable"}"#),
        Duration::from_secs(1),
    )
    .await;
    degraded(&app, "upstream_status", 503).await;
}
