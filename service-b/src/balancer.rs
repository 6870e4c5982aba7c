//! A balancer's own answers. Behind HAProxy (as `deploy/haproxy/` configures
//! it), service-b talks to the balancer, not to a replica: when no replica
//! can answer, the balancer answers itself — a 503, 504 or 502 that would
//! otherwise read as service-a's own status (`upstream_status`). The
//! balancer marks those answers with a `balancer-error` header naming the
//! failure in the contract's words; here it becomes the degraded answer's
//! kind, so a user still learns why.

use reqwest::header::{HeaderMap, HeaderName};

use crate::classify::{ErrorKind, UpstreamError};

/// The header a balancer puts on the answers it makes itself.
pub const BALANCER_ERROR: HeaderName = HeaderName::from_static("balancer-error");

/// The failure a balancer's own answer reports, if `headers` carry one of the
/// kinds a balancer can see: no replica could take the call, none answered
/// in time, or they closed the connection without a valid answer. A 2xx, another value, or no
/// header at all is not a balancer's failure: judged as service-a's answer.
pub fn verdict(status: u16, headers: &HeaderMap) -> Option<UpstreamError> {
    if (200..300).contains(&status) {
        return None;
    }
    let value = headers.get(BALANCER_ERROR)?.to_str().ok()?.trim();
    let (kind, why) = match value {
        "no_healthy_upstream" => (
            ErrorKind::NoHealthyUpstream,
            "no service-a replica could take the call",
        ),
        "timeout" => (ErrorKind::Timeout, "no service-a replica answered in time"),
        "connection_failed" => (
            ErrorKind::ConnectionFailed,
            "service-a replicas closed the connection without a valid answer",
        ),
        _ => return None,
    };
    Some(UpstreamError {
        status: Some(status),
        ..UpstreamError::new(
            kind,
            format!("the balancer in front of service-a answered {status}: {why}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::degraded::Degradation;
    use reqwest::header::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(BALANCER_ERROR, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn each_kind_a_balancer_names() {
        for (value, status, kind) in [
            ("no_healthy_upstream", 503, ErrorKind::NoHealthyUpstream),
            ("timeout", 504, ErrorKind::Timeout),
            ("connection_failed", 503, ErrorKind::ConnectionFailed),
            (" timeout ", 504, ErrorKind::Timeout),
        ] {
            let e = verdict(status, &headers(value)).unwrap();
            assert_eq!((e.kind, e.status), (kind, Some(status)), "{value}");
            assert!(
                e.detail
                    .contains(&format!("balancer in front of service-a answered {status}")),
                "{}",
                e.detail
            );
        }
    }

    #[test]
    fn only_no_healthy_upstream_leaves_the_breaker_alone() {
        // The balancer answered at once without calling a replica: an open
        // breaker would add nothing but hide why (circuit_open).
        let counts = |value| {
            Degradation::Failed(verdict(503, &headers(value)).unwrap()).counts_against_upstream()
        };
        assert!(!counts("no_healthy_upstream"));
        assert!(counts("timeout"));
        assert!(counts("connection_failed"));
    }

    #[test]
    fn no_header_or_another_value_is_not_a_balancer_answer() {
        assert!(verdict(503, &HeaderMap::new()).is_none());
        assert!(verdict(200, &headers("timeout")).is_none());
        for value in [
            "",
            "upstream_status",
            "circuit_open",
            "overloaded",
            "Timeout",
        ] {
            assert!(verdict(503, &headers(value)).is_none(), "{value:?}");
        }
    }
}
