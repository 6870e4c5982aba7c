//! The call to service-a: one pooled client, one deadline for the whole
//! exchange, at most one resend, and each attempt's CLIENT span and the
//! call's duration metric. What counts as a good answer, and how a failure
//! is named, is [`crate::classify`]'s; which connection an attempt used is
//! `reuse.rs`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_REQUEST_RESEND_COUNT, HTTP_RESPONSE_STATUS_CODE,
    SERVER_ADDRESS, SERVER_PORT, URL_FULL, URL_TEMPLATE,
};
use opentelemetry_semantic_conventions::metric::HTTP_CLIENT_REQUEST_DURATION;
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, HOST, HeaderValue};
use service_kit::durations::Durations;
use service_kit::telemetry::tracer;
use service_kit::trace_id::{TRACEPARENT, current_trace_id, traceparent};
use url::Url;

use crate::balancer;
use crate::classify::{
    ErrorKind, UpstreamError, classify, closed_before_answer, judge_body, judge_head, timed_out,
};
use crate::reuse::{MarkNewConnections, watching_connections};

/// service-a, as service-b calls it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Shared by every request: its pool keeps connections to service-a open.
    client: Client,
    /// `<base>/echo`, to which each call adds its `msg`.
    echo_url: Url,
    /// Deadline for the whole call: connect, headers and body.
    deadline: Duration,
    /// Largest body accepted from service-a; more is `invalid_response`.
    max_body: usize,
    /// `server.address` and `server.port` (and the method), on every call's
    /// span and metric.
    peer: [KeyValue; 3],
    /// `url.full` (with the user's `msg` redacted) and `url.template`, on
    /// every call's span.
    url: [KeyValue; 2],
    /// The `Host` header, made once: hyper's client would otherwise format
    /// it for every request.
    host_header: HeaderValue,
    /// `http.client.request.duration`, seconds, by service-a's status and
    /// the kind of failure (which give every attribute besides the peer's).
    duration: Arc<Durations<(Option<u16>, Option<ErrorKind>)>>,
}

impl Upstream {
    /// A client for service-a at `base` (`http://host:port[/prefix]`).
    /// `max_msg_bytes` sizes the body cap: an echo of the longest message,
    /// every byte JSON-escaped, still fits.
    pub fn new(base: &Url, deadline: Duration, max_msg_bytes: usize) -> Result<Self, String> {
        let client = Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(deadline)
            // Shorter than any sane server keep-alive timeout, so a pooled
            // connection is dropped here before service-a closes it.
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .user_agent(concat!("service-b/", env!("CARGO_PKG_VERSION")))
            .connector_layer(MarkNewConnections)
            // The one resend this client may make is decided here (see
            // `echo`); reqwest's own retry layer would only clone requests.
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let echo_url = echo_url(base);
        let peer = [
            KeyValue::new(HTTP_REQUEST_METHOD, "GET"),
            // Shared, not copied, by every call's span and sample.
            KeyValue::new(
                SERVER_ADDRESS,
                Arc::<str>::from(echo_url.host_str().unwrap_or_default()),
            ),
            KeyValue::new(
                SERVER_PORT,
                i64::from(echo_url.port_or_known_default().unwrap_or(80)),
            ),
        ];
        let duration = Arc::new(Durations::new(
            "service-b",
            HTTP_CLIENT_REQUEST_DURATION,
            "Duration of HTTP client requests.",
        ));
        let url = [
            KeyValue::new(
                URL_FULL,
                Arc::<str>::from(format!("{echo_url}?msg=REDACTED")),
            ),
            KeyValue::new(URL_TEMPLATE, "/echo"),
        ];
        // As hyper writes it: the host, and the port unless it is the
        // scheme's default (which `Url` already leaves out).
        let host = echo_url.host_str().unwrap_or_default();
        let host_header = match echo_url.port() {
            Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
            None => HeaderValue::try_from(host),
        }
        .map_err(|e| format!("cannot make a Host header of {host:?}: {e}"))?;
        Ok(Self {
            client,
            url,
            host_header,
            echo_url,
            deadline,
            max_body: (max_msg_bytes * 6 + 1024).max(64 * 1024),
            peer,
            duration,
        })
    }

    /// The URL calls go to, without the query.
    pub fn echo_url(&self) -> &Url {
        &self.echo_url
    }

