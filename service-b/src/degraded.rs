//! The degraded answer of `/call-echo`: why it is degraded (a failed call,
//! or one of service-b's own refusals), what that means for service-b (the
//! 503 body's `http_status`, whether it counts against service-a in the
//! breaker), and the answer itself: the contract's 503 body, the event on
//! the request's span, and what the access line says.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use salvo::http::StatusCode;
use salvo::{Depot, Response};
use serde::Serialize;
use service_kit::error::write_json_value;
use service_kit::observe::Degraded;

use crate::classify::{ErrorKind, UpstreamError};

/// Why an answer of `/call-echo` is degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degradation {
    /// The call to service-a failed.
    Failed(UpstreamError),
    /// Refused without calling: `limit` calls to service-a are in flight.
    Overloaded {
        /// The bound on calls in flight.
        limit: usize,
    },
    /// Refused without calling: the circuit breaker is open.
    CircuitOpen {
        /// Time left before the breaker lets a probe through.
        next_try: Duration,
    },
}

impl Degradation {
    /// Every `error` value a degraded answer may carry.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        ErrorKind::ALL
            .into_iter()
            .map(ErrorKind::as_str)
            .chain(["overloaded", "circuit_open"])
    }

    /// The contract's `error` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Failed(e) => e.kind.as_str(),
            Self::Overloaded { .. } => "overloaded",
            Self::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// The `http_status` of the degraded body: what a reverse proxy in
    /// service-b's place would have answered.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Failed(e) => match e.kind {
                ErrorKind::Timeout => 504,
                ErrorKind::UpstreamStatus => e.status.unwrap_or(502),
                ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionFailed
                | ErrorKind::InvalidResponse => 502,
                // What the balancer answered, as a proxy in its place would.
                ErrorKind::NoHealthyUpstream => 503,
            },
            Self::Overloaded { .. } | Self::CircuitOpen { .. } => 503,
        }
    }

    /// Whether this says service-a is unwell, as a proxy's outlier
    /// detection counts: a transport failure, a timeout, a 5xx, an invalid
    /// answer. A 4xx is the caller's doing (a msg over service-a's own
    /// limit, say): counting it would let one client open the breaker for
    /// everyone. A refusal made no call, so says nothing.
    pub fn counts_against_upstream(&self) -> bool {
        match self {
            Self::Failed(e) => match e.kind {
                ErrorKind::UpstreamStatus => e.status.is_none_or(|s| s >= 500),
                ErrorKind::Timeout
                | ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionFailed
                | ErrorKind::InvalidResponse => true,
                // Refused at once by the balancer, which called no replica:
                // its health checks already do the breaker's work, and an
                // open breaker would only hide this reason behind
                // circuit_open.
                ErrorKind::NoHealthyUpstream => false,
            },
            Self::Overloaded { .. } | Self::CircuitOpen { .. } => false,
        }
    }

    /// A sentence for people: the log and the body's `message`.
    fn detail(&self) -> Cow<'_, str> {
        match self {
            Self::Failed(e) => Cow::Borrowed(&e.detail),
            Self::Overloaded { limit } => {
                Cow::Owned(format!("{limit} calls to service-a already in flight"))
            }
            Self::CircuitOpen { next_try } => Cow::Owned(format!(
                "service-a kept failing; circuit breaker open, next try in {}",
                // To the millisecond: `4978ms`, `5s`.
                service_kit::cli::show_duration(Duration::from_millis(
                    u64::try_from(next_try.as_millis()).unwrap_or(u64::MAX)
                ))
            )),
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_sampled: Option<bool>,
    message: &'a str,
}

