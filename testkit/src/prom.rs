//! Prometheus 3 in tests: [`Prometheus`], a client of its HTTP API (PromQL,
//! rules, alerts), and [`MetricsBackend`], a Prometheus of the test's own
//! running the shipped `observability/prometheus/prometheus.yml` with its
//! OTLP receiver on, which the daemons push their metrics to.
//!
//! The binaries come from `LAB_TOOLS` (a directory with `prometheus` and
//! `promtool`), which `test.sh` fills with `observability/build/build.sh`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{eventually, eventually_every, unused_addr};

/// How often a query is repeated while waiting for its answer to change.
const POLL: Duration = Duration::from_millis(250);

/// Directory of the built stack programs, from `LAB_TOOLS`.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("LAB_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        panic!("LAB_TOOLS is not set: run ./test.sh, or LAB_TOOLS=$(observability/build/build.sh) cargo test ... -- --ignored")
    });
    for tool in ["prometheus", "promtool"] {
        assert!(dir.join(tool).exists(), "{} has no {tool}", dir.display());
    }
    dir
}

/// The repository's `observability/` folder.
pub fn stack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability")
}

/// A YAML file as JSON, read by the system's Python (PyYAML, Debian's
/// `python3-yaml`): the stack's files are YAML, and the workspace has no
/// YAML crate.
pub fn read_yaml(path: &Path) -> Value {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("/usr/bin/python3 (python3-yaml): {e}"));
    assert!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A duration as Prometheus and Grafana write it (`15s`, `1m`, `30m`, `1h`)
/// in seconds.
pub fn duration_secs(duration: &str) -> u64 {
    let (number, unit) = duration.split_at(duration.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {duration}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("not a duration: {duration}"),
    }
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

/// A client of a Prometheus's HTTP API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// The Prometheus at `base` (`http://host:port`).
    pub fn at(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Runs an instant query; panics on an error answer (a bad expression).
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let data = &answer["data"];
        let number = |v: &Value| v.as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| Sample {
                    labels: r["metric"].as_object().cloned().unwrap_or_default(),
                    value: number(&r["value"][1]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: serde_json::Map::new(),
                value: number(&data["result"][1]),
            }],
            other => panic!("{promql}: unexpected result type {other:?}"),
        }
    }

    /// Polls `promql` until `accept` likes its answer, for up to `timeout`.
    pub async fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let what = format!("{promql} to give the expected answer");
        eventually_every(&what, timeout, POLL, || async {
            let samples = self.query(promql).await;
            if accept(&samples) {
                Ok(samples)
            } else {
                Err(format!("{samples:?}"))
            }
        })
        .await
    }

    /// The API's answer for a path such as `/api/v1/rules`.
    pub async fn api(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to `timeout`) until every alert in `names` is pending or
    /// firing; returns each active alert with its state.
    pub async fn wait_for_alerts(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Vec<(String, String)> {
        let what = format!("alerts {names:?} all pending or firing");
        eventually_every(&what, timeout, POLL, || async {
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
                Ok(active)
            } else {
                Err(format!("active: {active:?}"))
            }
        })
        .await
    }
}

/// Prometheus 3 on the shipped configuration, its OTLP receiver on, running
/// until dropped.
#[derive(Debug)]
pub struct MetricsBackend {
    /// Its HTTP API (and OTLP receiver).
    pub prometheus: Prometheus,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for MetricsBackend {
    type Target = Prometheus;
    fn deref(&self) -> &Prometheus {
        &self.prometheus
    }
}

impl MetricsBackend {
    /// Starts Prometheus with the shipped `prometheus.yml` and `rules.yml`
    /// (copied: it resolves rule files next to its configuration) and the
    /// flags compose.yaml gives it, and waits until it is ready.
    pub async fn start() -> Self {
        let tools = tools_dir();
        let shipped = stack_dir().join("prometheus");
        let dir = tempfile::tempdir().unwrap();
        for file in ["prometheus.yml", "rules.yml"] {
            std::fs::copy(shipped.join(file), dir.path().join(file)).unwrap();
        }
        let addr: SocketAddr = unused_addr();
        let child = Command::new(tools.join("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(["--web.enable-otlp-receiver", "--log.level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", tools.join("prometheus").display()));
        let backend = Self {
            prometheus: Prometheus::at(format!("http://{addr}")),
            _child: child,
            _dir: dir,
        };
        backend.prometheus.wait_ready(Duration::from_secs(30)).await;
        backend
    }

    /// Where the daemons send metrics: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
    pub fn otlp_metrics_endpoint(&self) -> String {
        format!("{}/api/v1/otlp/v1/metrics", self.prometheus.base)
    }
}

impl Prometheus {
    /// Waits until `/-/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = format!("{}/-/ready", self.base);
        eventually(&format!("{url} to answer 200"), timeout, || {
            let (http, url) = (self.http.clone(), url.clone());
            async move {
                let ok = http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ok.then_some(())
            }
        })
        .await;
    }
}
