//! What every answer of both daemons gets, whoever decided it: the common
//! headers (`X-Content-Type-Options: nosniff`, `Cache-Control: no-store`)
//! and the contract's JSON bodies for 404 and 405, which salvo's router
//! decides before any handler runs and leaves without a body. One hoop,
//! inside [`crate::observe::Observe`], so that what is observed is what is
//! sent.
//!
//! Out of its reach: the answers hyper writes itself for a request it
//! cannot parse (400, 414, and 431 for a head over `--max-header-bytes`).
//! Those never reach the service, and hyper has no hook for them: they go
//! out as a bare status line with `Connection: close` and an empty body,
//! which leaves nothing to sniff, and a 431 is not cacheable without
//! explicit freshness (RFC 9111, 4.2.2).

use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Scribe, async_trait};

use crate::error::ApiError;

/// The response policy of both daemons.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponsePolicy;

#[async_trait]
impl Handler for ResponsePolicy {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        ctrl.call_next(req, depot, res).await;
        if res.body.is_none() {
            match res.status_code {
                Some(StatusCode::NOT_FOUND) => ApiError::NotFound.render(res),
                Some(StatusCode::METHOD_NOT_ALLOWED) => ApiError::MethodNotAllowed.render(res),
                _ => {}
            }
        }
        let headers = res.headers_mut();
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
