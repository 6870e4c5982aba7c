//! The hoop in front of every request of both daemons. It only observes:
//! for each request it opens the SERVER span (continuing the caller's
//! `traceparent`), records `http.server.request.duration` and writes the
//! one access line (`access.rs`). What the answer says is decided inside it
//! (the handlers, and [`crate::policy`] for what every answer gets).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, Key, KeyValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH, URL_SCHEME,
    USER_AGENT_ORIGINAL,
};
use opentelemetry_semantic_conventions::metric::HTTP_SERVER_REQUEST_DURATION;
use salvo::http::header::USER_AGENT;
use salvo::http::{Method, StatusCode};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};

use crate::access::{log_access, log_client_closed};
use crate::durations::Durations;
use crate::telemetry::tracer;

/// Set by a handler whose answer is degraded because a dependency failed, so
/// the access line, the server span and the duration metric can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degraded {
    /// Why, as a short name of the daemon's own: the span's and the metric's
    /// `error.type`, the access line's `kind`.
    pub kind: &'static str,
    /// The status the failure stands for: what a reverse proxy in the
    /// daemon's place would have answered. The access line calls it
    /// `upstream_status`, as nginx's log does.
    pub status: u16,
}

/// The method as a `'static` name; the semantic conventions' `_OTHER` for
/// anything non-standard, so a client cannot mint new label values.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// What a request's method and route are called in spans, metrics and logs.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    /// `/call-echo`, or `None` for a request no route matched.
    route: Option<&'static str>,
    /// `GET /call-echo` (or just `GET`).
    span_name: &'static str,
}

/// Endpoints by (method, matched path), made once each. Every key is a
/// route of the router times a standard method, so this stays small; the
/// names are leaked once, and every request after the first borrows them
/// instead of formatting and allocating its own.
#[derive(Debug, Default)]
struct Endpoints(RwLock<HashMap<String, Vec<(&'static str, Endpoint)>>>);

impl Endpoints {
    fn get(&self, method: &'static str, matched: &str) -> Endpoint {
        let read = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let found = read
            .get(matched)
            .and_then(|by_method| by_method.iter().find(|(m, _)| *m == method));
        if let Some((_, endpoint)) = found {
            return *endpoint;
        }
        drop(read);
        let route: Option<&'static str> =
            (!matched.is_empty()).then(|| &*Box::leak(format!("/{matched}").into_boxed_str()));
        let endpoint = Endpoint {
            route,
            span_name: match route {
                Some(route) => Box::leak(format!("{method} {route}").into_boxed_str()),
                None => method,
            },
        };
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(matched.to_owned())
            .or_default()
            .push((method, endpoint));
        endpoint
    }
}

/// What a server duration's attributes derive from: method, route, status
/// and the kind of failure (degraded, or the client gone).
type ServerKey = (
    &'static str,
    Option<&'static str>,
    u16,
    Option<&'static str>,
);

/// Observes every request of one daemon.
#[derive(Debug, Clone)]
pub struct Observe {
    /// `http.server.request.duration`, seconds, by method, route, status
    /// and degraded kind (which give every attribute).
    duration: Arc<Durations<ServerKey>>,
    /// `<daemon>.degraded`, the span attribute that marks a degraded answer.
    degraded_key: Key,
    /// Reads the caller's `traceparent` (W3C trace context only, as the
    /// global propagator is set up; held here, not looked up per request).
    propagator: TraceContextPropagator,
    /// Names of the endpoints seen so far.
    endpoints: Arc<Endpoints>,
}

impl Observe {
    /// The hoop for daemon `name`. Takes its instruments from the global
    /// meter provider: create it after telemetry has started.
    pub fn new(name: &str) -> Self {
        let duration = Durations::new(
            "service-kit",
            HTTP_SERVER_REQUEST_DURATION,
            "Duration of HTTP server requests.",
        );
        Self {
            duration: Arc::new(duration),
            // Shared, not copied, by every degraded request's span.
            degraded_key: Key::new(Arc::<str>::from(format!(
                "{}.degraded",
                name.replace('-', "_")
            ))),
            propagator: TraceContextPropagator::new(),
            endpoints: Arc::default(),
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
        let method = method_name(req.method());
        let endpoint = self.endpoints.get(method, req.matched_path());
        // The SERVER span, continuing the caller's `traceparent`; the
        // handlers find it as the current OpenTelemetry context.
        let cx = tracer().map(|tracer| {
            let parent = self.propagator.extract(&HeaderExtractor(req.headers()));
            let mut attributes = Vec::with_capacity(10);
            attributes.extend([
                KeyValue::new(HTTP_REQUEST_METHOD, method),
                KeyValue::new(URL_SCHEME, "http"),
                KeyValue::new(URL_PATH, req.uri().path().to_owned()),
            ]);
            // Says who called: `lab-traffic/1 (synthetic)` marks test traffic.
            if let Some(agent) = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()) {
                attributes.push(KeyValue::new(USER_AGENT_ORIGINAL, agent.to_owned()));
            }
            if let Some(route) = endpoint.route {
                attributes.push(KeyValue::new(HTTP_ROUTE, route));
            }
            let span = tracer
                .span_builder(endpoint.span_name)
                .with_kind(SpanKind::Server)
                .with_attributes(attributes)
                .start_with_context(tracer, &parent);
            parent.with_span(span)
        });

        // Until the answer is decided, a dropped request (its client closed
        // the connection, and hyper dropped this future) is recorded as 499.
        let mut record = Record {
            observe: self,
            started,
            method,
            endpoint,
            cx,
            done: false,
        };
        // With traces off there is no context to make current.
        match &record.cx {
            Some(cx) => {
                ctrl.call_next(req, depot, res)
                    .with_context(cx.clone())
                    .await
            }
            None => ctrl.call_next(req, depot, res).await,
        };

        let status = res.status_code.unwrap_or(StatusCode::OK);
        let degraded = depot.get_typed::<Degraded>().ok().copied();
        record.finish(Outcome::Answered(status, degraded));
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// With this status, degraded or not.
    Answered(StatusCode, Option<Degraded>),
    /// The client closed the connection before the answer: nginx's 499.
    ClientClosed,
}

/// The status nginx logs for a request whose client left before the answer.
pub const CLIENT_CLOSED: u16 = 499;
/// The `error.type` of such a request.
const CLIENT_CLOSED_KIND: &str = "client_closed";

/// One request being observed: its span, metric and access line, written
/// once, when its answer is decided or when it is dropped unanswered.
struct Record<'a> {
    observe: &'a Observe,
    started: Instant,
    method: &'static str,
    endpoint: Endpoint,
    /// The SERVER span's context (traces on).
    cx: Option<Context>,
    /// Written already.
    done: bool,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::ClientClosed);
        }
    }
}

