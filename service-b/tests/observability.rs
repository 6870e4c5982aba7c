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

use std::collections::BTreeSet;
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

// --- Grafana, against the source of the release compose.yaml pins ---------
//
// Grafana's image cannot be built or pulled here, so the files it reads are
// checked against its source at the pinned release: the dashboard schema and
// the Prometheus data source's options and exemplar links from the release's
// own packages (@grafana/schema and @grafana/prometheus are published to npm
// with every release, at its version); what lives in Grafana's Go server,
// which no registry here serves, is written below as read in its source:
// - pkg/services/provisioning/datasources/types.go: the keys of a data source
//   in a version 1 file (upsertDataSourceFromConfigV1);
// - pkg/services/provisioning/dashboards/types.go: the keys of a dashboard
//   provider (configs), its file options (path, foldersFromFilesStructure);
// - pkg/services/provisioning/values/values.go: every string value has its
//   environment variables expanded, `$$` standing for a literal `$`;
// - pkg/promlib/models/query.go: `$__rate_interval` is
//   max(interval + scrape, 4 × scrape), scrape the data source's
//   timeInterval (15s when unset), interval the panel's, never below scrape.

/// The Grafana release the checks below read (compose.yaml must pin it).
const GRAFANA: &str = "13.2.3";

/// The keys of a data source in a version 1 provisioning file.
const DATASOURCE_KEYS: [&str; 17] = [
    "orgId",
    "version",
    "name",
    "type",
    "access",
    "url",
    "user",
    "database",
    "basicAuth",
    "basicAuthUser",
    "withCredentials",
    "isDefault",
    "correlations",
    "jsonData",
    "secureJsonData",
    "editable",
    "uid",
];

/// The keys of a dashboard provider, and of a file provider's options.
const PROVIDER_KEYS: [&str; 10] = [
    "name",
    "type",
    "orgId",
    "folder",
    "folderUid",
    "editable",
    "options",
    "disableDeletion",
    "updateIntervalSeconds",
    "allowUiUpdates",
];
const FILE_OPTIONS: [&str; 2] = ["path", "foldersFromFilesStructure"];

