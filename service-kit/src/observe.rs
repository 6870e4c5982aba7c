//! The hoop in front of every request of both daemons. For each request it
//! opens the SERVER span (continuing the caller's `traceparent`), records
//! `http.server.request.duration`, writes the one access-log line, sets the
//! headers every answer carries, and renders the JSON bodies of 404 and 405
//! (salvo decides those before any handler runs).

use std::time::Instant;

use opentelemetry::metrics::Histogram;
use opentelemetry::trace::Status;
use opentelemetry::{Key, KeyValue, global};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH, URL_SCHEME,
};
use opentelemetry_semantic_conventions::metric::HTTP_SERVER_REQUEST_DURATION;
use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Scribe, async_trait};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::telemetry::{DURATION_BUCKETS, trace_id_of};

/// Set by a handler whose answer is degraded because a dependency failed, so
/// the access log and the server span can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degraded {
    /// The contract's error kind (`timeout`, `connection_refused`, ...).
    pub kind: &'static str,
    /// The status a reverse proxy would have answered (`http_status` in the body).
    pub upstream_status: u16,
}

/// The route template of a matched request (`/echo`), never the raw path:
/// it names the endpoint without the user's content.
pub fn route_of(req: &Request) -> Option<String> {
    let matched = req.matched_path();
    (!matched.is_empty()).then(|| format!("/{matched}"))
}

/// Observes every request of one daemon.
#[derive(Debug, Clone)]
pub struct Observe {
    /// `http.server.request.duration`, seconds.
    duration: Histogram<f64>,
    /// `<daemon>.degraded`, the span attribute that marks a degraded answer.
    degraded_key: Key,
}

impl Observe {
    /// The hoop for daemon `name`. Takes its instruments from the global
    /// meter provider: create it after telemetry has started.
    pub fn new(name: &str) -> Self {
        let duration = global::meter("service-kit")
            .f64_histogram(HTTP_SERVER_REQUEST_DURATION)
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        Self {
            duration,
            degraded_key: Key::new(format!("{}.degraded", name.replace('-', "_"))),
        }
    }
}

#[async_trait]
impl Handler for Observe {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let started = Instant::now();
        let method = req.method().as_str().to_owned();
        let route = route_of(req);
        let endpoint = route.as_deref().unwrap_or("(none)");
        // The span name is the route template, never the raw URI; an
        // unmatched request is just its method.
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.clone(),
        };
        let span = tracing::info_span!(
            "request",
            otel.name = name,
            otel.kind = "server",
            trace_id = Empty,
        );
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let _ = span.set_parent(parent);
        if let Some(trace_id) = trace_id_of(&span) {
            span.record("trace_id", trace_id);
        }
        span.set_attribute(HTTP_REQUEST_METHOD, method.clone());
        span.set_attribute(URL_SCHEME, "http");
        span.set_attribute(URL_PATH, req.uri().path().to_owned());
        if let Some(route) = &route {
            span.set_attribute(HTTP_ROUTE, route.clone());
        }

        ctrl.call_next(req, depot, res)
            .instrument(span.clone())
            .await;

        let status = res.status_code.unwrap_or(StatusCode::OK);
        if res.body.is_none() {
            match status {
                StatusCode::NOT_FOUND => ApiError::NotFound.render(res),
                StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed.render(res),
                _ => {}
            }
        }
        let headers = res.headers_mut();
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));

        let elapsed = started.elapsed();
        let code = status.as_u16();
        let degraded = depot.get_typed::<Degraded>().ok().copied();
        // A server span is an error on 5xx only: a 4xx is the caller's mistake.
        let error_type = degraded
            .map(|d| d.kind.to_owned())
            .or_else(|| status.is_server_error().then(|| code.to_string()));
        span.set_attribute(HTTP_RESPONSE_STATUS_CODE, i64::from(code));
        if let Some(error_type) = &error_type {
            span.set_attribute(ERROR_TYPE, error_type.clone());
            span.set_status(Status::error(error_type.clone()));
        }
        if degraded.is_some() {
            span.set_attribute(self.degraded_key.clone(), true);
        }

        let mut attributes = vec![
            KeyValue::new(HTTP_REQUEST_METHOD, method.clone()),
            KeyValue::new(URL_SCHEME, "http"),
            KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(code)),
        ];
        if let Some(route) = route.clone() {
            attributes.push(KeyValue::new(HTTP_ROUTE, route));
        }
        if let Some(error_type) = error_type {
            attributes.push(KeyValue::new(ERROR_TYPE, error_type));
        }
        self.duration.record(elapsed.as_secs_f64(), &attributes);

        // The access line is written inside the span, so it carries the
        // trace id (a field in the journal, a prefix on stderr).
        let _in_span = span.enter();
        log_access(
            &method,
            endpoint,
            code,
            elapsed.as_micros() as f64 / 1000.0,
            degraded,
        );
    }
}

/// One line per request. The message reads on its own (`journalctl` shows
/// only it by default); the fields are for filtering.
fn log_access(
    method: &str,
    endpoint: &str,
    status: u16,
    latency_ms: f64,
    degraded: Option<Degraded>,
) {
    match degraded {
        Some(d) => tracing::warn!(
            target: "access",
            method, endpoint, status, latency_ms,
            kind = d.kind, upstream_status = d.upstream_status,
            "{method} {endpoint} {status} degraded: {} (upstream {}) in {latency_ms} ms",
            d.kind, d.upstream_status
        ),
        None if status >= 500 => tracing::error!(
            target: "access",
            method, endpoint, status, latency_ms,
            "{method} {endpoint} {status} in {latency_ms} ms"
        ),
        None => tracing::info!(
            target: "access",
            method, endpoint, status, latency_ms,
            "{method} {endpoint} {status} in {latency_ms} ms"
        ),
    }
}
