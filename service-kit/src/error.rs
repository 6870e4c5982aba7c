//! The JSON bodies of the caller's mistakes, rendered in one place.
//!
//! Every body either daemon sends is `application/json; charset=utf-8`; the
//! `error` field is the stable, machine-readable part, `message` is for people.

use salvo::http::StatusCode;
use salvo::http::header::{CONTENT_TYPE, HeaderValue};
use salvo::{Response, Scribe};
use serde::Serialize;

use crate::query::QueryError;

/// The content type of every body both daemons send.
pub const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// Writes `body` (already-serialised JSON) with `status`.
pub fn write_json(res: &mut Response, status: StatusCode, body: impl Into<bytes::Bytes>) {
    res.status_code(status);
    res.headers_mut().insert(CONTENT_TYPE, JSON_UTF8);
    // A body is only rejected by salvo when a streaming body is already set,
    // which never happens on these paths.
    let _ = res.write_body(body.into());
}

/// Serialises `value` and writes it with `status`.
pub fn write_json_value(res: &mut Response, status: StatusCode, value: &impl Serialize) {
    match serde_json::to_vec(value) {
        Ok(body) => write_json(res, status, body),
        // Only a type with a failing Serialize impl gets here; none of ours has one.
        Err(_) => write_json(
            res,
            StatusCode::INTERNAL_SERVER_ERROR,
            &br#"{"error":"internal"}"#[..],
        ),
    }
}

/// A request the daemons refuse, and why. The caller's mistakes only:
/// service-b's upstream failures are not errors of the request and have
/// their own body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The query is not valid percent-encoded UTF-8.
    BadRequest,
    /// `msg` is longer than the configured limit.
    MsgTooLong {
        /// Decoded length that was sent.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No endpoint at this path.
    NotFound,
    /// The path exists, but not for this method.
    MethodNotAllowed,
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest | Self::MsgTooLong { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The contract's stable `error` value.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::MsgTooLong { .. } => "msg_too_long",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadRequest => "the query is not valid percent-encoded UTF-8".to_owned(),
            Self::MsgTooLong { len, limit } => {
                format!("msg is {len} bytes after decoding; the limit is {limit}")
            }
            Self::NotFound => "no such endpoint".to_owned(),
            Self::MethodNotAllowed => "this endpoint only answers GET".to_owned(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Malformed => Self::BadRequest,
            QueryError::MsgTooLong { len, limit } => Self::MsgTooLong { len, limit },
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_bytes: Option<usize>,
}

impl Scribe for ApiError {
    fn render(self, res: &mut Response) {
        let limit_bytes = match self {
            Self::MsgTooLong { limit, .. } => Some(limit),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: &self.message(),
            limit_bytes,
        };
        write_json_value(res, self.status(), &body);
    }
}
