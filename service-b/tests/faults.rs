//! The fault suite: real daemons against hostile upstreams, hostile clients
//! and a misbehaving collector. Nothing may crash, hang, or pile up.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use testkit::{
    Behaviour, Client, FakeUpstream, Proc, ProcBuilder, Reply, eventually, open_fds,
    proc_status_kib, raise_fd_limit, refused_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn kinds(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in replies {
        let key = match r.status {
            200 => "200".to_owned(),
            _ => r.json["error"].as_str().unwrap_or("?").to_owned(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

async fn health(b: &Proc) -> serde_json::Value {
    Client::new().get(&b.url("/health")).await.json
}

// ------------------------------------------------------------ load shedding

#[tokio::test]
async fn past_the_in_flight_bound_answers_are_overloaded_at_once() {
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", hang.url())
        // Long enough that all 200 have arrived before the first slot
        // frees, even on a loaded machine.
        .env("SERVICE_B_UPSTREAM_TIMEOUT", "3s")
        .env("SERVICE_B_MAX_IN_FLIGHT", "50")
        .env("SERVICE_B_BREAKER_FAILURES", "0")
        .spawn()
        .await;
    let client = Client::new();
    let url = b.url("/call-echo?msg=x");
    let replies = futures::future::join_all((0..200).map(|_| client.get(&url))).await;
    assert_eq!(
        kinds(&replies),
        BTreeMap::from([("overloaded".to_owned(), 150), ("timeout".to_owned(), 50)])
    );
    for r in replies.iter().filter(|r| r.json["error"] == "overloaded") {
        assert_eq!(r.json["http_status"], 503);
        // "At once": well before the deadline (3 s) it would otherwise wait.
        assert!(
            r.latency < Duration::from_millis(1500),
            "overloaded took {:?}",
            r.latency
        );
    }
    // Exactly the bound reached service-a.
    assert_eq!(hang.requests().len(), 50);
}

#[tokio::test]
async fn ten_thousand_requests_against_a_hung_service_a_all_get_an_answer_in_bounded_memory() {
    raise_fd_limit();
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", hang.url())
        .env("SERVICE_B_MAX_CONNECTIONS", "20000")
        .env("RUST_LOG", "warn,access=off")
        .spawn()
        .await;
    let idle_kib = proc_status_kib(b.pid(), "VmRSS");
    // A connection of its own per request: a kept-alive one that service-b
    // closes idle (its header timeout) just as a request goes out on it is
    // the client's race, not an answer service-b failed to give.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = b.url("/call-echo?msg=x");
    let started = Instant::now();
    let calls = (0..10_000).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = client.get(&url).send().await?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await?;
            Ok::<_, reqwest::Error>((status, body["error"].as_str().unwrap_or("").to_owned()))
        })
    });
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for call in futures::future::join_all(calls).await {
        let (status, kind) = call
            .unwrap()
            .unwrap_or_else(|e| panic!("a request got no answer: {e:?}"));
        assert_eq!(status, 503);
        *tally.entry(kind).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let peak_kib = proc_status_kib(b.pid(), "VmHWM");
    println!(
        "10 000 requests in {elapsed:?}: {tally:?}; service-b RSS idle {idle_kib} KiB, peak {peak_kib} KiB"
    );
    assert_eq!(tally.values().sum::<usize>(), 10_000);
    for kind in tally.keys() {
        assert!(
            ["timeout", "overloaded", "circuit_open"].contains(&kind.as_str()),
            "{tally:?}"
        );
    }
    // No more than the default bound (1024) ever reached service-a.
    assert!(hang.requests().len() <= 1024, "{}", hang.requests().len());
    // About 17 KiB per open connection (10 000 here); bounded by --max-connections.
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB");
    // And it is still serving.
    assert_eq!(health(&b).await["status"], "ok");
}

// ------------------------------------------------------------ circuit breaker

#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures_and_a_probe_closes_it() {
    let mut script = vec![Behaviour::json(500, "{}"); 5];
    script.push(Behaviour::json(200, r#"{"echo":"x"}"#));
    let fake = FakeUpstream::start(Behaviour::Sequence(script)).await;
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", fake.url())
        .env("SERVICE_B_BREAKER_FAILURES", "5")
        .env("SERVICE_B_BREAKER_COOLDOWN", "500ms")
        .spawn()
        .await;
    let client = Client::new();
    let url = b.url("/call-echo?msg=x");
    let call = || client.get(&url);
    assert_eq!(health(&b).await["breaker"], "closed");
    for _ in 0..5 {
        assert_eq!(call().await.json["error"], "upstream_status");
    }
    let refused = call().await;
    assert_eq!(
        (
            refused.json["error"].as_str(),
            refused.json["http_status"].as_u64()
        ),
        (Some("circuit_open"), Some(503))
    );
    // "At once": well before the deadline (1 s) it would otherwise wait.
    assert!(
        refused.latency < Duration::from_millis(500),
        "{:?}",
        refused.latency
    );
    assert_eq!(fake.requests().len(), 5, "an open breaker calls nobody");
    assert_eq!(health(&b).await["breaker"], "open");
    b.wait_for_log("circuit breaker open", Duration::from_secs(5))
        .await;

    // After the cool-down, one probe goes through; it succeeds and closes it.
    let probe = eventually("the cool-down to end", Duration::from_secs(5), || async {
        let r = call().await;
        (r.json["error"] != "circuit_open").then_some(r)
    })
    .await;
    assert_eq!(probe.status, 200, "{}", probe.text);
    assert_eq!(health(&b).await["breaker"], "closed");
    assert_eq!(call().await.status, 200);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let fake = FakeUpstream::start(Behaviour::json(503, "{}")).await;
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", fake.url())
        .env("SERVICE_B_BREAKER_FAILURES", "2")
        .env("SERVICE_B_BREAKER_COOLDOWN", "300ms")
        .spawn()
        .await;
    let client = Client::new();
    let url = b.url("/call-echo?msg=x");
    let call = || client.get(&url);
    call().await;
    call().await;
    assert_eq!(call().await.json["error"], "circuit_open");
    // Refused at once until the cool-down ends; the first call after it is
    // the probe (and the only one to reach service-a).
    let probe = eventually("the cool-down to end", Duration::from_secs(5), || async {
        let r = call().await;
        (r.json["error"] != "circuit_open").then_some(r)
    })
    .await;
    assert_eq!(probe.json["error"], "upstream_status", "the probe");
    assert_eq!(call().await.json["error"], "circuit_open", "open again");
    assert_eq!(fake.requests().len(), 3);
}

// ------------------------------------------------------------ server limits

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn request_heads_over_the_limit_are_431() {
    for name in ["service-a", "service-b"] {
        let d = ProcBuilder::new(name).spawn().await;
        let head = |pad: usize| {
            format!(
                "GET /health HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
                "a".repeat(pad)
            )
        };
        let (ok, _) = raw(d.addr, head(12 * 1024).as_bytes()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{name}: {ok}");
        let (big, _) = raw(d.addr, head(20 * 1024).as_bytes()).await;
        assert!(big.starts_with("HTTP/1.1 431"), "{name}: {big}");
        // A msg at the default limit, every byte percent-encoded, still fits.
        let msg = "%C3%A9".repeat(2048);
        let (at_limit, _) = raw(
            d.addr,
            format!("GET /health?msg={msg} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(at_limit.starts_with("HTTP/1.1 200"), "{name}: {at_limit}");
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    for name in ["service-a", "service-b"] {
        let d = ProcBuilder::new(name)
            .env(
                format!("SERVICE_{}_HEADER_TIMEOUT", &name[8..].to_uppercase()),
                "300ms",
            )
            .spawn()
            .await;
        let (answer, took) = raw(d.addr, b"GET /health HTTP/1.1\r\nhost: x\r\n").await;
        assert!(!answer.contains("200 OK"), "{name}: {answer}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{name}: {took:?}"
        );
        // And it still serves others.
        assert_eq!(Client::new().get(&d.url("/health")).await.status, 200);
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let a = ProcBuilder::new("service-a")
        .env("SERVICE_A_IDLE_TIMEOUT", "300ms")
        .spawn()
        .await;
    let mut stream = TcpStream::connect(a.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the answer, then the close that follows the idle time.
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was never closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn past_max_connections_new_ones_wait_until_one_closes() {
    let a = ProcBuilder::new("service-a")
        .env("SERVICE_A_MAX_CONNECTIONS", "2")
        .spawn()
        .await;
    let keep_alive = |addr| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        s
    };
    let first = keep_alive(a.addr).await;
    let _second = keep_alive(a.addr).await;
    let third = tokio::spawn(raw(
        a.addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ));
    // A negative, so bounded in time: no answer within 300 ms.
    let mut third = std::pin::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    let (answer, _) = third.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

// ------------------------------------------------------------ hostile upstream

#[tokio::test]
async fn a_hostile_service_a_is_a_classified_503_never_a_crash() {
    let huge_header = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-huge: {}\r\ncontent-length: 12\r\n\r\n{{\"echo\":\"x\"}}",
        "h".repeat(1 << 20)
    );
    let mut bad_utf8 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"echo\":\"".to_vec();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}");
    let cases = [
        (
            "oversized headers",
            Behaviour::Raw(Bytes::from(huge_header)),
        ),
        ("invalid UTF-8 body", Behaviour::Raw(Bytes::from(bad_utf8))),
        (
            "endless chunked body",
            Behaviour::Flood {
                head: Behaviour::chunked_json_head(),
                chunk: Behaviour::chunk(&[b'['; 16 * 1024]),
                total: None,
            },
        ),
        (
            "wrong content type",
            Behaviour::response(200, "text/plain", r#"{"echo":"x"}"#),
        ),
        (
            "deeply nested JSON",
            Behaviour::json(
                200,
                &format!("{{\"echo\":{}{}}}", "[".repeat(50_000), "]".repeat(50_000)),
            ),
        ),
        (
            "not HTTP",
            Behaviour::Raw(Bytes::from_static(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")),
        ),
    ];
    for (what, behaviour) in cases {
        let fake = FakeUpstream::start(behaviour).await;
        let b = ProcBuilder::new("service-b")
            .env("SERVICE_A_URL", fake.url())
            .spawn()
            .await;
        let r = Client::new().get(&b.url("/call-echo?msg=x")).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (503, Some("invalid_response")),
            "{what}: {}",
            r.text
        );
        assert!(
            r.latency < Duration::from_secs(1),
            "{what}: {:?}",
            r.latency
        );
        let vm = proc_status_kib(b.pid(), "VmHWM");
        assert!(vm < 100 * 1024, "{what}: peak RSS {vm} KiB");
        assert_eq!(health(&b).await["status"], "ok", "{what}");
    }
}

// ------------------------------------------------------------ request smuggling

#[tokio::test]
async fn no_msg_can_change_the_host_path_or_headers_of_the_call_to_service_a() {
    let fake = FakeUpstream::start(Behaviour::json(200, r#"{"echo":"x"}"#)).await;
    let b = ProcBuilder::new("service-b")
        .env("SERVICE_A_URL", fake.url())
        .spawn()
        .await;
    let hostile = [
        "a\r\nX-Injected: 1",
        "a\r\n\r\nGET /admin HTTP/1.1\r\nHost: evil",
        "#fragment",
        "?x=1&msg=second",
        "/../../admin",
        "@evil.example:80/",
        "%0d%0aX-Injected:%201",
        "%2e%2e%2fadmin",
        "http://evil.example/",
        "a&msg=b",
        "\u{0}nul",
    ];
    for (i, msg) in hostile.iter().enumerate() {
        let r = Client::new()
            .get(&b.url(&format!("/call-echo?msg={}", testkit::form_encode(msg))))
            .await;
        assert_eq!(r.status, 200, "{msg:?}: {}", r.text);
        let seen = &fake.requests()[i];
        let target = seen.target();
        let (path, query) = target.split_once('?').unwrap();
        assert_eq!(path, "/echo", "{msg:?} changed the path: {target}");
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [("msg".to_owned(), (*msg).to_owned())],
            "{msg:?} arrived as {target}"
        );
        assert_eq!(
            seen.header("host"),
            Some(fake.addr.to_string().as_str()),
            "{msg:?}"
        );
        assert_eq!(
            seen.header("x-injected"),
            None,
            "{msg:?} injected a header:\n{}",
            seen.head
        );
        assert_eq!(
            seen.head.matches("\r\n\r\n").count(),
            1,
            "{msg:?} split the request:\n{}",
            seen.head
        );
    }
}

// ------------------------------------------------------------ telemetry faults

#[tokio::test]
async fn a_slow_or_silent_collector_changes_no_answer_and_drops_are_counted() {
    let fake = FakeUpstream::start(Behaviour::json(200, r#"{"echo":"x"}"#)).await;
    let slow = FakeUpstream::start(Behaviour::Delayed(
        Duration::from_secs(2),
        Box::new(Behaviour::response(200, "application/x-protobuf", "")),
    ))
    .await;
    for (what, endpoint) in [
        ("slow", slow.url()),
        ("black-holed", format!("http://{}", testkit::black_hole())),
        ("refusing", format!("http://{}", refused_addr())),
    ] {
        let mut b = ProcBuilder::new("service-b")
            .env("SERVICE_A_URL", fake.url())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "64")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
            .spawn()
            .await;
        let client = Client::new();
        let fds = open_fds(b.pid());
        let mut slowest = Duration::ZERO;
        for round in 0..10 {
            let url = b.url("/call-echo?msg=x");
            let replies = futures::future::join_all((0..50).map(|_| client.get(&url))).await;
            for r in replies {
                assert_eq!(r.status, 200, "{what} round {round}: {}", r.text);
                slowest = slowest.max(r.latency);
            }
        }
        // An export that held a request up would hold it for the slow
        // collector's 2 s; the bound is the upstream deadline, not tighter.
        assert!(
            slowest < Duration::from_secs(1),
            "{what}: slowest answer {slowest:?}"
        );
        assert!(proc_status_kib(b.pid(), "VmHWM") < 100 * 1024, "{what}");
        assert!(
            open_fds(b.pid()) < fds + 64,
            "{what}: fds {fds} -> {}",
            open_fds(b.pid())
        );
        b.signal(testkit::Sig::SIGTERM);
        assert_eq!(
            b.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0),
            "{what}"
        );
        if what != "refusing" {
            // 1000 requests make 2000 spans; the queue holds 64, and a
            // collector that takes 2 s per export, or never answers, cannot
            // take them all. The exit says how many were dropped.
            let logs = b.logs();
            let dropped: usize = logs
                .split("dropped_span_count=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no count of dropped spans:\n{logs}"));
            assert!(
                (1..=2_000 - 64).contains(&dropped),
                "{what}: {dropped} spans dropped"
            );
        }
    }
}
