//! What a user sees in Jaeger and Prometheus, checked at the wire: both real
//! daemons export OTLP/HTTP protobuf to a test receiver that decodes it with
//! opentelemetry-proto.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use testkit::{
    Behaviour, Client, FakeUpstream, OtlpReceiver, Proc, ProcBuilder, SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER, STATUS_ERROR, Sig, Span, eventually, refused_addr,
};

const WAIT: Duration = Duration::from_secs(10);

/// A daemon exporting to `rx` quickly: spans within 100 ms, metrics every 300 ms.
fn exporting(name: &str, rx: &OtlpReceiver) -> ProcBuilder {
    ProcBuilder::new(name)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
}

async fn pair(rx: &OtlpReceiver) -> (Proc, Proc) {
    let a = exporting("service-a", rx).spawn().await;
    let b = exporting("service-b", rx)
        .env("SERVICE_A_URL", a.url(""))
        .spawn()
        .await;
    (a, b)
}

/// The spans of trace `trace_id`, once `n` have arrived.
async fn trace(rx: &OtlpReceiver, trace_id: &str, n: usize) -> Vec<Span> {
    eventually(&format!("{n} spans of trace {trace_id}"), WAIT, || {
        let spans: Vec<Span> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        async move { (spans.len() >= n).then_some(spans) }
    })
    .await
}

fn find<'a>(spans: &'a [Span], service: &str, kind: i32) -> &'a Span {
    spans
        .iter()
        .find(|s| s.service() == service && s.kind == kind)
        .unwrap_or_else(|| panic!("no kind-{kind} span from {service} in {spans:#?}"))
}

