//! The hoop in front of every request (`observe.rs`, with `access.rs` and
//! `durations.rs`), tested in the kit itself rather than only through the
//! daemons: a daemon of a few routes (200, 500, a degraded 503, any method)
//! runs in a child process of this test, with telemetry started as
//! `daemon::main` starts it and exporting to a test OTLP receiver; the
//! parent reads what arrived (the SERVER spans, the duration histogram) and
//! what the child logged (its access lines). A child process, because the
//! exporters read their endpoint from the environment, which a test may not
//! change in its own process.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::net::SocketAddr;
use std::time::Duration;

use salvo::http::StatusCode;
use salvo::{Depot, Response, Router, handler};
use service_kit::cli::ServerSettings;
use service_kit::observe::Degraded;
use service_kit::telemetry::{Telemetry, TelemetrySettings};
use service_kit::{App, Daemon, StartError};
use testkit::{OtlpReceiver, Point, SPAN_KIND_SERVER, STATUS_ERROR, Span, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in the child: run the daemon's side.
const CHILD: &str = "SERVICE_KIT_OBSERVE_CHILD";
/// The caller's trace context, sent with the first request.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

struct Kit;

#[derive(Debug, clap::Args)]
struct NoArgs {}

impl Daemon for Kit {
    const NAME: &'static str = "kit-test";
    const ABOUT: &'static str = "A daemon of the kit's tests.";
    const VERSION: &'static str = "0.0.1";
    const ENV_PREFIX: &'static str = "KIT_TEST";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:0";
    type Args = NoArgs;

    fn build(_: &ServerSettings, _: NoArgs) -> Result<App, StartError> {
        Ok(App::new(routes(), String::new()))
    }
}

#[handler]
async fn answer_ok() -> &'static str {
    "ok"
}

#[handler]
async fn answer_500(res: &mut Response) {
    res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
}

#[handler]
async fn answer_degraded(depot: &mut Depot, res: &mut Response) {
    depot.insert_typed(Degraded {
        kind: "timeout",
        status: 504,
    });
    res.status_code(StatusCode::SERVICE_UNAVAILABLE);
}

fn routes() -> Router {
    Router::new()
        .push(Router::with_path("ok").get(answer_ok))
        .push(Router::with_path("boom").get(answer_500))
        .push(Router::with_path("degraded").get(answer_degraded))
        .push(Router::with_path("any").goal(answer_ok))
}

/// Each request the child sends: method, target, extra header lines.
const REQUESTS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/ok?secret=1",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nuser-agent: kit-test/1\r\n",
    ),
    ("GET", "/ok", ""),
    ("GET", "/boom", ""),
    ("GET", "/degraded", ""),
    ("GET", "/nowhere", ""),
    ("HEAD", "/any", ""),
    ("POST", "/any", ""),
    ("PUT", "/any", ""),
    ("DELETE", "/any", ""),
    ("OPTIONS", "/any", ""),
    ("PATCH", "/any", ""),
    ("TRACE", "/any", ""),
    ("PURGE", "/any", ""),
    ("CONNECT", "kit:80", ""),
];

/// One request on a connection of its own; the status of the answer.
async fn send(addr: SocketAddr, method: &str, target: &str, headers: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {target} HTTP/1.1\r\nhost: kit\r\n{headers}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an answer: {answer:?}"))
}

/// The daemon's side: telemetry and logging as `daemon::main` sets them up,
/// the routes behind the hoops every daemon gets, each request once, then
/// the flush on exit.
fn child() {
    let settings = TelemetrySettings::from_env().unwrap();
    let (telemetry, layer) = Telemetry::start(&settings, Kit::NAME, Kit::VERSION).unwrap();
    // Held to the end: its writer thread writes the lines.
    let _logging = service_kit::logging::init(layer.into_iter().collect());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let addr = testkit::serve_in_process(service_kit::service::<Kit>(routes())).await;
        for (method, target, headers) in REQUESTS {
            let status = send(addr, method, target, headers).await;
            #[allow(clippy::print_stdout)] // The parent reads it.
            {
                println!("{method} {target} -> {status}");
            }
        }
        telemetry.shutdown(Duration::from_secs(5)).await;
    });
}

