//! `msg` decoding: never panics on any query; and any text a client
//! form-encodes comes back out exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_kit::query::{QueryError, msg_from_query};

fuzz_target!(|data: &[u8]| {
    // Any bytes as a raw query (as far as they are a &str, which hyper's
    // URI guarantees).
    if let Ok(raw) = std::str::from_utf8(data) {
        match msg_from_query(Some(raw), 64) {
            Ok(msg) => assert!(msg.len() <= 64),
            Err(QueryError::MsgTooLong { len, limit }) => assert!(len > limit),
            Err(QueryError::Malformed) => {}
        }
        // Round trip: what a browser sends for `raw` decodes to `raw`.
        let encoded: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        let query = format!("msg={encoded}");
        assert_eq!(msg_from_query(Some(&query), usize::MAX).as_deref(), Ok(raw));
    }
});
