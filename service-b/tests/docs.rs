//! What docs/TELEMETRY.md says the daemons export, against what they
//! export: its metrics table names every metric each daemon sends (with
//! its instrument and unit) and no other, and the refusals that make no
//! call (`overloaded`, `circuit_open`) have no CLIENT span. The docs'
//! walkthroughs themselves are run by testkit/docs-test.py.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::{
    Behaviour, Client, FakeUpstream, OtlpReceiver, ProcBuilder, SPAN_KIND_SERVER, eventually,
    refused_addr,
};

const WAIT: Duration = Duration::from_secs(10);

fn telemetry_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/TELEMETRY.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A daemon exporting to `rx` at once: spans within 100 ms, metrics every 200 ms.
fn exporting(name: &str, rx: &OtlpReceiver) -> ProcBuilder {
    ProcBuilder::new(name)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
}

/// The rows of the metrics table as (daemon, name, instrument, unit): an
/// instrument as OTLP carries it (`histogram`, `sum` for a counter,
/// `gauge`), and "both" as one row per daemon.
fn documented_metrics(doc: &str) -> BTreeSet<(String, String, String, String)> {
    let table = doc
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/TELEMETRY.md has a ## Metrics section");
    let mut rows = BTreeSet::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let (name_unit, instrument, from) = (cells[0], cells[1], cells[3]);
        let name = name_unit.split('`').nth(1).unwrap().to_owned();
        let unit = name_unit
            .split_once('(')
            .map_or("", |(_, u)| u.trim_end_matches(')'))
            .to_owned();
        let kind = match instrument {
            "histogram" => "histogram",
            "counter" => "sum",
            "gauge" => "gauge",
            other => panic!("docs/TELEMETRY.md: instrument {other:?} in {line}"),
        };
        let daemons: &[&str] = if from.starts_with("both") {
            &["service-a", "service-b"]
        } else {
            &["service-b"]
        };
        for daemon in daemons {
            rows.insert((
                (*daemon).to_owned(),
                name.clone(),
                kind.to_owned(),
                unit.clone(),
            ));
        }
    }
    rows
}

#[tokio::test]
async fn the_metrics_table_names_every_metric_the_daemons_export_and_no_other() {
    let documented = documented_metrics(&telemetry_doc());
    assert!(documented.len() >= 4, "{documented:#?}");
    let rx = OtlpReceiver::start().await;
    let a = exporting("service-a", &rx).spawn().await;
    let b = exporting("service-b", &rx)
        .env("SERVICE_A_URL", a.url(""))
        .spawn()
        .await;
    let b_alone = exporting("service-b", &rx)
        .env("SERVICE_A_URL", format!("http://{}", refused_addr()))
        .spawn()
        .await;
    let client = Client::new();
    // Every path that records: a good call, a degraded one.
    client.call_echo_ok(&b.url(""), 1).await;
    client
        .call_echo_degraded(&b_alone.url(""), 1, "connection_refused")
        .await;
    let exported = || {
        rx.points()
            .iter()
            .map(|p| {
                (
                    p.service(),
                    p.name.clone(),
                    p.kind.to_owned(),
                    p.unit.clone(),
                )
            })
            .collect::<BTreeSet<_>>()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !documented.is_subset(&exported()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = documented.difference(&exported()).cloned().collect();
    assert!(
        missing.is_empty(),
        "in docs/TELEMETRY.md's metrics table, but not exported in {WAIT:?}: {missing:#?}\nexported: {:#?}",
        exported()
    );
    let undocumented: Vec<_> = exported().difference(&documented).cloned().collect();
    assert!(
        undocumented.is_empty(),
        "exported, but not in docs/TELEMETRY.md's metrics table: {undocumented:#?}"
    );
}

#[tokio::test]
async fn the_refusals_that_make_no_call_are_a_server_span_alone() {
    let rx = OtlpReceiver::start().await;
    let client = Client::new();
    let hang = FakeUpstream::start(Behaviour::Hang).await;
    let b = exporting("service-b", &rx)
        .env("SERVICE_A_URL", hang.url())
        .env("SERVICE_B_MAX_IN_FLIGHT", "1")
        .env("SERVICE_B_UPSTREAM_TIMEOUT", "4s")
        .spawn()
        .await;
    // One call held at the hung service-a fills the one slot.
    let held = tokio::spawn({
        let (client, url) = (client.clone(), b.url("/call-echo?msg=held"));
        async move { client.get(&url).await }
    });
    eventually("the held call at service-a", WAIT, || async {
        (!hang.requests().is_empty()).then_some(())
    })
    .await;
    let overloaded = client.get(&b.url("/call-echo?msg=x")).await;
    assert_eq!(
        overloaded.json["error"], "overloaded",
        "{}",
        overloaded.text
    );
    let b_refused = exporting("service-b", &rx)
        .env("SERVICE_A_URL", format!("http://{}", refused_addr()))
        .env("SERVICE_B_BREAKER_FAILURES", "1")
        .spawn()
        .await;
    client
        .call_echo_degraded(&b_refused.url(""), 1, "connection_refused")
        .await;
    let open = client.get(&b_refused.url("/call-echo?msg=x")).await;
    assert_eq!(open.json["error"], "circuit_open", "{}", open.text);
    drop(held);

    for (reply, kind) in [(overloaded, "overloaded"), (open, "circuit_open")] {
        let trace_id = reply.json["trace_id"].as_str().unwrap().to_owned();
        let server = eventually(&format!("the {kind} SERVER span"), WAIT, || {
            let span = rx.spans().into_iter().find(|s| s.trace_id == trace_id);
            async move { span }
        })
        .await;
        assert_eq!(server.kind, SPAN_KIND_SERVER, "{server:#?}");
        assert_eq!(server.attr("error.type").as_deref(), Some(kind));
        // Spans of one request are exported together (100 ms batches):
        // another batch's time more, and still the SERVER span alone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spans: Vec<_> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        assert_eq!(spans.len(), 1, "{kind}: {spans:#?}");
    }
}
