//! service-b: the caller daemon.
//!
//! `GET /call-echo?msg=TEXT` calls service-a's `/echo` under a deadline and
//! answers with service-a's body; when service-a is down, slow or broken it
//! stays up and answers 503 with a body that says why. [`upstream`] makes
//! the call, [`classify`] names what went wrong, [`degraded`] writes the 503;
//! a bound on calls in flight and a circuit breaker ([`protect`]) keep it
//! standing when service-a hangs or keeps failing.

pub mod balancer;
pub mod classify;
pub mod degraded;
pub mod protect;
mod reuse;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Counter;
use opentelemetry::{KeyValue, global};
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Scribe, async_trait};
use service_kit::cli::{ServerSettings, parse_duration, show_duration};
use service_kit::error::{ApiError, write_json};
use service_kit::health::Health;
use service_kit::query::msg_from_query;
use service_kit::{App, Daemon, StartError};
use url::Url;

use tokio::sync::OwnedSemaphorePermit;

use crate::degraded::{Degradation, degrade};
use crate::protect::{Breaker, InFlight, Ticket};
use crate::upstream::{Upstream, parse_base_url};

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

    /// Most calls to service-a in flight at once; past it, /call-echo answers 503 "overloaded" at once
    #[arg(
        long,
        env = "SERVICE_B_MAX_IN_FLIGHT",
        value_name = "N",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_in_flight: u32,

    /// Consecutive failed calls to service-a that open the circuit breaker (0 turns it off)
    #[arg(
        long,
        env = "SERVICE_B_BREAKER_FAILURES",
        value_name = "N",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(0..=1_000_000)
    )]
    pub breaker_failures: u32,

    /// How long an open breaker answers 503 "circuit_open" before letting one probe call through
    #[arg(
        long,
        env = "SERVICE_B_BREAKER_COOLDOWN",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub breaker_cooldown: Duration,
}

/// How service-b protects itself: see [`protect`].
#[derive(Debug)]
pub struct Protection {
    /// The bound on calls in flight.
    pub in_flight: InFlight,
    /// The circuit breaker.
    pub breaker: Breaker,
}

impl Protection {
    /// From the settings.
    pub fn from_args(args: &Args) -> Self {
        Self {
            in_flight: InFlight::new(args.max_in_flight as usize),
            breaker: Breaker::new(args.breaker_failures, args.breaker_cooldown),
        }
    }
}

impl Args {
    /// The settings as the flags' defaults give them (and the environment,
    /// as for the daemon): what embedding the routes in a test starts from.
    pub fn defaults() -> Result<Self, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        let cmd = Self::augment_args(clap::Command::new(ServiceB::NAME));
        Self::from_arg_matches(&cmd.try_get_matches_from([ServiceB::NAME])?)
    }
}

impl Daemon for ServiceB {
    const NAME: &'static str = "service-b";
    const ABOUT: &'static str = "The caller daemon: GET /call-echo?msg=TEXT calls service-a and answers 503 when it cannot.";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const ENV_PREFIX: &'static str = "SERVICE_B";
    const DEFAULT_LISTEN: &'static str = "127.0.0.1:8081";
    type Args = Args;

    fn build(settings: &ServerSettings, args: Args) -> Result<App, StartError> {
        // On SIGTERM, calls in flight get --shutdown-timeout to finish: one
        // allowed to run longer would be cut without an answer.
        if args.upstream_timeout >= settings.shutdown_timeout {
            return Err(StartError::config(format!(
                "--upstream-timeout / SERVICE_B_UPSTREAM_TIMEOUT ({}) must be shorter than --shutdown-timeout / SERVICE_B_SHUTDOWN_TIMEOUT ({}), or a stop cuts calls in flight without an answer",
                show_duration(args.upstream_timeout),
                show_duration(settings.shutdown_timeout)
            )));
        }
        let upstream = Upstream::new(
            &args.service_a_url,
            args.upstream_timeout,
            settings.max_msg_bytes,
        )
        .map_err(StartError::Startup)?;
        let breaker = match args.breaker_failures {
            0 => "breaker off".to_owned(),
            n => format!(
                "breaker opens after {n} failures for {}",
                show_duration(args.breaker_cooldown)
            ),
        };
        let summary = format!(
            "upstream {}, deadline {}, max {} in flight, {breaker}, max msg {} bytes",
            upstream.echo_url(),
            show_duration(upstream.deadline()),
            args.max_in_flight,
            settings.max_msg_bytes
        );
        Ok(App::new(
            router(
                upstream,
                Protection::from_args(&args),
                settings.max_msg_bytes,
            ),
            summary,
        ))
    }
}

/// The routes, calling `upstream`. Takes its instruments from the global
/// meter provider: build it after telemetry has started.
pub fn router(upstream: Upstream, protection: Protection, max_msg_bytes: usize) -> Router {
    let degraded = global::meter("service-b")
        .u64_counter("service_b.degraded_responses")
        .with_unit("{response}")
        .with_description("Answers of /call-echo degraded to 503, by error.type.")
        .build();
    // Every kind starts at zero, so the first degradation of a kind is an
    // increase Prometheus can see (a series that first appears at 1 is not).
    for kind in Degradation::kinds() {
        degraded.add(0, &[KeyValue::new(ERROR_TYPE, kind)]);
    }
    let protection = Arc::new(protection);
    let seen_by_health = protection.clone();
    let health = Health::new(ServiceB::NAME, ServiceB::VERSION).with(move || {
        let mut extra = serde_json::Map::new();
        extra.insert(
            "breaker".into(),
            seen_by_health.breaker.state().as_str().into(),
        );
        extra
    });
    Router::new()
        .push(Router::with_path("health").get(health))
        .push(Router::with_path("call-echo").get(CallEcho {
            upstream: Arc::new(upstream),
            protection,
            max_msg_bytes,
            degraded,
        }))
}

/// `GET /call-echo`.
#[derive(Debug, Clone)]
struct CallEcho {
    /// service-a, with its connection pool.
    upstream: Arc<Upstream>,
    /// The bound on calls in flight and the breaker.
    protection: Arc<Protection>,
    /// Longest `msg` accepted, checked before any call.
    max_msg_bytes: usize,
    /// `service_b.degraded_responses`, by `error.type`.
    degraded: Counter<u64>,
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
        let result = match self.admit() {
            Ok((ticket, _slot)) => {
                let result = self.upstream.echo(&msg).await.map_err(Degradation::Failed);
                match &result {
                    Err(e) if e.counts_against_upstream() => ticket.failed(),
                    _ => ticket.succeeded(),
                }
                result
            }
            Err(refusal) => Err(refusal),
        };
        match result {
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
            Err(why) => {
                self.degraded
                    .add(1, &[KeyValue::new(ERROR_TYPE, why.kind())]);
                degrade(depot, res, &why);
            }
        }
    }
}

impl CallEcho {
    /// Whether a call may be made now: the breaker first (an open one costs
    /// nothing), then a slot among the calls in flight.
    fn admit(&self) -> Result<(Ticket<'_>, OwnedSemaphorePermit), Degradation> {
        let ticket = self
            .protection
            .breaker
            .admit()
            .map_err(|next_try| Degradation::CircuitOpen { next_try })?;
        let slot =
            self.protection
                .in_flight
                .try_enter()
                .ok_or_else(|| Degradation::Overloaded {
                    limit: self.protection.in_flight.limit(),
                })?;
        Ok((ticket, slot))
    }
}
