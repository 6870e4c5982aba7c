//! The observability stack as users run it: `docker compose up` of the
//! shipped `observability/compose.yaml` under a real Docker Engine, with the
//! collector's, Jaeger's and Prometheus's images built from their Go modules
//! at the pinned releases (`observability/with-engine.sh`), and the real
//! daemons on the host at their telemetry defaults (OTLP to
//! `localhost:4318`, metrics every 60 s). What the README promises is
//! checked through the public APIs a user's browser calls, on the published
//! ports: Jaeger's `/api/...` and Prometheus's `/api/v1/...`.
//!
//! The two tests here share one stack (the first starts it). The tests that
//! need a stack of their own are in `stack_engine.rs`. Both run only under
//! `with-engine.sh`, so they are `#[ignore]`d for a bare `cargo test`;
//! `./test.sh` runs them there.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::compose::{Compose, JAEGER, PROMETHEUS};
use testkit::jaeger::{Jaeger, figures, service_of, tag};
use testkit::{
    Behaviour, Client, FakeUpstream, Proc, ProcBuilder, Prometheus, Sample, Sig, duration_secs,
    eventually, read_yaml, refused_addr, stack_dir, unused_addr,
};

/// A daemon at its telemetry defaults, but for `env`; on `127.0.0.1:0`
/// unless `listen` says where.
async fn daemon(name: &str, env: &[(&str, &str)], listen: Option<&str>) -> Proc {
    let mut builder = ProcBuilder::new(name).default_telemetry();
    if let Some(addr) = listen {
        builder = builder.no_listen().args(["--listen", addr]);
    }
    for (k, v) in env {
        builder = builder.env(*k, *v);
    }
    builder.spawn().await
}

// --- The README's Jaeger walk-through --------------------------------------

#[tokio::test]
#[ignore = "needs the running stack: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_jaeger_finds_a_timeout_trace_across_both_daemons_and_its_monitor_tab_has_figures() {
    Compose::up_shared().await;
    let jaeger = Jaeger::at(JAEGER);
    let prometheus = Prometheus::at(PROMETHEUS);
    let client = Client::new();
    // Traces only: the metrics test counts every request it sees.
    let traces_only = [("OTEL_METRICS_EXPORTER", "none")];
    let a = daemon("service-a", &traces_only, None).await;
    let a_url = a.url("");
    let b = daemon(
        "service-b",
        &[traces_only[0], ("SERVICE_A_URL", &a_url)],
        None,
    )
    .await;
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let hang_url = hang.url();
    let b_hung = daemon(
        "service-b",
        &[traces_only[0], ("SERVICE_A_URL", &hang_url)],
        None,
    )
    .await;

    span_metrics_with_errors(&client, &prometheus, &b, &b_hung).await;
    let trace_id = freeze_service_a_for_a_timeout(&client, &a, &b).await;
    // More calls, so the Monitor tab's rates have a second flush to compare.
    client.call_echo_ok(&b.url(""), 5).await;
    client
        .call_echo_degraded(&b_hung.url(""), 1, "timeout")
        .await;

    let services = both_services_listed(&jaeger).await;
    let listing = the_trace_has_three_spans_across_both_daemons(&jaeger, &trace_id).await;
    a_tag_search_finds_it(&jaeger, &trace_id).await;
    let monitor = the_monitor_tab_has_figures(&jaeger).await;
    println!(
        "Jaeger services: {services:?}\ntrace {trace_id}:\n  {}\nMonitor tab, service-b:\n  {}",
        listing.join("\n  "),
        monitor.join("\n  ")
    );
    drop(b_hung);
}

/// Span metrics are counters: the Monitor tab's rates need two flushes of
/// the spanmetrics connector (every 15 s) that saw calls, errors included.
async fn span_metrics_with_errors(
    client: &Client,
    prometheus: &Prometheus,
    b: &Proc,
    b_hung: &Proc,
) {
    client.call_echo_ok(&b.url(""), 5).await;
    client
        .call_echo_degraded(&b_hung.url(""), 1, "timeout")
        .await;
    prometheus
        .wait_for(
            r#"traces_span_metrics_calls_total{service_name="service-b", span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR"}"#,
            Duration::from_secs(60),
            |s| !s.is_empty(),
        )
        .await;
}

