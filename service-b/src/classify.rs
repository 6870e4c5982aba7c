//! What went wrong calling service-a, in the contract's words: the kinds of
//! failure, judging an answer (its head, then its body), and classifying a
//! transport error the way a reverse proxy would. Pure code, no I/O: the
//! production call ([`crate::upstream`]) and the fuzz target (`fuzz/`) judge
//! with the same two functions.

use std::error::Error;
use std::io;
use std::time::Duration;

use url::Url;

/// What went wrong calling service-a: the contract's `error` values for a
/// call that was made (service-b's own refusals are
/// [`crate::degraded::Degradation`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No complete answer within the deadline.
    Timeout,
    /// Nothing listens at service-a's address.
    ConnectionRefused,
    /// Any other transport failure: reset, unreachable, DNS, closed early.
    ConnectionFailed,
    /// service-a answered with a non-2xx status.
    UpstreamStatus,
    /// A 2xx whose body is not the expected JSON, or is too large, or a
    /// response that is not HTTP at all.
    InvalidResponse,
    /// A balancer in front of several service-a's found no replica that
    /// could take the call, and said so itself ([`crate::balancer`]).
    NoHealthyUpstream,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Timeout,
        Self::ConnectionRefused,
        Self::ConnectionFailed,
        Self::UpstreamStatus,
        Self::InvalidResponse,
        Self::NoHealthyUpstream,
    ];

    /// The contract's `error` value, and the CLIENT span's `error.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionFailed => "connection_failed",
            Self::UpstreamStatus => "upstream_status",
            Self::InvalidResponse => "invalid_response",
            Self::NoHealthyUpstream => "no_healthy_upstream",
        }
    }
}

/// A failed call to service-a.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// Which kind of failure.
    pub kind: ErrorKind,
    /// service-a's status, when it sent one.
    pub status: Option<u16>,
    /// A sentence for people: logs and the body's `message`.
    pub detail: String,
}

impl UpstreamError {
    /// A failure of `kind`, explained by `detail`, with no status.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            detail: detail.into(),
        }
    }

    /// An answer of `status` that is not the expected one.
    pub fn invalid(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status: Some(status),
            ..Self::new(ErrorKind::InvalidResponse, detail)
        }
    }
}

/// Judges the head of service-a's answer: good is a 2xx with an
/// `application/json` content type; else the contract's `upstream_status`
/// (a non-2xx) or `invalid_response`. Never panics (`fuzz/` checks that).
pub fn judge_head(status: u16, content_type: Option<&str>) -> Result<(), UpstreamError> {
    if !(200..300).contains(&status) {
        let shown = reqwest::StatusCode::from_u16(status)
            .map_or_else(|_| status.to_string(), |s| s.to_string());
        return Err(UpstreamError {
            status: Some(status),
            ..UpstreamError::new(
                ErrorKind::UpstreamStatus,
                format!("service-a answered {shown}"),
            )
        });
    }
    let content_type = content_type.unwrap_or("");
    if !is_json(content_type) {
        return Err(UpstreamError::invalid(
            status,
            format!("service-a answered {status} with content type {content_type:?}, not JSON"),
        ));
    }
    Ok(())
}

/// Judges the whole body of an answer whose head was good: one JSON object
/// with a string `echo`, valid UTF-8 and valid escapes throughout (it is
/// passed on as JSON text); else `invalid_response`. Never panics, whatever
/// the bytes (`fuzz/` checks that).
pub fn judge_body(status: u16, body: &[u8]) -> Result<(), UpstreamError> {
    check_echo_reply(body).map_err(|e| {
        UpstreamError::invalid(
            status,
            format!("service-a's body is not {{\"echo\": string}}: {e}"),
        )
    })
}

/// Checks that `body` is one JSON object with a string `echo`. serde would
/// also accept a struct written as an array, so the object is checked first.
fn check_echo_reply(body: &[u8]) -> Result<(), String> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a JSON object".to_owned());
    }
    // All of it: serde_json checks neither the UTF-8 nor the escapes (a lone
    // surrogate, `\udc00`) of strings it skips, and the body is passed on as
    // JSON text, so every string is decoded here.
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match value.get("echo") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err("echo is not a string".to_owned()),
        None => Err("missing field `echo`".to_owned()),
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// No complete answer within `deadline`.
pub fn timed_out(deadline: Duration) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::Timeout,
        format!(
            "service-a gave no complete answer within {}",
            humantime::format_duration(deadline)
        ),
    )
}