    /// The deadline for one call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Calls `GET /echo?msg=...` and returns service-a's JSON body, checked.
    /// Each attempt is a CLIENT span (child of the current span, its context
    /// sent as `traceparent`); the call is one `http.client.request.duration`
    /// sample.
    pub async fn echo(&self, msg: &str) -> Result<Bytes, UpstreamError> {
        let mut url = self.echo_url.clone();
        // Form encoding, as service-a decodes it; never string concatenation.
        url.query_pairs_mut().append_pair("msg", msg);

        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.deadline;
        let result = match self.attempt(&url, 0, deadline).await {
            // service-a closed a kept-alive connection just as the request
            // went out on it (it was restarting, or its idle timer fired).
            // A GET can safely go again, once, on another connection. Never
            // after a fresh connection closed: service-a may have crashed on
            // this very request.
            Attempt::Resend(_) => {
                tracing::debug!(
                    trace_id = current_trace_id().as_deref().unwrap_or("-"),
                    "service-a closed a kept-alive connection before answering; sending again"
                );
                self.attempt(&url, 1, deadline).await.into_result()
            }
            done => done.into_result(),
        };
        let elapsed = started.elapsed().as_secs_f64();

        let status = status_of(&result);
        let kind = result.as_ref().err().map(|e| e.kind);
        self.duration.record(elapsed, (status, kind), || {
            let mut attributes = self.peer.to_vec();
            if let Some(status) = status {
                attributes.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
            }
            if let Some(kind) = kind {
                attributes.push(KeyValue::new(ERROR_TYPE, kind.as_str()));
            }
            attributes
        });
        result.map(|(_, body)| body)
    }

    /// One request to service-a, as its own CLIENT span; the second one
    /// carries `http.request.resend_count`.
    async fn attempt(
        &self,
        url: &Url,
        resend_count: i64,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        // A child of the request's SERVER span (the current context).
        let span = tracer().map(|tracer| {
            let mut attributes = Vec::with_capacity(9);
            attributes.extend(self.peer.iter().chain(&self.url).cloned());
            if resend_count > 0 {
                attributes.push(KeyValue::new(HTTP_REQUEST_RESEND_COUNT, resend_count));
            }
            opentelemetry::Context::map_current(|parent| {
                tracer
                    .span_builder("GET /echo")
                    .with_kind(SpanKind::Client)
                    .with_attributes(attributes)
                    .start_with_context(tracer, parent)
            })
        });
        let mut request = reqwest::Request::new(reqwest::Method::GET, url.clone());
        request.headers_mut().insert(HOST, self.host_header.clone());
        if let Some(parent) = span.as_ref().and_then(|s| traceparent(s.span_context())) {
            request.headers_mut().insert(TRACEPARENT, parent);
        }

        let fetch = watching_connections(|| self.fetch(request));
        let attempt = match tokio::time::timeout_at(deadline, fetch).await {
            Ok((Ok(answer), _)) => Attempt::Done(Ok(answer)),
            Ok((
                Err(Failed {
                    error,
                    closed_unanswered,
                }),
                new_connection,
            )) => {
                if closed_unanswered && !new_connection && resend_count == 0 {
                    Attempt::Resend(error)
                } else {
                    Attempt::Done(Err(error))
                }
            }
            Err(_) => Attempt::Done(Err(timed_out(self.deadline))),
        };

        if let Some(mut span) = span {
            if span.is_recording() {
                let (status, failure) = match attempt.as_result() {
                    Ok((status, _)) => (Some(*status), None),
                    Err(e) => (e.status, Some(e)),
                };
                if let Some(status) = status {
                    span.set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
                }
                if let Some(e) = failure {
                    span.set_attribute(KeyValue::new(ERROR_TYPE, e.kind.as_str()));
                    span.set_status(Status::error(e.detail.clone()));
                }
            }
            span.end();
        }
        attempt
    }

    async fn fetch(&self, request: reqwest::Request) -> Result<(u16, Bytes), Failed> {
        let mut response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                return Err(Failed {
                    error: self.classify(&e),
                    closed_unanswered: closed_before_answer(&e),
                });
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // A balancer's own answer says why no replica answered.
        let judged = match balancer::verdict(status, response.headers()) {
            Some(e) => Err(e),
            None => judge_head(status, content_type),
        };
        if let Err(e) = judged {
            // The body cannot be the answer; a small one is still read, so
            // the connection can serve the next call.
            drain(response).await;
            return Err(e.into());
        }
        if let Some(len) = response
            .content_length()
            .filter(|&len| len > self.max_body as u64)
        {
            return Err(UpstreamError::invalid(
                status,
                format!(
                    "service-a's body is {len} bytes; the limit is {}",
                    self.max_body
                ),
            )
            .into());
        }
        let mut body = BytesMut::with_capacity(response.content_length().unwrap_or(256) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > self.max_body {
                return Err(UpstreamError::invalid(
                    status,
                    format!("service-a's body is over the {}-byte limit", self.max_body),
                )
                .into());
            }
            body.extend_from_slice(&chunk);
        }
        judge_body(status, &body)?;
        Ok((status, body.freeze()))
    }