/// The README's walk-through: freeze service-a, call service-b, thaw; the
/// 503's body names the trace.
async fn freeze_service_a_for_a_timeout(client: &Client, a: &Proc, b: &Proc) -> String {
    a.signal(Sig::SIGSTOP);
    let reply = client.get(&b.url("/call-echo?msg=hi")).await;
    a.signal(Sig::SIGCONT);
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json["error"], "timeout", "{}", reply.text);
    reply.json["trace_id"].as_str().unwrap().to_owned()
}

async fn both_services_listed(jaeger: &Jaeger) -> BTreeSet<String> {
    eventually(
        "Jaeger to list both services",
        Duration::from_secs(30),
        || async {
            let names = jaeger.services().await;
            (names.contains("service-a") && names.contains("service-b")).then_some(names)
        },
    )
    .await
}

/// The trace id from the 503 body: one trace, three spans, both services
/// (service-a's span arrives once it is thawed and has answered). Returns
/// the spans, one line each.
async fn the_trace_has_three_spans_across_both_daemons(
    jaeger: &Jaeger,
    trace_id: &str,
) -> Vec<String> {
    let trace = eventually(
        "the timeout's trace with three spans",
        Duration::from_secs(30),
        || async {
            let trace = jaeger.trace(trace_id).await?;
            (trace["spans"].as_array()?.len() == 3).then_some(trace)
        },
    )
    .await;
    let spans = trace["spans"].as_array().unwrap();
    let listing: Vec<String> = spans
        .iter()
        .map(|span| {
            format!(
                "span {} parent {} {} {} kind={} status={} error.type={} service_b.degraded={} http.response.status_code={} duration={}us",
                span["spanID"].as_str().unwrap(),
                span["references"][0]["spanID"].as_str().unwrap_or("-"),
                service_of(&trace, span),
                span["operationName"].as_str().unwrap(),
                tag(span, "span.kind").unwrap_or(&Value::Null),
                tag(span, "otel.status_code").unwrap_or(&Value::Null),
                tag(span, "error.type").unwrap_or(&Value::Null),
                tag(span, "service_b.degraded").unwrap_or(&Value::Null),
                tag(span, "http.response.status_code").unwrap_or(&Value::Null),
                span["duration"],
            )
        })
        .collect();
    let find = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| {
                service_of(&trace, s) == service && tag(s, "span.kind") == Some(&Value::from(kind))
            })
            .unwrap_or_else(|| panic!("no {kind} span of {service}: {listing:#?}"))
    };
    let b_server = find("service-b", "server");
    let b_client = find("service-b", "client");
    let a_server = find("service-a", "server");
    assert_eq!(b_server["operationName"], "GET /call-echo");
    assert_eq!(tag(b_server, "error.type"), Some(&Value::from("timeout")));
    assert_eq!(
        tag(b_server, "service_b.degraded"),
        Some(&Value::from(true))
    );
    assert_eq!(
        tag(b_server, "otel.status_code"),
        Some(&Value::from("ERROR"))
    );
    assert_eq!(tag(b_server, "error"), Some(&Value::from(true)));
    assert_eq!(tag(b_client, "error.type"), Some(&Value::from("timeout")));
    assert_eq!(
        tag(b_client, "otel.status_code"),
        Some(&Value::from("ERROR"))
    );
    assert_eq!(a_server["operationName"], "GET /echo");
    assert_eq!(a_server["references"][0]["spanID"], b_client["spanID"]);
    assert_eq!(b_client["references"][0]["spanID"], b_server["spanID"]);
    listing
}

