//! `GET /health`: the daemon's own liveness, whatever its dependencies do.

use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};

use crate::error::write_json;

/// Answers 200 `{"status":"ok","service":NAME,"version":VERSION}`.
#[derive(Debug, Clone)]
pub struct Health {
    /// The body, rendered once: it never changes.
    body: bytes::Bytes,
}

impl Health {
    /// The health endpoint of daemon `name` at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        let body = serde_json::json!({ "status": "ok", "service": name, "version": version });
        Self {
            body: body.to_string().into(),
        }
    }
}

#[async_trait]
impl Handler for Health {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        write_json(res, StatusCode::OK, self.body.clone());
    }
}
