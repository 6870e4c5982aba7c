//! service-a: the echo daemon.
//!
//! `GET /health` says it is alive; `GET /echo?msg=TEXT` answers
//! `{"echo":"TEXT"}` with the text byte for byte, unless a fault injected on
//! purpose ([`fault`]) says otherwise.

pub mod fault;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Scribe, async_trait};
use serde::Serialize;
use service_kit::cli::ServerSettings;
use service_kit::error::{ApiError, write_json_value};
use service_kit::query::msg_from_query;
use service_kit::{App, Daemon, StartError};

use crate::fault::{Fault, Faults, Kind};

/// service-a as the shared lifecycle sees it.
#[derive(Debug)]
pub struct ServiceA;

/// service-a's own settings.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// File naming a fault to inject on purpose (delay, hang, status, garbage, reset; see the README); read at start and on SIGHUP (systemctl reload). No file: no fault
    #[arg(long, env = "SERVICE_A_FAULT_FILE", value_name = "PATH")]
    pub fault_file: Option<PathBuf>,
}

impl Daemon for ServiceA {
    const NAME: &'static str = "service-a";
    const ABOUT: &'static str = "The echo daemon: GET /echo?msg=TEXT answers {\"echo\":\"TEXT\"}.";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const ENV_PREFIX: &'static str = "SERVICE_A";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    type Args = Args;

    fn build(settings: &ServerSettings, args: Args) -> Result<App, StartError> {
        // A fault file that does not parse is a bad setting, like any other.
        let faults = Arc::new(Faults::load(args.fault_file).map_err(StartError::config)?);
        let max_msg_bytes = settings.max_msg_bytes;
        let reloaded = faults.clone();
        Ok(App::new(
            router_with_faults(max_msg_bytes, faults.clone()),
            summary(max_msg_bytes, &faults.active()),
        )
        .on_reload(move || {
            let fault = reloaded.reload()?;
            Ok(summary(max_msg_bytes, &fault))
        }))
    }
}

/// What `systemctl status` says of this instance.
fn summary(max_msg_bytes: usize, fault: &Fault) -> String {
    format!("max msg {max_msg_bytes} bytes; fault {fault}")
}

/// The routes, for a given `msg` limit, with no fault.
pub fn router(max_msg_bytes: usize) -> Router {
    router_with_faults(max_msg_bytes, Arc::new(Faults::with(None, Fault::OFF)))
}

/// The routes, injecting whatever fault `faults` holds at each request.
pub fn router_with_faults(max_msg_bytes: usize, faults: Arc<Faults>) -> Router {
    let seen_by_health = faults.clone();
    let health =
        service_kit::health::Health::new(ServiceA::NAME, ServiceA::VERSION).with(move || {
            let mut extra = serde_json::Map::new();
            extra.insert("fault".into(), seen_by_health.active().to_string().into());
            extra
        });
    Router::new()
        .push(Router::with_path("health").get(health))
        .push(Router::with_path("echo").get(Echo {
            max_msg_bytes,
            faults,
        }))
}

/// `GET /echo`.
#[derive(Debug, Clone)]
struct Echo {
    /// Longest `msg` accepted, in decoded bytes.
    max_msg_bytes: usize,
    /// The fault to inject, if any.
    faults: Arc<Faults>,
}

#[derive(Serialize)]
struct EchoBody<'a> {
    echo: &'a str,
}

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        if let Some(kind) = self.faults.draw() {
            // The trace says the failure was made on purpose.
            Context::map_current(|cx| {
                cx.span()
                    .set_attribute(KeyValue::new("service_a.fault", kind.name()))
            });
            if !inject(kind, res).await {
                return;
            }
        }
        match msg_from_query(req.uri().query(), self.max_msg_bytes) {
            Ok(msg) => write_json_value(res, StatusCode::OK, &EchoBody { echo: &msg }),
            Err(e) => ApiError::from(e).render(res),
        }
    }
}

#[derive(Serialize)]
struct FaultBody {
    error: &'static str,
    message: &'static str,
}

/// Does what the fault says; `true` when the request should then be
/// answered as usual (after a delay).
async fn inject(kind: Kind, res: &mut Response) -> bool {
    match kind {
        Kind::Delay(min, max) => {
            let delay = if min == max {
                min
            } else {
                let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(fastrand::u64(nanos(min)..=nanos(max)))
            };
            tokio::time::sleep(delay).await;
            true
        }
        Kind::Hang => std::future::pending().await,
        Kind::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = FaultBody {
                error: "injected_fault",
                message: "this error was injected on purpose (SERVICE_A_FAULT_FILE)",
            };
            write_json_value(res, status, &body);
            false
        }
        Kind::Garbage => {
            service_kit::error::write_json(
                res,
                StatusCode::OK,
                &b"<html>injected fault: this is not the JSON you expected</html>"[..],
            );
            false
        }
        Kind::Reset => {
            // A body that fails before its first byte: the server drops the
            // connection without sending an answer.
            res.stream(futures_util::stream::once(async {
                Err::<bytes::Bytes, _>(std::io::Error::other("injected fault: reset"))
            }));
            false
        }
    }
}