/// Search: service service-b, tag error.type=timeout finds it.
async fn a_tag_search_finds_it(jaeger: &Jaeger, trace_id: &str) {
    let found = jaeger
        .search(
            "service-b",
            60,
            100,
            &[("tags", r#"{"error.type":"timeout"}"#.to_owned())],
        )
        .await;
    let ids: Vec<&str> = found.iter().filter_map(|t| t["traceID"].as_str()).collect();
    assert!(ids.contains(&trace_id), "{trace_id} not in {ids:?}");
}

/// The Monitor tab: service-b's request rate, p95 latency and error rate,
/// from the span metrics in Prometheus, as the UI asks for them.
async fn the_monitor_tab_has_figures(jaeger: &Jaeger) -> Vec<String> {
    let mut monitor = Vec::new();
    for (what, extra) in [
        ("calls", &[][..]),
        ("latencies", &[("quantile", "0.95")][..]),
        ("errors", &[][..]),
    ] {
        let answer = eventually(
            &format!("Jaeger's {what} for service-b to show a figure"),
            Duration::from_secs(60),
            || async {
                let answer = jaeger.monitor(what, "service-b", extra).await;
                figures(&answer).iter().any(|v| *v > 0.0).then_some(answer)
            },
        )
        .await;
        let values = figures(&answer);
        monitor.push(format!(
            "{what}: {} ({} points, last {:?})",
            answer["name"].as_str().unwrap_or(""),
            values.len(),
            values.last()
        ));
    }
    monitor
}

// --- Every rule and panel query ---------------------------------------------

/// Grafana's `$__rate_interval` for this dashboard and data source:
/// `max($__interval + scrape interval, 4 × scrape interval)`, where the
/// scrape interval is the data source's `jsonData.timeInterval` (15 s when
/// unset) and `$__interval` is the time range over the panel's data points
/// (at most one per pixel; 1000 here), never below that same minimum.
fn rate_interval(dashboard: &Value) -> String {
    let sources = read_yaml(&stack_dir().join("grafana/provisioning/datasources/datasources.yaml"));
    let prometheus = sources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "prometheus")
        .unwrap();
    let scrape = duration_secs(
        prometheus["jsonData"]["timeInterval"]
            .as_str()
            .unwrap_or("15s"),
    );
    let range = duration_secs(
        dashboard["time"]["from"]
            .as_str()
            .unwrap()
            .strip_prefix("now-")
            .unwrap(),
    );
    let interval = (range / 1000).max(scrape);
    format!("{}s", (interval + scrape).max(4 * scrape))
}

/// Every query of the dashboard, `$__rate_interval` as Grafana computes it.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = stack_dir().join("grafana/dashboards/two-service-lab.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let window = rate_interval(&dashboard);
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", &window);
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

/// How long one export may take to show: the 60 s interval, the collector's
/// batching, and a rule evaluation (15 s).
const EXPORT: Duration = Duration::from_secs(90);

/// Requests to /call-echo that Prometheus has seen, all service-b instances.
const CALL_ECHO_COUNT: &str = r#"sum(http_server_request_duration_seconds_count{service_name="service-b", http_route="/call-echo"})"#;

/// service-b with every kind of failure at hand: a good service-a (on an
/// address of its own, so it can restart on it), a hung one, one that
/// resets, one that refuses.
struct Daemons {
    a: Proc,
    a_addr: String,
    b: Proc,
    b_hung: Proc,
    b_reset: Proc,
    b_refused: Proc,
    _fakes: (FakeUpstream, FakeUpstream),
}

/// Every failure below should be its own kind, not circuit_open.
const NO_BREAKER: (&str, &str) = ("SERVICE_B_BREAKER_FAILURES", "100");

/// service-b calling `url` as its service-a, breaker off.
async fn b_calling(url: &str) -> Proc {
    daemon("service-b", &[NO_BREAKER, ("SERVICE_A_URL", url)], None).await
}

impl Daemons {
    async fn start() -> Self {
        let a_addr = unused_addr().to_string();
        let a_url = format!("http://{a_addr}");
        let a = daemon("service-a", &[], Some(&a_addr)).await;
        let b = b_calling(&a_url).await;
        let hang = FakeUpstream::start(Behaviour::Hang).await;
        let b_hung = b_calling(&hang.url()).await;
        let reset = FakeUpstream::start(Behaviour::Reset).await;
        let b_reset = b_calling(&reset.url()).await;
        let b_refused = b_calling(&format!("http://{}", refused_addr())).await;
        Self {
            a,
            a_addr,
            b,
            b_hung,
            b_reset,
            b_refused,
            _fakes: (hang, reset),
        }
    }

    /// 3 answers of each failure kind; the timeouts at once (1 s each).
    async fn every_failure_kind(&self, client: &Client) {
        client
            .call_echo_degraded(&self.b_reset.url(""), 3, "connection_failed")
            .await;
        client
            .call_echo_degraded(&self.b_refused.url(""), 3, "connection_refused")
            .await;
        let url = self.b_hung.url("/call-echo?msg=x");
        let timeouts = (0..3).map(|_| client.get(&url));
        for r in futures::future::join_all(timeouts).await {
            assert_eq!(r.json["error"], "timeout", "{}", r.text);
        }
    }

    /// service-a stops (SIGTERM) and starts again on the same address.
    async fn restart_a(&mut self) {
        self.a.signal(Sig::SIGTERM);
        self.a.wait_exit(Duration::from_secs(10)).await;
        self.a = daemon("service-a", &[], Some(&self.a_addr)).await;
    }
}

#[tokio::test]
#[ignore = "needs the running stack: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_prometheus_shows_every_rule_and_panel_at_the_default_export_interval() {
    Compose::up_shared().await;
    let prometheus = Prometheus::at(PROMETHEUS);
    let started = Instant::now();
    let mut daemons = Daemons::start().await;
    let mut report = Vec::new();

    let (restarted, old_uptime) =
        four_export_rounds_with_a_restart(&prometheus, &mut daemons, started, &mut report).await;
    every_panel_shows_data(&prometheus, &mut report).await;
    every_rule_is_healthy_and_shows_data(&prometheus, &mut report).await;
    uptime_panel_shows_the_new_process(&prometheus, restarted, old_uptime, &mut report).await;
    println!("{}", report.join("\n"));
    drop(daemons);
}