impl Record<'_> {
    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        let elapsed = self.started.elapsed();
        let (code, degraded) = match outcome {
            Outcome::Answered(status, degraded) => (status.as_u16(), degraded),
            Outcome::ClientClosed => (CLIENT_CLOSED, None),
        };
        // A server span is an error on 5xx only (a 4xx is the caller's
        // mistake), on a degraded answer, and when the client left first:
        // the request was never answered.
        let (error_type, description): (Option<Value>, _) = match outcome {
            Outcome::ClientClosed => (
                Some(CLIENT_CLOSED_KIND.into()),
                Some("the client closed the connection before the answer"),
            ),
            Outcome::Answered(_, Some(d)) => (Some(d.kind.into()), None),
            Outcome::Answered(status, None) if status.is_server_error() => {
                (Some(code.to_string().into()), None)
            }
            Outcome::Answered(..) => (None, None),
        };
        let span = self.cx.as_ref().map(Context::span);
        if let Some(span) = &span
            && span.is_recording()
        {
            let mut end = Vec::with_capacity(3);
            end.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(code)));
            if let Some(error_type) = &error_type {
                end.push(KeyValue::new(ERROR_TYPE, error_type.clone()));
                let why = description.map_or_else(|| error_type.to_string(), str::to_owned);
                span.set_status(Status::error(why));
            }
            if degraded.is_some() {
                end.push(KeyValue::new(self.observe.degraded_key.clone(), true));
            }
            span.set_attributes(end);
        }
        if let Some(span) = &span {
            span.end();
        }

        let (method, route) = (self.method, self.endpoint.route);
        let kind = match outcome {
            Outcome::ClientClosed => Some(CLIENT_CLOSED_KIND),
            Outcome::Answered(..) => degraded.map(|d| d.kind),
        };
        let key = (method, route, code, kind);
        self.observe
            .duration
            .record(elapsed.as_secs_f64(), key, || {
                let mut attributes = Vec::with_capacity(5);
                attributes.extend([
                    KeyValue::new(HTTP_REQUEST_METHOD, method),
                    KeyValue::new(URL_SCHEME, "http"),
                    KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(code)),
                ]);
                if let Some(route) = route {
                    attributes.push(KeyValue::new(HTTP_ROUTE, route));
                }
                if let Some(error_type) = error_type {
                    attributes.push(KeyValue::new(ERROR_TYPE, error_type));
                }
                attributes
            });

        let span_context = span.as_ref().map_or(&NO_SPAN, |s| s.span_context());
        let endpoint = route.unwrap_or("(none)");
        match outcome {
            Outcome::ClientClosed => log_client_closed(method, endpoint, elapsed, span_context),
            Outcome::Answered(..) => log_access(
                method,
                endpoint,
                code,
                elapsed,
                degraded.map(|d| (d.kind, d.status)),
                span_context,
            ),
        }
    }
}

/// The span context of a request that has no span (traces off).
static NO_SPAN: SpanContext = SpanContext::NONE;
