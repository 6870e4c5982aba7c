//! A real metrics backend for tests: Prometheus (with its remote-write
//! receiver) fed by vmagent, which takes the daemons' OTLP metrics. Debian's
//! Prometheus has no OTLP receiver, so vmagent converts (with Prometheus
//! naming) and remote-writes, one queue so samples arrive in order.
//!
//! The binaries come from `LAB_TOOLS` (a directory with `prometheus` and
//! `vmagent`), which `test.sh` fills with `.ci/fetch-trixie-tools`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{eventually, unused_addr};

/// Directory of the external tools, from `LAB_TOOLS`.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("LAB_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        panic!("LAB_TOOLS is not set: run ./test.sh, or LAB_TOOLS=$(.ci/fetch-trixie-tools) cargo test ... -- --ignored")
    });
    for tool in ["prometheus", "vmagent"] {
        assert!(dir.join(tool).exists(), "{} has no {tool}", dir.display());
    }
    dir
}

/// One series of a PromQL answer: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Labels, `__name__` included when the query keeps it.
    pub labels: serde_json::Map<String, Value>,
    /// The value (NaN when Prometheus says so).
    pub value: f64,
}

impl Sample {
    /// A label's value, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// Prometheus and vmagent, running until dropped.
#[derive(Debug)]
pub struct MetricsBackend {
    /// Prometheus's address (web UI and API).
    pub prometheus: SocketAddr,
    /// vmagent's address (OTLP in).
    pub vmagent: SocketAddr,
    _prometheus: Child,
    _vmagent: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl MetricsBackend {
    /// Starts both, Prometheus with `rule_files` loaded (evaluated every
    /// second), and waits until both are ready.
    pub async fn start(rule_files: &[&Path]) -> Self {
        let tools = tools_dir();
        let dir = tempfile::tempdir().unwrap();
        let prometheus = unused_addr();
        let vmagent = unused_addr();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}",
                if rules.is_empty() {
                    "  []\n".to_owned()
                } else {
                    rules.concat()
                }
            ),
        )
        .unwrap();
        let prometheus_child = spawn(
            &tools.join("prometheus"),
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address={prometheus}"),
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
        );
        let vmagent_child = spawn(
            &tools.join("vmagent"),
            &[
                &format!("-httpListenAddr={vmagent}"),
                &format!("-remoteWrite.url=http://{prometheus}/api/v1/write"),
                "-remoteWrite.queues=1",
                // Prometheus format from the first write (no VictoriaMetrics probe).
                "-remoteWrite.forcePromProto",
                "-remoteWrite.flushInterval=200ms",
                &format!(
                    "-remoteWrite.tmpDataPath={}",
                    dir.path().join("vmagent").display()
                ),
                "-opentelemetry.usePrometheusNaming",
                "-loggerLevel=WARN",
            ],
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let backend = Self {
            prometheus,
            vmagent,
            _prometheus: prometheus_child,
            _vmagent: vmagent_child,
            _dir: dir,
            http,
        };
        for url in [
            format!("http://{prometheus}/-/ready"),
            format!("http://{vmagent}/health"),
        ] {
            let http = backend.http.clone();
            eventually(
                &format!("{url} to answer 200"),
                Duration::from_secs(30),
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let ok = http
                            .get(&url)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        ok.then_some(())
                    }
                },
            )
            .await;
        }
        backend
    }

    /// Where the daemons send metrics: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
    pub fn otlp_metrics_endpoint(&self) -> String {
        format!("http://{}/opentelemetry/v1/metrics", self.vmagent)
    }

    /// Runs an instant query; panics on an error answer (a bad expression).
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let url = format!("http://{}/api/v1/query", self.prometheus);
        let answer: Value = self
            .http
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let data = &answer["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| Sample {
                    labels: r["metric"].as_object().cloned().unwrap_or_default(),
                    value: r["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: serde_json::Map::new(),
                value: data["result"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            }],
            other => panic!("{promql}: unexpected result type {other:?}"),
        }
    }

    /// Polls `promql` until `accept` likes its answer (up to 30 s).
    pub async fn wait_for(&self, promql: &str, accept: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let samples = self.query(promql).await;
            if accept(&samples) {
                return samples;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{promql} never gave the expected answer; last: {samples:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The API's answer for a path such as `/api/v1/rules`.
    pub async fn api(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.prometheus))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn spawn(bin: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

impl MetricsBackend {
    /// Waits (up to 30 s) until every alert in `names` is pending or firing;
    /// returns each with its state.
    pub async fn wait_for_alerts(&self, names: &[&str]) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.api("/api/v1/alerts").await;
            let active: Vec<(String, String)> = answer["data"]["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                        a["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            if names.iter().all(|n| active.iter().any(|(a, _)| a == n)) {
                return active;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "alerts {names:?} not all active: {active:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
