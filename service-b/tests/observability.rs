//! The `observability/` stack, validated where no container engine runs:
//! the compose file by docker-compose itself, the Prometheus config and
//! rules by promtool (unit tests for every alert), and every PromQL
//! expression of the dashboard and the rules executed against a real
//! Prometheus after the real daemons served traffic with timeouts and
//! degradations.
//!
//! Needs the tools from `.ci/fetch-trixie-tools` in `LAB_TOOLS`, so it is
//! `#[ignore]`d for a bare `cargo test`; `./test.sh` runs it.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::{Behaviour, Client, FakeUpstream, MetricsBackend, Proc, ProcBuilder, Sig, tools_dir};

fn stack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability")
}

fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tools_dir().join(tool))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs docker-compose in LAB_TOOLS; ./test.sh runs it"]
fn compose_file_is_valid_pins_its_images_and_publishes_on_loopback_only() {
    run(
        "docker-compose",
        &["-f", "compose.yaml", "config", "-q"],
        &stack(),
    );
    let config: Value = serde_json::from_str(&run(
        "docker-compose",
        &["-f", "compose.yaml", "config", "--format", "json"],
        &stack(),
    ))
    .unwrap();
    let services = config["services"].as_object().unwrap();
    for name in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        let service = &services[name];
        let image = service["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: image {image} is not pinned"
        );
        for port in service["ports"].as_array().into_iter().flatten() {
            assert_eq!(
                port["host_ip"], "127.0.0.1",
                "{name} publishes {port} beyond loopback"
            );
        }
    }
    // The daemons' default endpoint is where the stack listens.
    let published: Vec<String> = services["otel-collector"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["published"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(published.contains(&"4318".to_owned()), "{published:?}");
    assert!(service_kit::telemetry::DEFAULT_ENDPOINT.ends_with(":4318"));
}

#[test]
#[ignore = "needs promtool in LAB_TOOLS; ./test.sh runs it"]
fn prometheus_config_and_rules_pass_promtool_and_every_alert_has_unit_tests() {
    let prometheus = stack().join("prometheus");
    run("promtool", &["check", "rules", "rules.yml"], &prometheus);
    run(
        "promtool",
        &["test", "rules", "rules.test.yml"],
        &prometheus,
    );

    // promtool 2.53 predates the `otlp:` block of Prometheus 3: check the
    // rest with promtool, and that block here.
    let config = std::fs::read_to_string(prometheus.join("prometheus.yml")).unwrap();
    let (rest, otlp) = config
        .split_once("\notlp:\n")
        .expect("an otlp: block, last");
    for attribute in ["service.name", "service.instance.id"] {
        assert!(
            otlp.contains(&format!("    - {attribute}\n")),
            "{attribute} not promoted:\n{otlp}"
        );
    }
    assert!(otlp.contains("  promote_resource_attributes:\n"), "{otlp}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), rest).unwrap();
    std::fs::copy(prometheus.join("rules.yml"), dir.path().join("rules.yml")).unwrap();
    run(
        "promtool",
        &["check", "config", "prometheus.yml"],
        dir.path(),
    );

    // Every alert is exercised by the unit tests.
    let tests = std::fs::read_to_string(prometheus.join("rules.test.yml")).unwrap();
    let rules = std::fs::read_to_string(prometheus.join("rules.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = format!("alertname: {line}\n        exp_alerts:\n          - exp_labels");
        let quiet = format!("alertname: {line}\n        exp_alerts: []");
        assert!(tests.contains(&fires), "no test where {line} fires");
        assert!(tests.contains(&quiet), "no test where {line} stays quiet");
    }
}

fn dashboard_queries() -> Vec<(String, String)> {
    let path = stack().join("grafana/dashboards/two-service-lab.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

async fn exporting(name: &str, backend: &MetricsBackend, upstream: &str) -> Proc {
    ProcBuilder::new(name)
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            backend.otlp_metrics_endpoint(),
        )
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        // Every failure below should be its own kind, not circuit_open.
        .env("SERVICE_B_BREAKER_FAILURES", "100")
        .env("SERVICE_A_URL", upstream)
        .spawn()
        .await
}

#[tokio::test]
#[ignore = "needs prometheus and vmagent in LAB_TOOLS; ./test.sh runs it"]
async fn every_dashboard_and_rule_query_returns_data_from_real_traffic() {
    let rules = stack().join("prometheus/rules.yml");
    let backend = MetricsBackend::start(&[&rules]).await;
    let client = Client::new();

    // Traffic in two rounds: Prometheus computes rate() from increases
    // between samples, so what a daemon did before its first export counts
    // only as a starting value; the second round is what the rates see.
    let mut a = exporting("service-a", &backend, "").await;
    let b = exporting("service-b", &backend, &a.url("")).await;
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b2 = exporting("service-b", &backend, &hang.url()).await;
    let dead = FakeUpstream::start(Behaviour::Reset).await;
    let b3 = exporting("service-b", &backend, &dead.url()).await;
    for round in 0..2 {
        // 20 good answers...
        client.call_echo_ok(&b.url(""), 20).await;
        // ...3 failed connections...
        client
            .call_echo_degraded(&b3.url(""), 3, "connection_failed")
            .await;
        // ...and 3 timeouts at the default 1 s deadline, at once.
        let url = b2.url("/call-echo?msg=x");
        let timeouts = (0..3).map(|_| client.get(&url));
        for r in futures::future::join_all(timeouts).await {
            assert_eq!(r.json["error"], "timeout");
        }
        if round == 0 {
            backend
                .wait_for(
                    "sum(http_server_request_duration_seconds_count{http_route=\"/call-echo\"})",
                    |s| s.first().is_some_and(|s| s.value >= 26.0),
                )
                .await;
        }
    }
    // service-a stops: service-b keeps answering, 503 connection_refused.
    a.signal(Sig::SIGTERM);
    a.wait_exit(Duration::from_secs(10)).await;
    let _a = exporting("service-a", &backend, "").await; // back, elsewhere: the uptime panel sees it
    client
        .call_echo_degraded(&b.url(""), 3, "connection_refused")
        .await;

    // What a user must see: a number (not NaN, not only zeros) in every
    // panel, and in the panels by kind, each kind this traffic caused.
    let mut report = Vec::new();
    for (title, expr) in dashboard_queries() {
        let kinds: &[&str] = match title.as_str() {
            "Degraded answers of service-b, by kind" => {
                &["timeout", "connection_failed", "connection_refused"]
            }
            // A histogram series starts with its first observation, which
            // rate() sees only as a starting value: the kinds of both rounds.
            "Calls to service-a: failures, by kind" => &["timeout", "connection_failed"],
            _ => &[],
        };
        let samples = backend
            .wait_for(&expr, |s| shows_data(s) && shows_kinds(s, kinds))
            .await;
        report.push(format!(
            "dashboard {title:?}: {expr}\n    -> {}",
            show(&samples)
        ));
    }

    let answer = backend.api("/api/v1/rules").await;
    let mut alerts_checked = 0;
    for group in answer["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            let name = rule["name"].as_str().unwrap();
            let expr = rule["query"].as_str().unwrap();
            if rule["type"] == "recording" {
                let samples = backend.wait_for(name, shows_data).await;
                report.push(format!("record {name}: {expr}\n    -> {}", show(&samples)));
            } else if name == "DaemonNoData" {
                // Both daemons report, so this one must be empty (its firing is
                // covered by promtool's unit test).
                let samples = backend.query(expr).await;
                assert!(
                    samples.is_empty(),
                    "{name} while both daemons report: {samples:?}"
                );
                report.push(format!(
                    "alert {name}: {expr}\n    -> (empty: both daemons report)"
                ));
                alerts_checked += 1;
            } else {
                let samples = backend.wait_for(expr, shows_data).await;
                report.push(format!("alert {name}: {expr}\n    -> {}", show(&samples)));
                alerts_checked += 1;
            }
        }
    }
    assert_eq!(alerts_checked, 4);
    // The three alerts the traffic should trip are pending (their `for:` runs).
    let alerts = backend
        .wait_for_alerts(&[
            "ServiceBDegrading",
            "ServiceBUpstreamTimeouts",
            "ServiceBSlowP99",
        ])
        .await;
    report.push(format!("alerts pending or firing: {alerts:?}"));
    println!("{}", report.join("\n"));
}

/// At least one series with a number a user can read: not NaN, not zero.
fn shows_data(samples: &[testkit::Sample]) -> bool {
    samples.iter().any(|s| s.value.is_finite() && s.value > 0.0)
}

/// Every kind in `kinds` has a series by `error_type` with a positive value.
fn shows_kinds(samples: &[testkit::Sample], kinds: &[&str]) -> bool {
    kinds.iter().all(|kind| {
        samples.iter().any(|s| {
            s.labels.get("error_type").and_then(Value::as_str) == Some(kind) && s.value > 0.0
        })
    })
}

fn show(samples: &[testkit::Sample]) -> String {
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