#[tokio::test]
async fn one_trace_spans_both_daemons_with_the_right_parents() {
    let rx = OtlpReceiver::start().await;
    let (_a, b) = pair(&rx).await;
    let secret = "private-words-42";
    // Send our own traceparent, as an upstream caller of service-b would.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(b.url(&format!("/call-echo?msg={secret}")))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("user-agent", "lab-traffic/1 (synthetic)")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);

    let spans = trace(&rx, trace_id, 3).await;
    let b_server = find(&spans, "service-b", SPAN_KIND_SERVER);
    let b_client = find(&spans, "service-b", SPAN_KIND_CLIENT);
    let a_server = find(&spans, "service-a", SPAN_KIND_SERVER);
    // Who called: synthetic traffic is told apart in the trace.
    assert_eq!(
        b_server.attr("user_agent.original").as_deref(),
        Some("lab-traffic/1 (synthetic)")
    );
    assert_eq!(
        a_server.attr("user_agent.original").as_deref(),
        Some(concat!("service-b/", env!("CARGO_PKG_VERSION")))
    );

    assert_eq!(
        b_server.parent_span_id, caller_span,
        "incoming traceparent not honoured"
    );
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    assert_eq!(a_server.parent_span_id, b_client.span_id);

    assert_eq!(b_server.name, "GET /call-echo");
    assert_eq!(b_client.name, "GET /echo");
    assert_eq!(a_server.name, "GET /echo");
    for (span, route) in [(b_server, "/call-echo"), (a_server, "/echo")] {
        assert_eq!(span.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(span.attr("http.route").as_deref(), Some(route));
        assert_eq!(span.attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(
            span.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        assert_ne!(span.status_code, STATUS_ERROR);
    }
    let port = b_client.attr("server.port").unwrap();
    assert_eq!(
        b_client.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        b_client.attr("url.full"),
        Some(format!("http://127.0.0.1:{port}/echo?msg=REDACTED"))
    );
    assert_eq!(
        b_client.attr("http.response.status_code").as_deref(),
        Some("200")
    );

    for span in [b_server, b_client, a_server] {
        for key in [
            "service.name",
            "service.version",
            "service.instance.id",
            "host.name",
        ] {
            assert!(
                span.resource.contains_key(key),
                "{key} missing from {:?}",
                span.resource
            );
        }
        // The message is content: never in a name or an attribute.
        assert!(
            !format!("{span:?}").contains(secret),
            "msg leaked into {span:#?}"
        );
    }
}

#[tokio::test]
async fn every_degradation_kind_is_tagged_on_both_spans_and_its_trace_id_is_in_the_body() {
    let rx = OtlpReceiver::start().await;
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let reset = FakeUpstream::start(Behaviour::Reset).await;
    let status = FakeUpstream::start(Behaviour::json(500, "{}")).await;
    let garbage =
        FakeUpstream::start(Behaviour::Raw(Bytes::from_static(b"nonsense\r\n\r\n"))).await;
    let cases = [
        (hang.url(), "timeout", None),
        (
            format!("http://{}", refused_addr()),
            "connection_refused",
            None,
        ),
        (reset.url(), "connection_failed", None),
        (status.url(), "upstream_status", Some("500")),
        (garbage.url(), "invalid_response", None),
    ];
    for (url, kind, upstream_code) in cases {
        let b = exporting("service-b", &rx)
            .env("SERVICE_A_URL", url)
            .env("SERVICE_B_UPSTREAM_TIMEOUT", "300ms")
            .spawn()
            .await;
        let r = Client::new().get(&b.url("/call-echo?msg=x")).await;
        assert_eq!((r.status, r.json["error"].clone()), (503, json!(kind)));
        let trace_id = r.json["trace_id"].as_str().unwrap().to_owned();
        assert_eq!(trace_id.len(), 32, "{trace_id}");

        let spans = trace(&rx, &trace_id, 2).await;
        let server = find(&spans, "service-b", SPAN_KIND_SERVER);
        let client = find(&spans, "service-b", SPAN_KIND_CLIENT);
        assert_eq!(client.parent_span_id, server.span_id);
        for span in [server, client] {
            assert_eq!(span.attr("error.type").as_deref(), Some(kind), "{span:#?}");
            assert_eq!(span.status_code, STATUS_ERROR, "{span:#?}");
        }
        assert_eq!(server.attr("service_b.degraded").as_deref(), Some("true"));
        assert_eq!(r.json["trace_sampled"], true, "{}", r.text);
        // The server span's event says why, in the body's words.
        let (name, event) = server
            .events
            .iter()
            .find(|(name, _)| name == "degraded")
            .unwrap_or_else(|| panic!("no degraded event on {server:#?}"));
        assert_eq!(name, "degraded");
        assert_eq!(event["error.type"].as_string(), kind);
        assert_eq!(
            event["message"].as_string(),
            r.json["message"].as_str().unwrap()
        );
        assert_eq!(
            server.attr("http.response.status_code").as_deref(),
            Some("503")
        );
        assert_eq!(
            client.attr("http.response.status_code").as_deref(),
            upstream_code
        );
        // And the journal/stderr line of that answer carries the same trace
        // id, and says it was sampled.
        b.wait_for_log(&format!("trace_id={trace_id} trace_sampled=true"), WAIT)
            .await;
    }
}

#[tokio::test]
async fn a_resend_is_a_second_client_span_with_its_resend_count() {
    let rx = OtlpReceiver::start().await;
    // The first connection answers once, then closes under the next
    // request without answering; the second connection answers.
    let fake = FakeUpstream::start(Behaviour::restarting()).await;
    let b = exporting("service-b", &rx)
        .env("SERVICE_A_URL", fake.url())
        .spawn()
        .await;
    assert_eq!(
        Client::new().get(&b.url("/call-echo?msg=x")).await.status,
        200
    );
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(b.url("/call-echo?msg=x"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);

    let spans = trace(&rx, trace_id, 3).await;
    let server = find(&spans, "service-b", SPAN_KIND_SERVER);
    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT)
        .collect();
    assert_eq!(clients.len(), 2, "{spans:#?}");
    let (first, resend) = match clients[0].attr("http.request.resend_count") {
        None => (clients[0], clients[1]),
        Some(_) => (clients[1], clients[0]),
    };
    for span in [first, resend] {
        assert_eq!(span.parent_span_id, server.span_id, "{span:#?}");
    }
    assert_eq!(
        first.attr("error.type").as_deref(),
        Some("connection_failed")
    );
    assert_eq!(first.status_code, STATUS_ERROR);
    assert_eq!(
        resend.attr("http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        resend.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(resend.attr("error.type"), None);
    // Each attempt sent its own span as the parent to service-a.
    let sent: Vec<String> = fake
        .requests()
        .iter()
        .skip(1)
        .map(|r| r.header("traceparent").unwrap().to_owned())
        .collect();
    assert_eq!(
        sent,
        [first, resend].map(|s| format!("00-{trace_id}-{}-01", s.span_id))
    );
}

#[tokio::test]
async fn a_degraded_body_says_whether_its_trace_was_sampled() {
    let rx = OtlpReceiver::start().await;
    let dead = format!("http://{}", refused_addr());
    let b = exporting("service-b", &rx)
        .env("SERVICE_A_URL", &dead)
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0")
        .spawn()
        .await;
    let r = Client::new().get(&b.url("/call-echo?msg=x")).await;
    assert_eq!(r.json["error"], "connection_refused", "{}", r.text);
    assert_eq!(r.json["trace_sampled"], false, "{}", r.text);
    // And the degraded request's log line says so too.
    let line = format!(
        "trace_id={} trace_sampled=false",
        r.json["trace_id"].as_str().unwrap()
    );
    b.wait_for_log(&line, WAIT).await;
    let trace_id = r.json["trace_id"].as_str().unwrap().to_owned();
    let mut b = b;
    b.signal(Sig::SIGTERM);
    b.wait_exit(WAIT).await;
    assert!(
        rx.spans().iter().all(|s| s.trace_id != trace_id),
        "an unsampled trace was exported"
    );
}

#[tokio::test]
async fn metrics_count_what_was_served() {
    let rx = OtlpReceiver::start().await;
    let (mut a, b) = pair(&rx).await;
    let client = Client::new();
    client.call_echo_ok(&b.url(""), 3).await;
    a.signal(Sig::SIGTERM);
    a.wait_exit(WAIT).await;
    client
        .call_echo_degraded(&b.url(""), 2, "connection_refused")
        .await;
    assert_eq!(client.get(&b.url("/call-echo?msg=%ff")).await.status, 400);

    let wait_for = |service: &'static str,
                    name: &'static str,
                    attrs: Vec<(&'static str, &'static str)>,
                    n: f64| {
        let rx = rx.clone();
        async move {
            eventually(
                &format!("{name}{attrs:?} = {n} from {service}"),
                WAIT,
                || {
                    let p = rx.latest(service, name, &attrs);
                    async move { p.filter(|p| p.count == n) }
                },
            )
            .await
        }
    };
    let ok = wait_for(
        "service-b",
        "http.server.request.duration",
        vec![
            ("http.route", "/call-echo"),
            ("http.response.status_code", "200"),
        ],
        3.0,
    )
    .await;
    assert_eq!(
        (ok.kind, ok.unit.as_str(), ok.temporality),
        ("histogram", "s", 2),
        "cumulative seconds"
    );
    assert_eq!(
        ok.bounds,
        [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ],
        "semconv buckets"
    );
    assert_eq!(ok.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(ok.attr("error.type"), None);

    let degraded = wait_for(
        "service-b",
        "http.server.request.duration",
        vec![
            ("http.response.status_code", "503"),
            ("error.type", "connection_refused"),
        ],
        2.0,
    )
    .await;
    assert_eq!(degraded.attr("http.route").as_deref(), Some("/call-echo"));
    wait_for(
        "service-b",
        "http.server.request.duration",
        vec![("http.response.status_code", "400")],
        1.0,
    )
    .await;

    let calls_ok = wait_for(
        "service-b",
        "http.client.request.duration",
        vec![("http.response.status_code", "200")],
        3.0,
    )
    .await;
    assert_eq!(
        calls_ok.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(calls_ok.unit, "s");
    let calls_failed = wait_for(
        "service-b",
        "http.client.request.duration",
        vec![("error.type", "connection_refused")],
        2.0,
    )
    .await;
    assert_eq!(calls_failed.attr("http.response.status_code"), None);

    let counter = wait_for(
        "service-b",
        "service_b.degraded_responses",
        vec![("error.type", "connection_refused")],
        2.0,
    )
    .await;
    assert_eq!((counter.kind, counter.temporality), ("sum", 2));
    // Kinds that never happened are there, at zero: their first occurrence
    // is an increase Prometheus can see.
    let never = rx
        .latest(
            "service-b",
            "service_b.degraded_responses",
            &[("error.type", "timeout")],
        )
        .unwrap();
    assert_eq!(never.count, 0.0);

    // The heartbeat a no-data alert watches, from both daemons.
    for service in ["service-a", "service-b"] {
        let uptime = rx.latest(service, "process.uptime", &[]).unwrap();
        assert_eq!(uptime.unit, "s");
    }

    // service-a's own server metric, flushed when it stopped.
    wait_for(
        "service-a",
        "http.server.request.duration",
        vec![("http.route", "/echo")],
        3.0,
    )
    .await;

    // No label carries the user's message.
    for p in rx.points() {
        assert!(!format!("{:?}", p.attrs).contains("/call-echo?"), "{p:?}");
    }
    assert_eq!(rx.undecodable(), 0);
    assert!(
        rx.content_types()
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        rx.content_types()
    );
}

#[tokio::test]
async fn sigterm_flushes_spans_that_were_still_queued() {
    let rx = OtlpReceiver::start().await;
    let fake = FakeUpstream::start(Behaviour::json(200, r#"{"echo":"x"}"#)).await;
    // A batch delay far longer than the test: only the exit flush can send it.
    let mut b = ProcBuilder::new("service-b")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env("SERVICE_A_URL", fake.url())
        .spawn()
        .await;
    let r = Client::new().get(&b.url("/call-echo?msg=x")).await;
    assert_eq!(r.status, 200);
    assert!(rx.spans().is_empty());
    b.signal(Sig::SIGTERM);
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0));
    let names: Vec<String> = rx.spans().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"GET /call-echo".to_owned()), "{names:?}");
}

#[tokio::test]
async fn a_black_holed_collector_changes_no_answer_and_delays_exit_by_a_bounded_time() {
    let fake = FakeUpstream::start(Behaviour::json(200, r#"{"echo":"x"}"#)).await;
    let mut b = ProcBuilder::new("service-b")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", testkit::black_hole()),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .env("SERVICE_A_URL", fake.url())
        .spawn()
        .await;
    let client = Client::new();
    for _ in 0..50 {
        let r = client.get(&b.url("/call-echo?msg=x")).await;
        assert_eq!(r.status, 200);
        assert!(r.latency < Duration::from_millis(200), "{:?}", r.latency);
    }
    let stopping = std::time::Instant::now();
    b.signal(Sig::SIGTERM);
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(0));
    // The flush gives up after 3 s; the unit allows 15 s to stop.
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn telemetry_can_be_turned_off() {
    let rx = OtlpReceiver::start().await;
    let dead = format!("http://{}", refused_addr());
    // Everything off: no trace id in the body, nothing sent.
    let off = exporting("service-b", &rx)
        .env("OTEL_SDK_DISABLED", "true")
        .env("SERVICE_A_URL", &dead)
        .spawn()
        .await;
    let r = Client::new().get(&off.url("/call-echo?msg=x")).await;
    assert_eq!(r.json["error"], "connection_refused");
    assert!(r.json.get("trace_id").is_none(), "{}", r.text);
    assert!(off.logs().contains("telemetry off"), "{}", off.logs());

    // Metrics off, traces on.
    let traces_only = exporting("service-b", &rx)
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_SERVICE_NAME", "traces-only")
        .env("SERVICE_A_URL", &dead)
        .spawn()
        .await;
    Client::new()
        .get(&traces_only.url("/call-echo?msg=x"))
        .await;

    // Traces off, metrics on.
    let metrics_only = exporting("service-b", &rx)
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_SERVICE_NAME", "metrics-only")
        .env("SERVICE_A_URL", &dead)
        .spawn()
        .await;
    Client::new()
        .get(&metrics_only.url("/call-echo?msg=x"))
        .await;
    eventually("metrics from metrics-only", WAIT, || {
        let p = rx.latest("metrics-only", "service_b.degraded_responses", &[]);
        async move { p }
    })
    .await;
    eventually("spans from traces-only", WAIT, || {
        let seen = rx.spans().iter().any(|s| s.service() == "traces-only");
        async move { seen.then_some(()) }
    })
    .await;
    // Stopped, each flushes what it has: whatever the first two would ever
    // send has been sent by the time they have exited.
    for mut proc in [off, traces_only, metrics_only] {
        proc.signal(Sig::SIGTERM);
        proc.wait_exit(WAIT).await;
    }
    let spans_from = |name: &str| rx.spans().iter().filter(|s| s.service() == name).count();
    let points_from = |name: &str| rx.points().iter().filter(|p| p.service() == name).count();
    assert_eq!(
        (spans_from("service-b"), points_from("service-b")),
        (0, 0),
        "sent with OTEL_SDK_DISABLED=true"
    );
    assert_eq!(
        points_from("traces-only"),
        0,
        "metrics sent with OTEL_METRICS_EXPORTER=none"
    );
    assert_eq!(
        spans_from("metrics-only"),
        0,
        "spans sent with OTEL_TRACES_EXPORTER=none"
    );

    // An exporter this build does not have is a bad setting: exit 2.
    let bad = ProcBuilder::new("service-b")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .run_to_exit(WAIT)
        .await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{}",
        bad.stderr
    );
}

/// A client that gives up while service-a hangs (the lab's central case,
/// seen from the caller's side) is recorded as nginx records it: status
/// 499, "client closed request". The access line, the SERVER span (status
/// and attribute) and the duration metric all have it.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_recorded_as_499() {
    let rx = OtlpReceiver::start().await;
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b = exporting("service-b", &rx)
        .env("SERVICE_A_URL", hang.url())
        .env("SERVICE_B_UPSTREAM_TIMEOUT", "5s")
        .args(["--shutdown-timeout", "6s"])
        .spawn()
        .await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient.get(b.url("/call-echo?msg=anyone")).send().await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));

    b.wait_for_log("GET /call-echo 499", WAIT).await;
    let line = b
        .logs()
        .lines()
        .find(|l| l.contains("GET /call-echo 499"))
        .unwrap()
        .to_owned();
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("client closed"), "{line}");
    let trace_id = line
        .split("trace_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let spans = trace(&rx, &trace_id, 1).await;
    let server = find(&spans, "service-b", SPAN_KIND_SERVER);
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("499")
    );
    assert_eq!(server.status_code, STATUS_ERROR);
    assert_eq!(server.attr("error.type").as_deref(), Some("client_closed"));
    let sample = eventually("a 499 duration sample", WAIT, || {
        let p = rx.latest(
            "service-b",
            "http.server.request.duration",
            &[("http.response.status_code", "499")],
        );
        async move { p }
    })
    .await;
    assert_eq!(sample.attr("http.route").as_deref(), Some("/call-echo"));
    assert_eq!(sample.attr("error.type").as_deref(), Some("client_closed"));
}