/// Prometheus computes rate() from increases between samples, 60 s apart:
/// a series counts from its second export on. Two rounds of good answers
/// only (the second checks the healthy share), then two rounds with every
/// failure kind; service-a restarts in the third. Returns when it restarted
/// and its last uptime before.
async fn four_export_rounds_with_a_restart(
    prometheus: &Prometheus,
    daemons: &mut Daemons,
    started: Instant,
    report: &mut Vec<String>,
) -> (Instant, f64) {
    let client = Client::new();
    let mut expected = 0.0;
    let mut restart = None;
    for round in 0..4 {
        client.call_echo_ok(&daemons.b.url(""), 20).await;
        expected += 20.0;
        if round >= 2 {
            daemons.every_failure_kind(&client).await;
            expected += 9.0;
        }
        prometheus
            .wait_for(CALL_ECHO_COUNT, EXPORT, |s| {
                s.first().is_some_and(|s| s.value >= expected)
            })
            .await;
        if round == 1 {
            // A healthy system: answers, no 503 ever: the share reads 0 %.
            let healthy = prometheus
                .wait_for("service_b:degraded_ratio:rate5m", EXPORT, |s| {
                    s.len() == 1 && s[0].value == 0.0
                })
                .await;
            report.push(format!(
                "healthy: service_b:degraded_ratio:rate5m -> {}",
                show(&healthy)
            ));
        }
        if round == 2 {
            let uptime = prometheus
                .query(r#"process_uptime_seconds{service_name="service-a"}"#)
                .await;
            daemons.restart_a().await;
            report.push(format!(
                "service-a restarted after {:?}; its last uptime in Prometheus {}",
                started.elapsed(),
                show(&uptime)
            ));
            restart = Some((Instant::now(), uptime[0].value));
        }
    }
    restart.unwrap()
}

/// What a user must see: a number (not NaN, not only zeros) in every panel,
/// and in the panels by kind, each kind the traffic caused.
async fn every_panel_shows_data(prometheus: &Prometheus, report: &mut Vec<String>) {
    for (title, expr) in dashboard_queries() {
        let kinds: &[&str] = match title.as_str() {
            "Degraded answers of service-b, by kind" | "Calls to service-a: failures, by kind" => {
                &["timeout", "connection_failed", "connection_refused"]
            }
            _ => &[],
        };
        let samples = prometheus
            .wait_for(&expr, EXPORT, |s| shows_data(s) && shows_kinds(s, kinds))
            .await;
        report.push(format!(
            "dashboard {title:?}: {expr}\n    -> {}",
            show(&samples)
        ));
    }
}

/// Every rule evaluates without error; every recording rule and every
/// alert's expression the traffic trips shows data; the three alerts the
/// traffic trips are pending (their `for:` runs).
async fn every_rule_is_healthy_and_shows_data(prometheus: &Prometheus, report: &mut Vec<String>) {
    let answer = prometheus.api("/api/v1/rules").await;
    let mut alerts_checked = 0;
    for group in answer["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            let name = rule["name"].as_str().unwrap();
            let expr = rule["query"].as_str().unwrap();
            if rule["type"] == "recording" {
                let samples = prometheus.wait_for(name, EXPORT, shows_data).await;
                report.push(format!("record {name}: {expr}\n    -> {}", show(&samples)));
            } else if name == "DaemonNoData" {
                // Both daemons report, so this one must be empty (its firing is
                // covered by promtool's unit test).
                let samples = prometheus.query(expr).await;
                assert!(
                    samples.is_empty(),
                    "{name} while both daemons report: {samples:?}"
                );
                report.push(format!(
                    "alert {name}: {expr}\n    -> (empty: both daemons report)"
                ));
                alerts_checked += 1;
            } else {
                let samples = prometheus.wait_for(expr, EXPORT, shows_data).await;
                report.push(format!("alert {name}: {expr}\n    -> {}", show(&samples)));
                alerts_checked += 1;
            }
        }
    }
    assert_eq!(alerts_checked, 4);
    let alerts = prometheus
        .wait_for_alerts(
            &[
                "ServiceBDegrading",
                "ServiceBUpstreamTimeouts",
                "ServiceBSlowP99",
            ],
            EXPORT,
        )
        .await;
    report.push(format!("alerts pending or firing: {alerts:?}"));
}

