//! The classifier of service-a's answers: never panics, and only calls an
//! answer good when it is a JSON object with a string `echo`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_b::upstream::{ErrorKind, judge};

fuzz_target!(|input: (u16, Option<&str>, &[u8])| {
    let (status, content_type, body) = input;
    match judge(status, content_type, body) {
        Ok(()) => {
            assert!((200..300).contains(&status));
            let value: serde_json::Value =
                serde_json::from_slice(body).expect("judged good, so JSON");
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
