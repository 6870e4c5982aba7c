//! Jaeger v2 in tests: [`Jaeger`], a client of the HTTP API its UI calls
//! (`/api/services`, `/api/traces`, `/api/metrics/...`), and helpers that
//! read its answers as the UI shows them.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Milliseconds since the Unix epoch (Jaeger's `endTs`; its searches take
/// microseconds: `now_ms() * 1000`).
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A client of a Jaeger's query API.
#[derive(Debug, Clone)]
pub struct Jaeger {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    http: reqwest::Client,
}

impl Jaeger {
    /// The Jaeger at `base` (`http://host:port`).
    pub fn at(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// GETs `path` with `query`; panics unless the answer is a 2xx in JSON.
    pub async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Value {
        let url = format!("{}{path}", self.base);
        let response = self.http.get(&url).query(query).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{url} {query:?}: {status} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
    }

    /// The services Jaeger lists (the Search tab's first menu); empty while
    /// it does not answer.
    pub async fn services(&self) -> BTreeSet<String> {
        let Ok(response) = self
            .http
            .get(format!("{}/api/services", self.base))
            .send()
            .await
        else {
            return BTreeSet::new();
        };
        let answer: Value = response.json().await.unwrap_or_default();
        answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }

    /// Trace `trace_id` as one trace of Jaeger's answer, or `None` while it
    /// has none (the API answers 404 until the spans are in) or cannot be
    /// reached.
    pub async fn trace(&self, trace_id: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/api/traces/{trace_id}", self.base))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let answer: Value = response.json().await.ok()?;
        let traces = answer["data"].as_array()?;
        (traces.len() == 1).then(|| traces[0].clone())
    }

    /// Whether Jaeger has trace `trace_id`.
    pub async fn has(&self, trace_id: &str) -> bool {
        self.trace(trace_id).await.is_some()
    }

    /// The Search tab: the traces of `service` over the last `minutes`
    /// (at most `limit`), with `extra` criteria (`operation`, `tags`...).
    pub async fn search(
        &self,
        service: &str,
        minutes: u128,
        limit: usize,
        extra: &[(&str, String)],
    ) -> Vec<Value> {
        let mut query = vec![
            ("service", service.to_owned()),
            ("start", ((now_ms() - minutes * 60_000) * 1000).to_string()),
            ("end", (now_ms() * 1000).to_string()),
            ("limit", limit.to_string()),
        ];
        query.extend(extra.iter().cloned());
        let answer = self.get_json("/api/traces", &query).await;
        answer["data"].as_array().cloned().unwrap_or_default()
    }

    /// The Monitor tab's figure `what` (`calls`, `latencies`, `errors`) for
    /// `service`'s SERVER spans over the last 15 minutes, as the UI asks for
    /// it (`extra`: e.g. `quantile`).
    pub async fn monitor(&self, what: &str, service: &str, extra: &[(&str, &str)]) -> Value {
        let mut query = vec![
            ("service", service.to_owned()),
            ("spanKind", "server".to_owned()),
            ("endTs", now_ms().to_string()),
            ("lookback", "900000".to_owned()),
            ("step", "15000".to_owned()),
            ("ratePer", "600000".to_owned()),
        ];
        query.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self.get_json(&format!("/api/metrics/{what}"), &query).await
    }
}

/// A span's tag, as Jaeger's API shows it.
pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The service that sent `span` of `trace` (its process's `serviceName`).
pub fn service_of<'a>(trace: &'a Value, span: &Value) -> &'a str {
    let process = span["processID"].as_str().unwrap_or("");
    trace["processes"][process]["serviceName"]
        .as_str()
        .unwrap_or("")
}

/// Every `doubleValue` of a Jaeger metrics answer (the Monitor tab's figures).
pub fn figures(answer: &Value) -> Vec<f64> {
    answer["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["metricPoints"].as_array().into_iter().flatten())
        .filter_map(|p| p["gaugeValue"]["doubleValue"].as_f64())
        .collect()
}
