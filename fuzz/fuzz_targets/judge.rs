//! The classifier of service-a's answers, as service-b's call judges them
//! (`judge_head`, then `judge_body` when the head is good): never panics,
//! and only calls an answer good when it is valid UTF-8 JSON, an object with
//! a string `echo`.
//!
//! The input is `[status high byte, status low byte, content type, body...]`
//! so that the seeds in `fuzz/seeds/judge/` (a 200 with a JSON content type
//! and a JSON body) start the fuzzer on the path where good answers are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_b::classify::{ErrorKind, judge_body, judge_head};

const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let [high, low, pick, body @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*high, *low]);
    let content_type = CONTENT_TYPES[usize::from(*pick) % CONTENT_TYPES.len()];
    match judge_head(status, content_type).and_then(|()| judge_body(status, body)) {
        Ok(()) => {
            assert!((200..300).contains(&status));
            assert!(content_type.is_some_and(|t| t.starts_with("application/json")));
            // What service-b passes on as JSON text must parse as JSON,
            // every string in it included.
            let value: serde_json::Value =
                serde_json::from_slice(body).expect("judged good, so valid UTF-8 JSON");
            assert!(
                value["echo"].is_string(),
                "judged good without a string echo: {value}"
            );
        }
        Err(e) => {
            assert!(matches!(
                e.kind,
                ErrorKind::UpstreamStatus | ErrorKind::InvalidResponse
            ));
            assert_eq!(
                e.kind == ErrorKind::UpstreamStatus,
                !(200..300).contains(&status)
            );
            assert!(!e.detail.is_empty());
        }
    }
});
