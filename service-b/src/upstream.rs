//! The call to service-a: one pooled client, one deadline for the whole
//! exchange, and every way it can go wrong sorted into the contract's kinds,
//! the way a reverse proxy would classify them.

use std::cell::Cell;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, Tracer as _};
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_REQUEST_RESEND_COUNT, HTTP_RESPONSE_STATUS_CODE,
    SERVER_ADDRESS, SERVER_PORT, URL_FULL, URL_TEMPLATE,
};
use opentelemetry_semantic_conventions::metric::HTTP_CLIENT_REQUEST_DURATION;
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use service_kit::telemetry::{Durations, current_trace_id, hex_into, tracer};
use url::Url;

use crate::balancer;

/// Why an answer is degraded: the contract's `error` values. The first five
/// are what went wrong calling service-a; the next two are service-b's own
/// refusals, made without calling it; the last is a balancer's, in front of
/// several service-a's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No complete answer within the deadline.
    Timeout,
    /// Nothing listens at service-a's address.
    ConnectionRefused,
    /// Any other transport failure: reset, unreachable, DNS, closed early.
    ConnectionFailed,
    /// service-a answered with a non-2xx status.
    UpstreamStatus,
    /// A 2xx whose body is not the expected JSON, or is too large, or a
    /// response that is not HTTP at all.
    InvalidResponse,
    /// The bound on calls in flight is reached.
    Overloaded,
    /// The circuit breaker is open.
    CircuitOpen,
    /// A balancer in front of several service-a's found no replica that
    /// could take the call, and said so itself ([`crate::balancer`]).
    NoHealthyUpstream,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::ConnectionRefused,
        Self::ConnectionFailed,
        Self::UpstreamStatus,
        Self::InvalidResponse,
        Self::Overloaded,
        Self::CircuitOpen,
        Self::NoHealthyUpstream,
    ];

    /// The contract's `error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionFailed => "connection_failed",
            Self::UpstreamStatus => "upstream_status",
            Self::InvalidResponse => "invalid_response",
            Self::Overloaded => "overloaded",
            Self::CircuitOpen => "circuit_open",
            Self::NoHealthyUpstream => "no_healthy_upstream",
        }
    }
}

/// A failed call, with what the degraded answer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// Which kind of failure.
    pub kind: ErrorKind,
    /// service-a's status, when it sent one.
    pub status: Option<u16>,
    /// A sentence for people: logs and the body's `message`.
    pub detail: String,
}

impl UpstreamError {
    /// A failure of `kind`, explained by `detail`.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            detail: detail.into(),
        }
    }

    /// Whether this failure says service-a is unwell, as a proxy's outlier
    /// detection counts: a transport failure, a timeout, a 5xx, an invalid
    /// answer. A 4xx is the caller's doing (a msg over service-a's own
    /// limit, say): counting it would let one client open the breaker for
    /// everyone.
    pub fn counts_against_upstream(&self) -> bool {
        match self.kind {
            ErrorKind::UpstreamStatus => self.status.is_none_or(|s| s >= 500),
            ErrorKind::Timeout
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionFailed
            | ErrorKind::InvalidResponse => true,
            // Refused by service-b itself: no call was made.
            ErrorKind::Overloaded | ErrorKind::CircuitOpen => false,
            // Refused at once by the balancer, which called no replica: its
            // health checks already do the breaker's work, and an open
            // breaker would only hide this reason behind circuit_open.
            ErrorKind::NoHealthyUpstream => false,
        }
    }

    /// The `http_status` of the degraded body: what a reverse proxy in
    /// service-b's place would have answered.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::Timeout => 504,
            ErrorKind::UpstreamStatus => self.status.unwrap_or(502),
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionFailed
            | ErrorKind::InvalidResponse => 502,
            ErrorKind::Overloaded | ErrorKind::CircuitOpen | ErrorKind::NoHealthyUpstream => 503,
        }
    }
}