/// Sorts a failed exchange with service-a at `url` (called with `deadline`)
/// into the contract's kinds: nothing listening is `connection_refused`, an
/// answer that is not HTTP `invalid_response`, any other transport failure
/// `connection_failed`.
pub fn classify(e: &reqwest::Error, deadline: Duration, url: &Url) -> UpstreamError {
    if e.is_timeout() {
        return timed_out(deadline);
    }
    if is_caused_by::<io::Error>(e, |io| io.kind() == io::ErrorKind::ConnectionRefused) {
        return UpstreamError::new(
            ErrorKind::ConnectionRefused,
            format!("nothing listens at {}", authority(url)),
        );
    }
    // Any parse error: not HTTP at all, a bad status line, a head too large.
    if let Some(h) = cause_ref::<hyper::Error>(e, hyper::Error::is_parse) {
        return UpstreamError::new(
            ErrorKind::InvalidResponse,
            format!("service-a's answer is not valid HTTP: {h}"),
        );
    }
    UpstreamError::new(
        ErrorKind::ConnectionFailed,
        format!("calling service-a failed: {}", chain(e)),
    )
}

/// Whether `e` is a connection that closed before any answer came back: the
/// case in which a request on a kept-alive connection may go again. A
/// failure while connecting never is: that connection was new and carried
/// no request, whatever its cause says (a reset, say).
pub fn closed_before_answer(e: &reqwest::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    is_caused_by::<hyper::Error>(e, hyper::Error::is_incomplete_message)
        || is_caused_by::<io::Error>(e, |io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        })
}

/// The first error in `e`'s chain (`e`, then its sources) that is an `E`
/// for which `test` holds: linkerd's `cause_ref`, with a test.
fn cause_ref<'e, E: Error + 'static>(
    e: &'e (dyn Error + 'static),
    test: impl Fn(&E) -> bool,
) -> Option<&'e E> {
    causes(e).find_map(|err| err.downcast_ref::<E>().filter(|err| test(err)))
}

/// Whether an `E` for which `test` holds is in `e`'s chain.
fn is_caused_by<E: Error + 'static>(e: &(dyn Error + 'static), test: impl Fn(&E) -> bool) -> bool {
    cause_ref(e, test).is_some()
}

/// `e`, then its sources, outermost first.
fn causes<'e>(e: &'e (dyn Error + 'static)) -> impl Iterator<Item = &'e (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&err| err.source())
}

/// The error and its causes on one line: reqwest's own message is often
/// just "error sending request".
fn chain(e: &(dyn Error + 'static)) -> String {
    causes(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// `host:port` of `url`, the port spelled out even when it is the default.
fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What production and the fuzz target do: the head, then the body.
    fn judge(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), UpstreamError> {
        judge_head(status, content_type).and_then(|()| judge_body(status, body))
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(!is_json("text/html"));
        assert!(!is_json(""));
        assert!(!is_json("application/jsonp"));
    }

    #[test]
    fn echo_reply_shape() {
        let ok = |b: &str| check_echo_reply(b.as_bytes()).is_ok();
        assert!(ok(r#"{"echo":"x"}"#));
        assert!(ok(r#"{"echo":"a\"b\\c","extra":1}"#));
        assert!(!ok(r#"{"echo":1}"#));
        assert!(!ok(r#"{"other":"x"}"#));
        assert!(!ok(r#"["echo"]"#));
        assert!(ok(r#" {"echo":""} "#));
        assert!(!ok(r#"{"echo":"x"} trailing"#));
        assert!(!ok(""));
    }

    #[test]
    fn a_lone_surrogate_escape_anywhere_is_invalid() {
        // Found by fuzz/ (judge): the echo was fine, a skipped field held
        // "\uDE51", which no strict JSON parser turns into a string.
        for body in [r#"{"echo":"x","n":"\uDE51"}"#, r#"{"echo":"\ud800"}"#] {
            let e = judge(200, Some("application/json"), body.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidResponse, "{body}");
        }
        assert!(judge(200, Some("application/json"), br#"{"echo":"\ud83e\udd80"}"#).is_ok());
    }

    #[test]
    fn a_body_that_is_not_utf8_anywhere_is_invalid() {
        let mut body = br#"{"echo":"x","skipped":""#.to_vec();
        body.push(0xFF);
        body.extend_from_slice(br#""}"#);
        let e = judge(200, Some("application/json"), &body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
    }
}