/// After the restart, the uptime panel shows the new process, not the old
/// one's last (larger) value, which Prometheus keeps for 5 minutes.
async fn uptime_panel_shows_the_new_process(
    prometheus: &Prometheus,
    restarted: Instant,
    old_uptime: f64,
    report: &mut Vec<String>,
) {
    let uptime_panel = dashboard_queries()
        .into_iter()
        .find(|(title, _)| title == "Uptime, by daemon")
        .unwrap()
        .1;
    let uptime = prometheus
        .wait_for(&uptime_panel, Duration::from_secs(150), |s| {
            s.iter()
                .any(|s| s.label("service_name") == "service-a" && s.value < old_uptime)
        })
        .await;
    report.push(format!(
        "uptime panel {:?} after service-a's restart: {} (old process: {old_uptime})",
        restarted.elapsed(),
        show(&uptime)
    ));
}

/// At least one series with a number a user can read: not NaN, not zero.
fn shows_data(samples: &[Sample]) -> bool {
    samples.iter().any(|s| s.value.is_finite() && s.value > 0.0)
}

/// Every kind in `kinds` has a series by `error_type` with a positive value.
fn shows_kinds(samples: &[Sample], kinds: &[&str]) -> bool {
    kinds.iter().all(|kind| {
        samples
            .iter()
            .any(|s| s.label("error_type") == *kind && s.value > 0.0)
    })
}

fn show(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| {
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| {
                    [
                        "service_name",
                        "http_route",
                        "http_response_status_code",
                        "error_type",
                    ]
                    .contains(&k.as_str())
                })
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            format!("{{{}}} {:.4}", labels.join(","), s.value)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