    fn classify(&self, e: &reqwest::Error) -> UpstreamError {
        classify(e, self.deadline, &self.echo_url)
    }
}

/// Error bodies up to this size are read (and dropped), so that the
/// connection goes back to the pool; a larger one closes it.
const DRAIN_MAX: usize = 16 * 1024;
/// ...and only if the body arrives this fast: a degraded answer never waits
/// long for a slow error body.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// Reads a small error body to its end, so hyper can reuse the connection.
async fn drain(mut response: reqwest::Response) {
    if response
        .content_length()
        .is_some_and(|len| len > DRAIN_MAX as u64)
    {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        let mut read = 0;
        while let Ok(Some(chunk)) = response.chunk().await {
            read += chunk.len();
            if read > DRAIN_MAX {
                return;
            }
        }
    })
    .await;
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    /// With an answer, good or not.
    Done(Result<(u16, Bytes), UpstreamError>),
    /// A kept-alive connection closed before any answer: may be sent again.
    Resend(UpstreamError),
}

impl Attempt {
    fn as_result(&self) -> Result<&(u16, Bytes), &UpstreamError> {
        match self {
            Self::Done(result) => result.as_ref(),
            Self::Resend(e) => Err(e),
        }
    }

    fn into_result(self) -> Result<(u16, Bytes), UpstreamError> {
        match self {
            Self::Done(result) => result,
            Self::Resend(e) => Err(e),
        }
    }
}

/// A failed exchange, and whether the connection closed before any answer.
#[derive(Debug)]
struct Failed {
    error: UpstreamError,
    closed_unanswered: bool,
}

impl From<UpstreamError> for Failed {
    fn from(error: UpstreamError) -> Self {
        Self {
            error,
            closed_unanswered: false,
        }
    }
}

/// service-a's status, if it sent one.
fn status_of<T>(result: &Result<(u16, T), UpstreamError>) -> Option<u16> {
    match result {
        Ok((status, _)) => Some(*status),
        Err(e) => e.status,
    }
}

/// `<base>/echo`, keeping any path prefix the base has.
fn echo_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push("echo");
    }
    url
}

/// Checks `--service-a-url`: an absolute `http://` URL with a host, no
/// credentials, no query.
pub fn parse_base_url(s: &str) -> Result<Url, String> {
    let url =
        Url::parse(s).map_err(|e| format!("{e}; expected a URL such as http://127.0.0.1:8080"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "scheme {:?} is not supported; use http:// (this build has no TLS)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not supported".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".to_owned());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_url_keeps_prefix_and_drops_query() {
        let u = |s: &str| echo_url(&Url::parse(s).unwrap()).to_string();
        assert_eq!(u("http://127.0.0.1:8080"), "http://127.0.0.1:8080/echo");
        assert_eq!(u("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/echo");
        assert_eq!(
            u("http://a.example/prefix/"),
            "http://a.example/prefix/echo"
        );
        assert_eq!(u("http://a.example/prefix"), "http://a.example/prefix/echo");
    }

    #[test]
    fn a_user_a_password_a_query_or_a_fragment_alone_is_refused() {
        let refused = |url| parse_base_url(url).unwrap_err();
        assert!(refused("http://user@host").contains("credentials"));
        assert!(refused("http://:pw@host").contains("credentials"));
        assert!(refused("http://host/?x").contains("query"));
        assert!(refused("http://host/#part").contains("fragment"));
    }

    #[test]
    fn base_url_checks() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("http://service-a.internal/api").is_ok());
        assert!(
            parse_base_url("https://127.0.0.1:8080")
                .unwrap_err()
                .contains("https")
        );
        assert!(parse_base_url("127.0.0.1:8080").is_err());
        assert!(
            parse_base_url("http://user:pw@host")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse_base_url("http://host/?x=1").is_err());
        assert!(parse_base_url("not a url").is_err());
    }
}