/// A string as Grafana's provisioning reads it: `$$` is a `$`, `$NAME` and
/// `${NAME}` are environment variables (none is set for Grafana here, so
/// they read as empty).
fn grafana_interpolate(value: &str) -> String {
    value
        .split("$$")
        .map(|part| {
            let mut out = String::new();
            let mut rest = part;
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                let after = &rest[at + 1..];
                rest = if let Some(braced) = after.strip_prefix('{') {
                    braced.find('}').map_or("", |end| &braced[end + 1..])
                } else {
                    after.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                };
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("$")
}

/// The release's npm package `name` (`@grafana/...`), unpacked in `dir`;
/// returns its folder.
fn npm_package(name: &str, dir: &Path) -> std::path::PathBuf {
    let spec = format!("{name}@{GRAFANA}");
    let out = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(dir)
        .arg(&spec)
        .output()
        .unwrap_or_else(|e| panic!("npm (Debian's npm): {e}"));
    assert!(
        out.status.success(),
        "npm pack {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = dir.join(String::from_utf8(out.stdout).unwrap().trim());
    let unpacked = dir.join(name.replace('/', "_"));
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    unpacked.join("package")
}

/// The field names of `interface NAME` (or `type NAME = {`) in a TypeScript
/// declaration file, as `tsc` writes them: one per line, four spaces in.
fn ts_fields(file: &Path, name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let start = text
        .lines()
        .position(|l| {
            l.starts_with(&format!("export interface {name} "))
                || l.starts_with(&format!("export type {name} = {{"))
        })
        .unwrap_or_else(|| panic!("{}: no {name}", file.display()));
    let fields: BTreeSet<String> = text
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('}'))
        .filter_map(|l| {
            let field = l.strip_prefix("    ")?;
            let end = field.find(['?', ':'])?;
            let key = &field[..end];
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| key.to_owned())
        })
        .filter(|k| !k.is_empty())
        .collect();
    assert!(
        !fields.is_empty(),
        "{}: {name} has no fields",
        file.display()
    );
    fields
}

/// Asserts that every key of `object` is one of `known`.
fn keys_within(what: &str, object: &Value, known: &BTreeSet<String>) {
    for key in object.as_object().unwrap().keys() {
        assert!(
            known.contains(key),
            "{what}: {key} is not a key Grafana {GRAFANA} knows ({known:?})"
        );
    }
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

#[test]
#[ignore = "needs PyYAML; ./test.sh runs it"]
fn grafana_is_pinned_to_the_checked_release_and_mounts_only_what_the_project_provides() {
    let config = read_yaml(&stack_dir().join("compose.yaml"));
    let grafana = &config["services"]["grafana"];
    assert_eq!(grafana["image"], format!("grafana/grafana:{GRAFANA}"));
    let mut targets = Vec::new();
    for volume in grafana["volumes"].as_array().unwrap() {
        let volume = volume.as_str().unwrap();
        let mut parts = volume.split(':');
        let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
        if source.starts_with('.') {
            assert!(
                stack_dir().join(source).is_dir(),
                "{volume}: not a folder of observability/"
            );
            // Never the image's whole provisioning folder: its own
            // sub-folders (alerting, plugins, ...) would vanish.
            assert_ne!(
                target.trim_end_matches('/'),
                "/etc/grafana/provisioning",
                "{volume}"
            );
            if let Some(sub) = target.strip_prefix("/etc/grafana/provisioning/") {
                assert_eq!(
                    Path::new(source).file_name().unwrap().to_str().unwrap(),
                    sub,
                    "{volume}"
                );
            }
        } else {
            // A named volume: what a user saves in Grafana survives `down`.
            assert_eq!(target, "/var/lib/grafana", "{volume}");
            assert!(
                config["volumes"].get(source).is_some(),
                "{source} is not declared"
            );
        }
        targets.push((source.to_owned(), target.to_owned()));
    }
    for folder in std::fs::read_dir(stack_dir().join("grafana/provisioning")).unwrap() {
        let name = folder.unwrap().file_name().into_string().unwrap();
        let target = format!("/etc/grafana/provisioning/{name}");
        assert!(
            targets.iter().any(|(_, t)| *t == target),
            "{name} is provided but not mounted"
        );
    }
    assert!(
        targets.iter().any(|(_, t)| t == "/var/lib/grafana"),
        "/var/lib/grafana is not kept"
    );
    // The home dashboard and the provider's path are where the dashboards
    // folder is mounted.
    let dashboards = &targets
        .iter()
        .find(|(s, _)| s.ends_with("grafana/dashboards"))
        .unwrap()
        .1;
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let file = home.strip_prefix(&format!("{dashboards}/")).unwrap();
    assert!(
        stack_dir().join("grafana/dashboards").join(file).is_file(),
        "{home}"
    );
    let providers = read_yaml(&stack_dir().join("grafana/provisioning/dashboards/dashboards.yaml"));
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        dashboards.as_str()
    );
    // The shipped dashboard is not saved over in the UI (the file stays the
    // source of truth; the README says how to edit and keep).
    assert_eq!(providers["providers"][0]["allowUiUpdates"], false);
    // Anonymous visitors are Viewers.
    assert_eq!(
        grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"],
        "Viewer"
    );
}

#[test]
#[ignore = "needs npm and PyYAML; ./test.sh runs it"]
fn grafana_provisioning_and_dashboard_match_the_pinned_release_source() {
    let dir = tempfile::tempdir().unwrap();
    let schema = npm_package("@grafana/schema", dir.path());
    let prometheus = npm_package("@grafana/prometheus", dir.path());
    let dashboard_types = schema.join("dist/types/raw/dashboard/x/types.gen.d.ts");
    let common_types = schema.join("dist/types/common/common.gen.d.ts");
    let prom_types = prometheus.join("dist/types/types.d.ts");
    let query_types = prometheus.join("dist/types/dataquery.d.ts");

    // Provisioning: every key one that Grafana reads.
    let provisioned =
        read_yaml(&stack_dir().join("grafana/provisioning/datasources/datasources.yaml"));
    assert_eq!(provisioned["apiVersion"], 1);
    let sources = provisioned["datasources"].as_array().unwrap();
    let mut json_data = ts_fields(&prom_types, "PromOptions");
    json_data.extend(ts_fields(&common_types, "DataSourceJsonData"));
    for source in sources {
        keys_within("a data source", source, &set(&DATASOURCE_KEYS));
        if source["type"] == "prometheus" {
            keys_within("Prometheus's jsonData", &source["jsonData"], &json_data);
        }
    }
    let providers = read_yaml(&stack_dir().join("grafana/provisioning/dashboards/dashboards.yaml"));
    assert_eq!(providers["apiVersion"], 1);
    for provider in providers["providers"].as_array().unwrap() {
        keys_within("a dashboard provider", provider, &set(&PROVIDER_KEYS));
        keys_within(
            "a file provider's options",
            &provider["options"],
            &set(&FILE_OPTIONS),
        );
    }

    // The exemplar link: to Jaeger's UI, as an external link (a link to a data
    // source would open Explore, which an anonymous Viewer may not use).
    let prometheus_source = sources.iter().find(|s| s["type"] == "prometheus").unwrap();
    let destinations = prometheus_source["jsonData"]["exemplarTraceIdDestinations"]
        .as_array()
        .unwrap();
    let destination_keys = ts_fields(&prom_types, "ExemplarTraceIdDestination");
    for destination in destinations {
        keys_within("an exemplar destination", destination, &destination_keys);
        assert!(
            destination.get("datasourceUid").is_none(),
            "{destination}: opens Explore"
        );
        let url = grafana_interpolate(destination["url"].as_str().unwrap());
        assert_eq!(
            url, "http://localhost:16686/trace/${__value.raw}",
            "{destination}"
        );
    }
    // The release turns a destination with a url into an external link of
    // that url (result_transformer's getDataLinks).
    let transformer =
        std::fs::read_to_string(prometheus.join("dist/esm/result_transformer.mjs")).unwrap();
    let links = &transformer[transformer.find("function getDataLinks").unwrap()..];
    let url_branch = &links[links.find("if (options.url)").unwrap()..];
    assert!(
        url_branch.contains("url: options.url") && url_branch.contains("targetBlank: true"),
        "getDataLinks of @grafana/prometheus {GRAFANA} changed: {}",
        &url_branch[..url_branch.len().min(300)]
    );

    // The dashboard: every key one that the release's schema declares.
    let path = stack_dir().join("grafana/dashboards/two-service-lab.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    keys_within(
        "the dashboard",
        &dashboard,
        &ts_fields(&dashboard_types, "Dashboard"),
    );
    let latest: u64 =
        std::fs::read_to_string(schema.join("dist/esm/raw/dashboard/x/types.gen.mjs"))
            .unwrap()
            .split("schemaVersion: ")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap();
    let version = dashboard["schemaVersion"].as_u64().unwrap();
    assert!(
        (36..=latest).contains(&version),
        "schemaVersion {version}: Grafana {GRAFANA} writes {latest} and migrates older ones"
    );
    let link = ts_fields(&dashboard_types, "DashboardLink");
    for l in dashboard["links"].as_array().unwrap() {
        keys_within("a dashboard link", l, &link);
    }
    let panel = ts_fields(&dashboard_types, "Panel");
    let grid = ts_fields(&dashboard_types, "GridPos");
    let reference = ts_fields(&dashboard_types, "DataSourceRef");
    let field_config_source = ts_fields(&dashboard_types, "FieldConfigSource");
    let field_config = ts_fields(&dashboard_types, "FieldConfig");
    let mut target = ts_fields(&query_types, "Prometheus");
    target.extend(ts_fields(&common_types, "DataQuery"));
    let uids: BTreeSet<&str> = sources.iter().filter_map(|s| s["uid"].as_str()).collect();
    for p in dashboard["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        keys_within(title, p, &panel);
        keys_within(title, &p["gridPos"], &grid);
        keys_within(title, &p["datasource"], &reference);
        keys_within(title, &p["fieldConfig"], &field_config_source);
        keys_within(title, &p["fieldConfig"]["defaults"], &field_config);
        for t in p["targets"].as_array().unwrap() {
            keys_within(title, t, &target);
            keys_within(title, &t["datasource"], &reference);
            assert!(
                uids.contains(t["datasource"]["uid"].as_str().unwrap()),
                "{title}: {t}"
            );
        }
    }

    // $__rate_interval: with the data source's timeInterval, the dashboard's
    // windows hold at least two of the daemons' 60 s exports (Prometheus 3's
    // windows are left-open) at any zoom: 4 × scrape at the least.
    let scrape = duration_secs(
        prometheus_source["jsonData"]["timeInterval"]
            .as_str()
            .unwrap(),
    );
    let rate_interval = |interval: u64| (interval.max(scrape) + scrape).max(4 * scrape);
    assert!(rate_interval(1) > 2 * EXPORT_INTERVAL_SECS);
    assert_eq!(rate_interval(1), 240, "the README says 4 m");
}
