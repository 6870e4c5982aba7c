//! service-a: the echo daemon.
//!
//! `GET /health` says it is alive; `GET /echo?msg=TEXT` answers
//! `{"echo":"TEXT"}` with the text byte for byte.

use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Scribe, async_trait};
use serde::Serialize;
use service_kit::cli::ServerSettings;
use service_kit::error::{ApiError, write_json_value};
use service_kit::query::msg_from_query;
use service_kit::{App, Daemon, StartError};

/// service-a as the shared lifecycle sees it.
#[derive(Debug)]
pub struct ServiceA;

/// service-a has no settings beyond the shared ones.
#[derive(Debug, clap::Args)]
pub struct Args {}

impl Daemon for ServiceA {
    const NAME: &'static str = "service-a";
    const ABOUT: &'static str = "The echo daemon: GET /echo?msg=TEXT answers {\"echo\":\"TEXT\"}.";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const ENV_PREFIX: &'static str = "SERVICE_A";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    type Args = Args;

    fn build(settings: &ServerSettings, _args: Args) -> Result<App, StartError> {
        Ok(App {
            router: router(settings.max_msg_bytes),
            summary: format!("max msg {} bytes", settings.max_msg_bytes),
        })
    }
}

/// The routes, for a given `msg` limit.
pub fn router(max_msg_bytes: usize) -> Router {
    Router::new()
        .push(
            Router::with_path("health").get(service_kit::health::Health::new(
                ServiceA::NAME,
                ServiceA::VERSION,
            )),
        )
        .push(Router::with_path("echo").get(Echo { max_msg_bytes }))
}

/// `GET /echo`.
#[derive(Debug, Clone, Copy)]
struct Echo {
    /// Longest `msg` accepted, in decoded bytes.
    max_msg_bytes: usize,
}

#[derive(Serialize)]
struct EchoBody<'a> {
    echo: &'a str,
}

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match msg_from_query(req.uri().query(), self.max_msg_bytes) {
            Ok(msg) => write_json_value(res, StatusCode::OK, &EchoBody { echo: &msg }),
            Err(e) => ApiError::from(e).render(res),
        }
    }
}
