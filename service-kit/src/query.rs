//! Decoding `msg` from a query string, the way browsers encode forms, strictly.
//!
//! Both daemons accept `?msg=TEXT` with `%XX` escapes and `+` for a space. A
//! query that is not valid percent-encoding or not UTF-8 once decoded is the
//! caller's mistake (400), never something to repair silently: a lossy
//! decoder would echo a different text from the one that was sent.

use std::borrow::Cow;

/// Why a query was refused. Both map to a 400 in [`crate::error::ApiError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    Malformed,
    /// `msg` decoded to more bytes than the configured limit.
    MsgTooLong {
        /// Decoded length of the `msg` that was sent.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
}

/// Returns the decoded value of the first `msg` pair (`""` when there is none),
/// after checking that every pair in the query decodes.
pub fn msg_from_query(query: Option<&str>, limit: usize) -> Result<String, QueryError> {
    let mut msg: Option<Cow<'_, str>> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)?;
        let value = decode_component(value)?;
        if msg.is_none() && name == "msg" {
            msg = Some(value);
        }
    }
    let msg = msg.unwrap_or_default();
    if msg.len() > limit {
        return Err(QueryError::MsgTooLong {
            len: msg.len(),
            limit,
        });
    }
    Ok(msg.into_owned())
}

/// Decodes one `application/x-www-form-urlencoded` component; borrows when
/// there is nothing to decode, which is the common case.
fn decode_component(raw: &str) -> Result<Cow<'_, str>, QueryError> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(QueryError::Malformed);
                };
                out.push(hi << 4 | lo);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::Malformed)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(q: &str) -> Result<String, QueryError> {
        msg_from_query(Some(q), 4096)
    }

    #[test]
    fn decodes_form_encoding() {
        assert_eq!(msg("msg=hello").unwrap(), "hello");
        assert_eq!(msg("msg=a+b").unwrap(), "a b");
        assert_eq!(msg("msg=a%2Bb").unwrap(), "a+b");
        assert_eq!(msg("msg=%26%23%25").unwrap(), "&#%");
        assert_eq!(msg("msg=%E2%9C%93%0A").unwrap(), "\u{2713}\n");
        assert_eq!(msg("msg=%20%20padded%20%20").unwrap(), "  padded  ");
    }

    #[test]
    fn missing_or_empty_msg_is_empty() {
        assert_eq!(msg_from_query(None, 10).unwrap(), "");
        assert_eq!(msg("").unwrap(), "");
        assert_eq!(msg("other=1").unwrap(), "");
        assert_eq!(msg("msg").unwrap(), "");
        assert_eq!(msg("msg=").unwrap(), "");
    }

    #[test]
    fn first_msg_wins_and_names_are_decoded() {
        assert_eq!(msg("x=1&msg=first&msg=second").unwrap(), "first");
        assert_eq!(msg("m%73g=encoded-name").unwrap(), "encoded-name");
        assert_eq!(msg("&&msg=a&&").unwrap(), "a");
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(msg("msg=a=b").unwrap(), "a=b");
    }

    #[test]
    fn rejects_bad_escapes_and_invalid_utf8_anywhere_in_the_query() {
        for q in [
            "msg=%",
            "msg=%4",
            "msg=%zz",
            "msg=%ff",
            "msg=%C3%28",
            "x=%ff&msg=ok",
        ] {
            assert_eq!(msg(q), Err(QueryError::Malformed), "{q}");
        }
    }

    #[test]
    fn limit_counts_decoded_bytes() {
        assert_eq!(msg_from_query(Some("msg=abcd"), 4).unwrap(), "abcd");
        assert_eq!(
            msg_from_query(Some("msg=abcde"), 4),
            Err(QueryError::MsgTooLong { len: 5, limit: 4 })
        );
        // Three escapes are one decoded byte each...
        assert_eq!(msg_from_query(Some("msg=%41%42%43"), 3).unwrap(), "ABC");
        // ...and a two-byte character counts as two.
        assert_eq!(
            msg_from_query(Some("msg=%C3%A9%C3%A9"), 3),
            Err(QueryError::MsgTooLong { len: 4, limit: 3 })
        );
    }
}