/// What the child wrote: its stdout (the statuses) and its access lines.
struct Run {
    stdout: String,
    access: Vec<String>,
}

impl Run {
    /// The access line of `method endpoint status`.
    fn line(&self, start: &str) -> &str {
        self.access
            .iter()
            .find(|l| l.contains(&format!("access: {start} ")))
            .unwrap_or_else(|| panic!("no access line {start:?} in {:#?}", self.access))
    }
}

/// Runs the child, exporting to `rx`, with `env` on top.
async fn run_child(rx: &OtlpReceiver, env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "the_hoop", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(CHILD, "1")
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the child did not finish in 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed: {stderr}");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        access: stderr
            .lines()
            .filter(|l| l.contains(" access: "))
            .map(str::to_owned)
            .collect(),
    }
}

fn server_span<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name && s.kind == SPAN_KIND_SERVER)
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| &s.name).collect();
            panic!("no SERVER span {name:?} in {names:?}")
        })
}

/// The points received once `http.server.request.duration` is among them.
async fn duration_points(rx: &OtlpReceiver) -> Vec<Point> {
    eventually("the duration points", Duration::from_secs(10), || {
        let points = rx.points();
        async move {
            points
                .iter()
                .any(|p| p.name == "http.server.request.duration")
                .then_some(points)
        }
    })
    .await
}

/// The attributes of a `GET /ok` answered 200.
const OK_ATTRS: [(&str, &str); 4] = [
    ("http.request.method", "GET"),
    ("url.scheme", "http"),
    ("http.response.status_code", "200"),
    ("http.route", "/ok"),
];

/// The `http.server.request.duration` point whose attributes are `attrs`
/// exactly.
fn duration_point<'a>(points: &'a [Point], attrs: &[(&str, &str)]) -> &'a Point {
    points
        .iter()
        .filter(|p| p.name == "http.server.request.duration")
        .find(|p| {
            p.attrs.len() == attrs.len()
                && attrs.iter().all(|(k, v)| p.attr(k).as_deref() == Some(*v))
        })
        .unwrap_or_else(|| panic!("no duration point with exactly {attrs:?}"))
}

#[test]
fn the_hoop() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        traced_requests_have_a_span_a_duration_and_an_access_line().await;
        untraced_requests_have_a_duration_and_an_access_line().await;
    });
}

