//! service-b: the caller daemon.
//!
//! `GET /call-echo?msg=TEXT` calls service-a's `/echo` under a deadline and
//! answers with service-a's body; when service-a is down, slow or broken it
//! stays up and answers 503 with a body that says why ([`upstream`] sorts
//! the failures).

pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Counter;
use opentelemetry::{KeyValue, global};
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Scribe, async_trait};
use serde::Serialize;
use service_kit::cli::{ServerSettings, parse_duration, show_duration};
use service_kit::error::{ApiError, write_json, write_json_value};
use service_kit::health::Health;
use service_kit::observe::Degraded;
use service_kit::query::msg_from_query;
use service_kit::telemetry::current_trace_id;
use service_kit::{App, Daemon};
use url::Url;

use crate::upstream::{ErrorKind, Upstream, UpstreamError, parse_base_url};

/// service-b as the shared lifecycle sees it.
#[derive(Debug)]
pub struct ServiceB;

/// service-b's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URL of service-a; calls go to <URL>/echo
    #[arg(
        long,
        env = "SERVICE_A_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_base_url
    )]
    pub service_a_url: Url,

    /// Deadline for the whole call to service-a: connect, headers and body
    #[arg(
        long,
        env = "SERVICE_B_UPSTREAM_TIMEOUT",
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_duration
    )]
    pub upstream_timeout: Duration,
}

impl Daemon for ServiceB {
    const NAME: &'static str = "service-b";
    const ABOUT: &'static str = "The caller daemon: GET /call-echo?msg=TEXT calls service-a and answers 503 when it cannot.";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const ENV_PREFIX: &'static str = "SERVICE_B";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:8081";
    type Args = Args;

    fn build(settings: &ServerSettings, args: Args) -> Result<App, String> {
        let upstream = Upstream::new(
            &args.service_a_url,
            args.upstream_timeout,
            settings.max_msg_bytes,
        )?;
        let summary = format!(
            "upstream {}, deadline {}, max msg {} bytes",
            upstream.echo_url(),
            show_duration(upstream.deadline()),
            settings.max_msg_bytes
        );
        Ok(App {
            router: router(upstream, settings.max_msg_bytes),
            summary,
        })
    }
}

/// The routes, calling `upstream`. Takes its instruments from the global
/// meter provider: build it after telemetry has started.
pub fn router(upstream: Upstream, max_msg_bytes: usize) -> Router {
    let degraded = global::meter("service-b")
        .u64_counter("service_b.degraded_responses")
        .with_unit("{response}")
        .with_description("Answers of /call-echo degraded to 503, by error.type.")
        .build();
    // Every kind starts at zero, so the first degradation of a kind is an
    // increase Prometheus can see (a series that first appears at 1 is not).
    for kind in ErrorKind::ALL {
        degraded.add(0, &[KeyValue::new(ERROR_TYPE, kind.as_str())]);
    }
    Router::new()
        .push(Router::with_path("health").get(Health::new(ServiceB::NAME, ServiceB::VERSION)))
        .push(Router::with_path("call-echo").get(CallEcho {
            upstream: Arc::new(upstream),
            max_msg_bytes,
            degraded,
        }))
}

/// `GET /call-echo`.
#[derive(Debug, Clone)]
struct CallEcho {
    /// service-a, with its connection pool.
    upstream: Arc<Upstream>,
    /// Longest `msg` accepted, checked before any call.
    max_msg_bytes: usize,
    /// `service_b.degraded_responses`, by `error.type`.
    degraded: Counter<u64>,
}

/// The contract's 503 body.
#[derive(Serialize)]
struct DegradedBody<'a> {
    service_b: &'static str,
    service_a: &'static str,
    error: &'static str,
    http_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    message: &'a str,
}

const OK_PREFIX: &[u8] = br#"{"service_b":"ok","service_a":"#;

#[async_trait]
impl Handler for CallEcho {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _: &mut FlowCtrl,
    ) {
        let msg = match msg_from_query(req.uri().query(), self.max_msg_bytes) {
            Ok(msg) => msg,
            Err(e) => return ApiError::from(e).render(res),
        };
        match self.upstream.echo(&msg).await {
            Ok(echo) => {
                // service-a's body was checked to be the expected JSON: pass
                // it through as-is rather than parse and re-serialise it.
                let echo = echo.trim_ascii();
                let mut body = Vec::with_capacity(OK_PREFIX.len() + echo.len() + 1);
                body.extend_from_slice(OK_PREFIX);
                body.extend_from_slice(echo);
                body.push(b'}');
                write_json(res, StatusCode::OK, body);
            }
            Err(e) => {
                self.degraded
                    .add(1, &[KeyValue::new(ERROR_TYPE, e.kind.as_str())]);
                degrade(depot, res, &e);
            }
        }
    }
}

fn degrade(depot: &mut Depot, res: &mut Response, e: &UpstreamError) {
    let http_status = e.http_status();
    depot.insert_typed(Degraded {
        kind: e.kind.as_str(),
        upstream_status: http_status,
    });
    let body = DegradedBody {
        service_b: "ok",
        service_a: "unavailable",
        error: e.kind.as_str(),
        http_status,
        trace_id: current_trace_id(),
        message: &e.detail,
    };
    write_json_value(res, StatusCode::SERVICE_UNAVAILABLE, &body);
}
