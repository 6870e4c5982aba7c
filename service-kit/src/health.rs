//! `GET /health`: the daemon's own liveness, whatever its dependencies do.

use std::sync::Arc;

use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use serde_json::{Map, Value, json};

use crate::error::{write_json, write_json_value};

/// Extra fields a daemon adds to its health body, computed per request.
type Extra = Arc<dyn Fn() -> Map<String, Value> + Send + Sync>;

/// Answers 200 `{"status":"ok","service":NAME,"version":VERSION, ...}`.
#[derive(Clone)]
pub struct Health {
    /// The fixed fields, rendered once.
    body: bytes::Bytes,
    fixed: Map<String, Value>,
    extra: Option<Extra>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The health endpoint of daemon `name` at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        let fixed = json!({ "status": "ok", "service": name, "version": version });
        let fixed = fixed.as_object().cloned().unwrap_or_default();
        Self {
            body: Value::Object(fixed.clone()).to_string().into(),
            fixed,
            extra: None,
        }
    }

    /// Adds fields computed at each request (state a person checking health
    /// wants to see, such as a circuit breaker's). `status` stays "ok": the
    /// endpoint reports the daemon's own liveness.
    pub fn with(mut self, extra: impl Fn() -> Map<String, Value> + Send + Sync + 'static) -> Self {
        self.extra = Some(Arc::new(extra));
        self
    }
}

#[async_trait]
impl Handler for Health {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match &self.extra {
            None => write_json(res, StatusCode::OK, self.body.clone()),
            Some(extra) => {
                let mut body = self.fixed.clone();
                body.extend(extra());
                write_json_value(res, StatusCode::OK, &body);
            }
        }
    }
}