/// Answers 503 for `why`: the body, the event on the request's SERVER span,
/// and [`Degraded`] for the hoop's access line and span.
pub fn degrade(depot: &mut Depot, res: &mut Response, why: &Degradation) {
    let kind = why.kind();
    let http_status = why.http_status();
    let detail = why.detail();
    depot.insert_typed(Degraded {
        kind,
        status: http_status,
    });
    // The request's SERVER span: the event says why on the span itself.
    let cx = Context::current();
    let span = cx.span();
    span.add_event(
        "degraded",
        vec![
            KeyValue::new(ERROR_TYPE, kind),
            KeyValue::new("service_b.upstream_status", i64::from(http_status)),
            KeyValue::new("message", detail.clone().into_owned()),
        ],
    );
    let trace = span.span_context();
    let body = DegradedBody {
        service_b: "ok",
        service_a: "unavailable",
        error: kind,
        http_status,
        trace_id: trace.is_valid().then(|| trace.trace_id().to_string()),
        // With head sampling below 100 %, a trace id may name a trace that
        // was never exported: say which.
        trace_sampled: trace.is_valid().then(|| trace.is_sampled()),
        message: &detail,
    };
    write_json_value(res, StatusCode::SERVICE_UNAVAILABLE, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_per_kind() {
        let e = |kind, status| {
            Degradation::Failed(UpstreamError {
                kind,
                status,
                detail: String::new(),
            })
        };
        assert_eq!(e(ErrorKind::Timeout, None).http_status(), 504);
        assert_eq!(e(ErrorKind::ConnectionRefused, None).http_status(), 502);
        assert_eq!(e(ErrorKind::ConnectionFailed, None).http_status(), 502);
        assert_eq!(e(ErrorKind::InvalidResponse, Some(200)).http_status(), 502);
        assert_eq!(e(ErrorKind::UpstreamStatus, Some(500)).http_status(), 500);
        assert_eq!(e(ErrorKind::UpstreamStatus, Some(404)).http_status(), 404);
        assert_eq!(
            e(ErrorKind::NoHealthyUpstream, Some(503)).http_status(),
            503
        );
    }

    #[test]
    fn only_what_says_service_a_is_unwell_counts_against_it() {
        let failed = |kind, status| {
            Degradation::Failed(UpstreamError {
                kind,
                status,
                detail: String::new(),
            })
        };
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionFailed,
            ErrorKind::InvalidResponse,
        ] {
            assert!(failed(kind, None).counts_against_upstream(), "{kind:?}");
        }
        assert!(failed(ErrorKind::UpstreamStatus, None).counts_against_upstream());
        assert!(failed(ErrorKind::UpstreamStatus, Some(500)).counts_against_upstream());
        assert!(failed(ErrorKind::UpstreamStatus, Some(503)).counts_against_upstream());
        assert!(
            !failed(ErrorKind::UpstreamStatus, Some(499)).counts_against_upstream(),
            "a 4xx is the caller's doing"
        );
        assert!(!failed(ErrorKind::UpstreamStatus, Some(404)).counts_against_upstream());
        let refusals = [
            Degradation::Overloaded { limit: 3 },
            Degradation::CircuitOpen {
                next_try: Duration::from_millis(1500),
            },
        ];
        for refusal in &refusals {
            assert!(
                !refusal.counts_against_upstream(),
                "{refusal:?}: no call made"
            );
            assert_eq!(refusal.http_status(), 503, "{refusal:?}");
        }
        assert_eq!(refusals[0].kind(), "overloaded");
        assert_eq!(
            refusals[0].detail(),
            "3 calls to service-a already in flight"
        );
        assert_eq!(refusals[1].kind(), "circuit_open");
        assert_eq!(
            refusals[1].detail(),
            "service-a kept failing; circuit breaker open, next try in 1500ms"
        );
    }

    #[test]
    fn every_kind_is_named_once() {
        let kinds: Vec<_> = Degradation::kinds().collect();
        assert_eq!(
            kinds,
            [
                "timeout",
                "connection_refused",
                "connection_failed",
                "upstream_status",
                "invalid_response",
                "no_healthy_upstream",
                "overloaded",
                "circuit_open"
            ]
        );
    }
}
