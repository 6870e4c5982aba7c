//! The hoop in front of every request of both daemons: the one access-log
//! line per request, the headers every answer carries, and the JSON bodies of
//! 404 and 405 (salvo decides those before any handler runs).

use std::time::Instant;

use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Scribe, async_trait};

use crate::error::ApiError;

/// Set by a handler whose answer is degraded because a dependency failed, so
/// the access log can say why at WARN.
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

/// Logs one line per request and finishes every response.
#[derive(Debug, Default, Clone, Copy)]
pub struct Observe;

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
        ctrl.call_next(req, depot, res).await;

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

        let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
        let method = req.method().as_str();
        let route = route_of(req);
        let endpoint = route.as_deref().unwrap_or("(none)");
        let status = status.as_u16();
        // The message reads on its own (`journalctl` shows only it by
        // default); the fields are for filtering.
        match depot.get_typed::<Degraded>() {
            Ok(d) => tracing::warn!(
                target: "access",
                method, endpoint, status, latency_ms,
                kind = d.kind, upstream_status = d.upstream_status,
                "{method} {endpoint} {status} degraded: {} (upstream {}) in {latency_ms} ms",
                d.kind, d.upstream_status
            ),
            Err(_) if status >= 500 => tracing::error!(
                target: "access",
                method, endpoint, status, latency_ms,
                "{method} {endpoint} {status} in {latency_ms} ms"
            ),
            Err(_) => tracing::info!(
                target: "access",
                method, endpoint, status, latency_ms,
                "{method} {endpoint} {status} in {latency_ms} ms"
            ),
        }
    }
}