/// The W3C trace context header.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

        let fetch = NEW_CONNECTION.scope(Cell::new(false), async {
            let result = self.fetch(request).await;
            (result, NEW_CONNECTION.with(Cell::get))
        });
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
            Err(_) => Attempt::Done(Err(self.timed_out())),
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

    fn timed_out(&self) -> UpstreamError {
        UpstreamError::new(
            ErrorKind::Timeout,
            format!(
                "service-a gave no complete answer within {}",
                humantime::format_duration(self.deadline)
            ),
        )
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
        if !(200..300).contains(&status) || !is_json(content_type.unwrap_or("")) {
            // Judged without the body, which cannot be the answer; a small
            // one is still read, so the connection can serve the next call.
            // A balancer's own answer says why no replica answered.
            let judged = match balancer::verdict(status, response.headers()) {
                Some(e) => Err(e),
                None => judge(status, content_type, b""),
            };
            if let Err(e) = judged {
                drain(response).await;
                return Err(e.into());
            }
        }
        let invalid = |detail: String| UpstreamError {
            status: Some(status),
            ..UpstreamError::new(ErrorKind::InvalidResponse, detail)
        };
        if let Some(len) = response
            .content_length()
            .filter(|&len| len > self.max_body as u64)
        {
            return Err(invalid(format!(
                "service-a's body is {len} bytes; the limit is {}",
                self.max_body
            ))
            .into());
        }
        let mut body = BytesMut::with_capacity(response.content_length().unwrap_or(256) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > self.max_body {
                return Err(invalid(format!(
                    "service-a's body is over the {}-byte limit",
                    self.max_body
                ))
                .into());
            }
            body.extend_from_slice(&chunk);
        }
        // The content type was JSON (checked above): only the body is left.
        check_echo_reply(&body)
            .map_err(|e| invalid(format!("service-a's body is not {{\"echo\": string}}: {e}")))?;
        Ok((status, body.freeze()))
    }

    fn classify(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return self.timed_out();
        }
        let mut source = e.source();
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::ConnectionRefused
            {
                return UpstreamError::new(
                    ErrorKind::ConnectionRefused,
                    format!("nothing listens at {}", authority(&self.echo_url)),
                );
            }
            if let Some(h) = err.downcast_ref::<hyper::Error>()
                && (h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
            {
                return UpstreamError::new(
                    ErrorKind::InvalidResponse,
                    format!("service-a's answer is not valid HTTP: {h}"),
                );
            }
            source = err.source();
        }
        UpstreamError::new(
            ErrorKind::ConnectionFailed,
            format!("calling service-a failed: {}", chain(e)),
        )
    }
}

/// The W3C `traceparent` of a span, written without the propagator's
/// formatting and its empty `tracestate`: `00-<trace id>-<span id>-<flags>`.
fn traceparent(sc: &SpanContext) -> Option<HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut out[36..52], &sc.span_id().to_bytes());
    hex_into(&mut out[53..55], &[sc.trace_flags().to_u8()]);
    HeaderValue::from_bytes(&out).ok()
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

tokio::task_local! {
    /// Set when the attempt in progress opened a new connection to
    /// service-a (rather than reusing a kept-alive one).
    static NEW_CONNECTION: Cell<bool>;
}

/// A connector layer that marks the attempt in progress as one that made a
/// new connection. hyper's pool races an idle connection coming back against
/// a new one being made; if the idle one wins, the new one is finished in a
/// background task and the request goes out on the reused connection. So
/// the mark is set when the connect *completes*, which is in the requesting
/// task only when the new connection is the one the request uses.
#[derive(Debug, Clone, Copy)]
struct MarkNewConnections;

impl<S> tower_layer::Layer<S> for MarkNewConnections {
    type Service = MarkNew<S>;

    fn layer(&self, inner: S) -> MarkNew<S> {
        MarkNew(inner)
    }
}

#[derive(Debug, Clone)]
struct MarkNew<S>(S);

impl<S, R> tower_service::Service<R> for MarkNew<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, target: R) -> Self::Future {
        let connecting = self.0.call(target);
        Box::pin(async move {
            let connected = connecting.await;
            // Outside an attempt (finished in the background, for the pool)
            // there is nothing to mark.
            if connected.is_ok() {
                let _ = NEW_CONNECTION.try_with(|marked| marked.set(true));
            }
            connected
        })
    }
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

