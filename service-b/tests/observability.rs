//! The `observability/` stack's files, checked statically: the compose file
//! (images pinned to the releases the tests build, ports on loopback only),
//! the Prometheus configuration and rules by promtool 3 (unit tests for every
//! alert), and Grafana's provisioning (every panel's data source is
//! provisioned, with a minimum interval that fits the daemons' export
//! interval). The stack itself runs in `stack.rs`.
//!
//! Needs promtool from `observability/build/build.sh` in `LAB_TOOLS`, and
//! PyYAML, so it is `#[ignore]`d for a bare `cargo test`; `./test.sh` runs it.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use testkit::{duration_secs, read_yaml, stack_dir, tools_dir};

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

/// The tag of `image` in compose.yaml.
fn image_tag<'a>(services: &'a serde_json::Map<String, Value>, image: &str) -> &'a str {
    services
        .values()
        .filter_map(|s| s["image"].as_str())
        .find_map(|i| i.strip_prefix(image)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("compose.yaml runs no {image}"))
}

/// The version `go.mod` in `observability/build/DIR` requires of `module`.
fn go_mod_version(dir: &str, module: &str) -> String {
    let go_mod =
        std::fs::read_to_string(stack_dir().join("build").join(dir).join("go.mod")).unwrap();
    go_mod
        .lines()
        .find_map(|l| {
            let mut words = l.trim().trim_start_matches("require ").split_whitespace();
            (words.next() == Some(module)).then(|| words.next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("{dir}/go.mod does not require {module}"))
}

#[test]
#[ignore = "needs PyYAML; ./test.sh runs it"]
fn compose_pins_the_releases_the_tests_build_and_publishes_on_loopback_only() {
    let config = read_yaml(&stack_dir().join("compose.yaml"));
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
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().unwrap();
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    stack_dir().join(source).exists(),
                    "{name} mounts {source}, which is not in observability/"
                );
                assert!(volume.ends_with(":ro"), "{name} mounts {volume} writable");
            }
        }
    }
    // What the tests run is what the images are (build.sh checks it too).
    let collector = image_tag(services, "otel/opentelemetry-collector-contrib");
    assert_eq!(
        go_mod_version("otelcol", "go.opentelemetry.io/collector/otelcol"),
        format!("v{collector}")
    );
    let jaeger = image_tag(services, "jaegertracing/jaeger");
    let minor: u32 = jaeger.split('.').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        go_mod_version("jaeger", "github.com/jaegertracing/jaeger"),
        format!("v1.{}.{}", 63 + minor, jaeger.split('.').nth(2).unwrap()),
        "jaeger {jaeger} is module v1.(63+minor)"
    );
    let prometheus = image_tag(services, "prom/prometheus");
    let parts: Vec<&str> = prometheus.trim_start_matches('v').split('.').collect();
    assert_eq!(
        go_mod_version("prometheus", "github.com/prometheus/prometheus"),
        format!("v0.3{:02}.{}", parts[1].parse::<u32>().unwrap(), parts[2])
    );
    // The daemons' default endpoint is where the stack listens.
    let published: Vec<&str> = services["otel-collector"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(published.contains(&"127.0.0.1:4318:4318"), "{published:?}");
    assert!(service_kit::telemetry::DEFAULT_ENDPOINT.ends_with(":4318"));
}

#[test]
#[ignore = "needs promtool in LAB_TOOLS; ./test.sh runs it"]
fn prometheus_config_and_rules_pass_promtool_and_every_alert_has_unit_tests() {
    let prometheus = stack_dir().join("prometheus");
    run(
        "promtool",
        &["check", "config", "prometheus.yml"],
        &prometheus,
    );
    run("promtool", &["check", "rules", "rules.yml"], &prometheus);
    run(
        "promtool",
        &["test", "rules", "rules.test.yml"],
        &prometheus,
    );
    let config = read_yaml(&prometheus.join("prometheus.yml"));
    let promoted = &config["otlp"]["promote_resource_attributes"];
    for attribute in ["service.name", "service.instance.id"] {
        assert!(
            promoted.as_array().unwrap().iter().any(|a| a == attribute),
            "{attribute} not promoted: {promoted}"
        );
    }

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

/// The daemons' metric export interval by default (`OTEL_METRIC_EXPORT_INTERVAL`).
const EXPORT_INTERVAL_SECS: u64 = 60;

#[test]
#[ignore = "needs PyYAML; ./test.sh runs it"]
fn every_panel_uses_a_provisioned_data_source_whose_interval_fits_the_exports() {
    let provisioned =
        read_yaml(&stack_dir().join("grafana/provisioning/datasources/datasources.yaml"));
    let sources = provisioned["datasources"].as_array().unwrap();
    let path = stack_dir().join("grafana/dashboards/two-service-lab.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let uses = std::iter::once(&panel["datasource"]).chain(
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| &t["datasource"]),
        );
        for used in uses {
            let source = sources
                .iter()
                .find(|s| s["uid"] == used["uid"] && s["type"] == used["type"])
                .unwrap_or_else(|| panic!("{title}: data source {used} is not provisioned"));
            if source["type"] == "prometheus" {
                // $__rate_interval is 4 × the data source's scrape interval
                // (timeInterval, 15 s when unset): at least two exports.
                let min = source["jsonData"]["timeInterval"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title}: {source} has no jsonData.timeInterval"));
                assert!(
                    duration_secs(min) >= EXPORT_INTERVAL_SECS,
                    "{title}: timeInterval {min} is below the {EXPORT_INTERVAL_SECS} s export interval"
                );
            }
        }
        if let Some(interval) = panel["interval"].as_str() {
            assert!(
                duration_secs(interval) >= EXPORT_INTERVAL_SECS,
                "{title}: interval {interval}"
            );
        }
    }
}
