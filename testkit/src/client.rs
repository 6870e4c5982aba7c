//! An HTTP client for tests: status, JSON body and latency of each answer.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body, parsed as JSON (`Value::Null` if it is not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
    /// The `content-type` header.
    pub content_type: String,
    /// All headers, lower-case names.
    pub headers: reqwest::header::HeaderMap,
    /// Time from sending the request to the end of the body.
    pub latency: Duration,
}

/// A client that ignores any proxy settings of the machine.
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A new client with its own connection pool.
    pub fn new() -> Self {
        Self {
            inner: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `GET url`, panicking on a transport error.
    pub async fn get(&self, url: &str) -> Reply {
        self.try_get(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// `GET url`.
    pub async fn try_get(&self, url: &str) -> Result<Reply, reqwest::Error> {
        self.send(self.inner.get(url)).await
    }

    /// Any method.
    pub async fn request(&self, method: reqwest::Method, url: &str) -> Reply {
        self.send(self.inner.request(method, url))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// `n` calls to service-b's `/call-echo` at `base` (`http://host:port`),
    /// each asserted to be the 200 echo of its own `msg`.
    pub async fn call_echo_ok(&self, base: &str, n: usize) {
        for i in 0..n {
            let r = self.get(&format!("{base}/call-echo?msg={i}")).await;
            let expected =
                serde_json::json!({"service_b": "ok", "service_a": {"echo": i.to_string()}});
            assert_eq!((r.status, &r.json), (200, &expected), "{}", r.text);
        }
    }

    /// `n` calls to service-b's `/call-echo` at `base`, one after the other,
    /// each asserted to be a 503 of the contract's kind `kind`.
    pub async fn call_echo_degraded(&self, base: &str, n: usize, kind: &str) {
        for _ in 0..n {
            let r = self.get(&format!("{base}/call-echo?msg=x")).await;
            assert_eq!(
                (r.status, r.json["error"].as_str()),
                (503, Some(kind)),
                "{}",
                r.text
            );
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let started = Instant::now();
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = res.text().await?;
        let latency = started.elapsed();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            json,
            text,
            content_type,
            headers,
            latency,
        })
    }
}

/// `GET path_and_query` against a service in this process, through salvo's
/// test client: the handler-level view, with the same [`Reply`].
pub async fn get_in_process(service: &salvo::Service, path_and_query: &str) -> Reply {
    request_in_process(service, salvo::http::Method::GET, path_and_query).await
}

/// Any method against a service in this process.
pub async fn request_in_process(
    service: &salvo::Service,
    method: salvo::http::Method,
    path_and_query: &str,
) -> Reply {
    use salvo::test::{RequestBuilder, ResponseExt};
    let started = Instant::now();
    let url = format!("http://127.0.0.1{path_and_query}");
    let mut res = RequestBuilder::new(url, method).send(service).await;
    let status = res.status_code.map_or(200, |s| s.as_u16());
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in res.headers() {
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = res.take_string().await.unwrap_or_default();
    Reply {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        content_type,
        headers,
        latency: started.elapsed(),
    }
}
