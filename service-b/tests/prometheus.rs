//! The metrics path through a real Prometheus: service-b and service-a push
//! OTLP straight into Prometheus 3's OTLP receiver, on the shipped
//! `prometheus.yml`; PromQL over Prometheus's HTTP API must show what the
//! test caused.
//!
//! Needs the binaries from `observability/build/build.sh` in `LAB_TOOLS`, so it is
//! `#[ignore]`d for a bare `cargo test`; `./test.sh` runs it.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use testkit::{
    Behaviour, Client, FakeUpstream, MetricsBackend, Proc, ProcBuilder, Sig, refused_addr,
};

async fn daemon(name: &str, backend: &MetricsBackend, upstream: Option<&str>) -> Proc {
    let mut builder = ProcBuilder::new(name)
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            backend.otlp_metrics_endpoint(),
        )
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("SERVICE_B_UPSTREAM_TIMEOUT", "300ms");
    if let Some(url) = upstream {
        builder = builder.env("SERVICE_A_URL", url);
    }
    builder.spawn().await
}

/// How long a pushed sample may take to show (the daemons push every 500 ms).
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn total(samples: &[testkit::Sample]) -> f64 {
    samples.iter().map(|s| s.value).sum()
}

#[tokio::test]
#[ignore = "needs prometheus in LAB_TOOLS; ./test.sh runs it"]
async fn promql_shows_the_degradations_timeouts_and_latency_the_test_caused() {
    let backend = MetricsBackend::start().await;
    let client = Client::new();

    // 5 good answers through a real service-a, then 3 refused once it stops.
    let mut a = daemon("service-a", &backend, None).await;
    let b = daemon("service-b", &backend, Some(&a.url(""))).await;
    client.call_echo_ok(&b.url(""), 5).await;
    a.signal(Sig::SIGTERM);
    a.wait_exit(std::time::Duration::from_secs(10)).await;
    client
        .call_echo_degraded(&b.url(""), 3, "connection_refused")
        .await;
    // 2 timeouts from a second service-b whose service-a hangs.
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b2 = daemon("service-b", &backend, Some(&hang.url())).await;
    client.call_echo_degraded(&b2.url(""), 2, "timeout").await;
    // And one that is never called at all.
    let _idle = daemon(
        "service-b",
        &backend,
        Some(&format!("http://{}", refused_addr())),
    )
    .await;

    let refused = backend
        .wait_for(
            r#"sum(service_b_degraded_responses_total{error_type="connection_refused"})"#,
            WAIT,
            |s| total(s) == 3.0,
        )
        .await;
    assert_eq!(total(&refused), 3.0);

    let timeouts = backend
        .wait_for(
            r#"sum(http_client_request_duration_seconds_count{service_name="service-b", error_type="timeout"})"#,
            WAIT,
            |s| total(s) == 2.0,
        )
        .await;
    assert_eq!(total(&timeouts), 2.0);

    let by_kind = backend
        .wait_for(
            "sum by (error_type) (service_b_degraded_responses_total) > 0",
            WAIT,
            |s| s.len() == 2,
        )
        .await;
    let mut kinds: Vec<(String, f64)> = by_kind
        .iter()
        .map(|s| (s.label("error_type").to_owned(), s.value))
        .collect();
    kinds.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        kinds,
        [
            ("connection_refused".to_owned(), 3.0),
            ("timeout".to_owned(), 2.0)
        ]
    );

    // Good answers, by route and status, from service-b's server histogram...
    backend
        .wait_for(
            r#"sum(http_server_request_duration_seconds_count{service_name="service-b", http_route="/call-echo", http_response_status_code="200"})"#,
            WAIT,
            |s| total(s) == 5.0,
        )
        .await;
    // ...and from service-a's.
    backend
        .wait_for(
            r#"sum(http_server_request_duration_seconds_count{service_name="service-a", http_route="/echo"})"#,
            WAIT,
            |s| total(s) == 5.0,
        )
        .await;

    // A p99 from the buckets: the timeouts put it between 250 ms and 500 ms
    // (the 300 ms deadline falls in the 0.25..0.5 bucket).
    let p99 = backend
        .wait_for(
            r#"histogram_quantile(0.99, sum by (le) (http_server_request_duration_seconds_bucket{service_name="service-b", http_route="/call-echo"}))"#,
            WAIT,
            |s| s.len() == 1 && s[0].value.is_finite(),
        )
        .await;
    assert!(
        (0.25..=0.5).contains(&p99[0].value),
        "p99 = {}",
        p99[0].value
    );

    // Resource attributes arrive as labels on every series.
    let series = backend.query(r#"service_b_degraded_responses_total"#).await;
    for s in &series {
        for label in [
            "service_name",
            "service_instance_id",
            "service_version",
            "host_name",
        ] {
            assert!(
                !s.label(label).is_empty(),
                "{label} missing on {:?}",
                s.labels
            );
        }
    }
    drop(b);
    drop(b2);
}