/// Whether `e` is a connection that closed before any answer came back.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Judges a complete answer from service-a: good is a 2xx, `application/json`,
/// and a body that is one JSON object with a string `echo`; anything else is
/// the contract's `upstream_status` or `invalid_response`. Never panics,
/// whatever the bytes (`fuzz/` checks that).
pub fn judge(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), UpstreamError> {
    if !(200..300).contains(&status) {
        let shown = reqwest::StatusCode::from_u16(status)
            .map_or_else(|_| status.to_string(), |s| s.to_string());
        return Err(UpstreamError {
            status: Some(status),
            ..UpstreamError::new(
                ErrorKind::UpstreamStatus,
                format!("service-a answered {shown}"),
            )
        });
    }
    let invalid = |detail: String| UpstreamError {
        status: Some(status),
        ..UpstreamError::new(ErrorKind::InvalidResponse, detail)
    };
    let content_type = content_type.unwrap_or("");
    if !is_json(content_type) {
        return Err(invalid(format!(
            "service-a answered {status} with content type {content_type:?}, not JSON"
        )));
    }
    check_echo_reply(body)
        .map_err(|e| invalid(format!("service-a's body is not {{\"echo\": string}}: {e}")))
}

/// Checks that `body` is one JSON object with a string `echo`. serde would
/// also accept a struct written as an array, so the object is checked first.
fn check_echo_reply(body: &[u8]) -> Result<(), String> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a JSON object".to_owned());
    }
    // All of it: serde_json checks neither the UTF-8 nor the escapes (a lone
    // surrogate, `\udc00`) of strings it skips, and the body is passed on as
    // JSON text, so every string is decoded here.
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match value.get("echo") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err("echo is not a string".to_owned()),
        None => Err("missing field `echo`".to_owned()),
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
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

fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The error and its causes on one line: reqwest's own message is often
/// just "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
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

    #[test]
    fn http_status_per_kind() {
        let e = |kind, status| UpstreamError {
            kind,
            status,
            detail: String::new(),
        };
        assert_eq!(e(ErrorKind::Timeout, None).http_status(), 504);
        assert_eq!(e(ErrorKind::ConnectionRefused, None).http_status(), 502);
        assert_eq!(e(ErrorKind::ConnectionFailed, None).http_status(), 502);
        assert_eq!(e(ErrorKind::InvalidResponse, Some(200)).http_status(), 502);
        assert_eq!(e(ErrorKind::UpstreamStatus, Some(500)).http_status(), 500);
        assert_eq!(e(ErrorKind::UpstreamStatus, Some(404)).http_status(), 404);
        assert_eq!(
            e(ErrorKind::NoHealthyUpstream, Some(503)).http_status(),
            503
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(!is_json("text/html"));
        assert!(!is_json(""));
        assert!(!is_json("application/jsonp"));
    }

    #[test]
    fn echo_reply_shape() {
        let ok = |b: &str| check_echo_reply(b.as_bytes()).is_ok();
        assert!(ok(r#"{"echo":"x"}"#));
        assert!(ok(r#"{"echo":"a\"b\\c","extra":1}"#));
        assert!(!ok(r#"{"echo":1}"#));
        assert!(!ok(r#"{"other":"x"}"#));
        assert!(!ok(r#"["echo"]"#));
        assert!(ok(r#" {"echo":""} "#));
        assert!(!ok(r#"{"echo":"x"} trailing"#));
        assert!(!ok(""));
    }

    #[test]
    fn a_lone_surrogate_escape_anywhere_is_invalid() {
        // Found by fuzz/ (judge): the echo was fine, a skipped field held
        // "\uDE51", which no strict JSON parser turns into a string.
        for body in [r#"{"echo":"x","n":"\uDE51"}"#, r#"{"echo":"\ud800"}"#] {
            let e = judge(200, Some("application/json"), body.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidResponse, "{body}");
        }
        assert!(judge(200, Some("application/json"), br#"{"echo":"\ud83e\udd80"}"#).is_ok());
    }

    #[test]
    fn a_body_that_is_not_utf8_anywhere_is_invalid() {
        let mut body = br#"{"echo":"x","skipped":""#.to_vec();
        body.push(0xFF);
        body.extend_from_slice(br#""}"#);
        let e = judge(200, Some("application/json"), &body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
    }
}