async fn traced_requests_have_a_span_a_duration_and_an_access_line() {
    let rx = OtlpReceiver::start().await;
    let run = run_child(&rx, &[]).await;
    for expected in ["/ok?secret=1 -> 200", "/boom -> 500", "/degraded -> 503"] {
        assert!(run.stdout.contains(expected), "{}", run.stdout);
    }
    let spans = eventually("the SERVER spans", Duration::from_secs(10), || {
        let spans = rx.spans();
        async move { (spans.len() >= REQUESTS.len()).then_some(spans) }
    })
    .await;
    assert_eq!(spans.len(), REQUESTS.len(), "one span per request");

    // The caller's trace continues; the span names the route, never the query.
    let first = spans
        .iter()
        .find(|s| s.name == "GET /ok" && s.trace_id == TRACE_ID)
        .expect("the caller's traceparent was not continued");
    assert_eq!(first.kind, SPAN_KIND_SERVER);
    assert_eq!(first.parent_span_id, PARENT_SPAN);
    assert_eq!(first.service(), "kit-test");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
        ("url.path", "/ok"),
        ("http.route", "/ok"),
        ("user_agent.original", "kit-test/1"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(first.attr(key).as_deref(), Some(value), "{key}: {first:#?}");
    }
    assert_eq!(first.status_code, 0, "a 200 is no error");
    assert_eq!(first.attr("error.type"), None);
    assert_eq!(first.attr("kit_test.degraded"), None);

    // A 5xx is an error; a degraded answer says why, and that it is one.
    let boom = server_span(&spans, "GET /boom");
    assert_eq!(boom.status_code, STATUS_ERROR);
    assert_eq!(boom.attr("error.type").as_deref(), Some("500"));
    assert_eq!(boom.attr("kit_test.degraded"), None);
    let degraded = server_span(&spans, "GET /degraded");
    assert_eq!(degraded.status_code, STATUS_ERROR);
    assert_eq!(degraded.attr("error.type").as_deref(), Some("timeout"));
    assert_eq!(
        degraded.attr("http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(degraded.attr("kit_test.degraded").as_deref(), Some("true"));

    // A 4xx is the caller's mistake, and an unknown path has no route.
    let nowhere = server_span(&spans, "GET");
    assert_eq!(nowhere.status_code, 0);
    assert_eq!(nowhere.attr("http.route"), None);
    assert_eq!(
        nowhere.attr("http.response.status_code").as_deref(),
        Some("404")
    );

    // Every standard method by its name, anything else as `_OTHER`.
    for method in [
        "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "_OTHER",
    ] {
        let span = server_span(&spans, &format!("{method} /any"));
        assert_eq!(span.attr("http.request.method").as_deref(), Some(method));
    }
    let connect = server_span(&spans, "CONNECT");
    assert_eq!(
        connect.attr("http.request.method").as_deref(),
        Some("CONNECT")
    );

    // The duration histogram: one point per method, route, status and kind,
    // in seconds on the semantic conventions' buckets.
    let points = duration_points(&rx).await;
    let ok = duration_point(&points, &OK_ATTRS);
    assert_eq!(ok.count, 2.0, "two requests to /ok");
    assert_eq!(ok.unit, "s");
    assert_eq!(ok.bounds, service_kit::durations::DURATION_BUCKETS.to_vec());
    // A 5xx and a degraded answer carry their error.type.
    for (status, route, kind) in [("500", "/boom", "500"), ("503", "/degraded", "timeout")] {
        let attrs = [
            ("http.request.method", "GET"),
            ("url.scheme", "http"),
            ("http.response.status_code", status),
            ("http.route", route),
            ("error.type", kind),
        ];
        assert_eq!(duration_point(&points, &attrs).count, 1.0, "{route}");
    }
    // An unknown path has no route.
    let nowhere = [
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
        ("http.response.status_code", "404"),
    ];
    assert_eq!(duration_point(&points, &nowhere).count, 1.0);

    // The access lines: INFO, ERROR for a 5xx, WARN for a degraded answer
    // with its kind and status; each with the span's trace id.
    let line = run.line("GET /ok 200");
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains(&format!("trace_id={TRACE_ID}")), "{line}");
    assert!(!line.contains("trace_sampled"), "{line}");
    let line = run.line("GET /boom 500");
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!("trace_id={}", boom_trace(&spans))),
        "{line}"
    );
    assert!(line.contains("trace_sampled=true"), "{line}");
    let line = run.line("GET /degraded 503");
    assert!(line.contains(" WARN "), "{line}");
    for needle in [
        "degraded: timeout (upstream 504) in ",
        "kind=timeout",
        "upstream_status=504",
        "status=503",
        "endpoint=/degraded",
        "trace_sampled=true",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    let line = run.line("GET (none) 404");
    assert!(line.contains(" INFO "), "{line}");
}

fn boom_trace(spans: &[Span]) -> String {
    server_span(spans, "GET /boom").trace_id.clone()
}

async fn untraced_requests_have_a_duration_and_an_access_line() {
    let rx = OtlpReceiver::start().await;
    let run = run_child(&rx, &[("OTEL_TRACES_EXPORTER", "none")]).await;
    assert!(run.stdout.contains("/ok?secret=1 -> 200"), "{}", run.stdout);
    assert!(run.stdout.contains("/degraded -> 503"), "{}", run.stdout);
    let points = duration_points(&rx).await;
    let ok = duration_point(&points, &OK_ATTRS);
    assert_eq!(ok.count, 2.0);
    assert!(rx.spans().is_empty(), "spans with traces off");
    let line = run.line("GET /ok 200");
    assert!(line.contains("trace_id=-"), "{line}");
    let line = run.line("GET /degraded 503");
    assert!(line.contains("trace_id=- trace_sampled=-"), "{line}");
}
