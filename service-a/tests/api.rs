//! service-a's contract, row by row, through salvo's in-process test client.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use salvo::Service;
use salvo::http::Method;
use serde_json::json;
use testkit::{form_encode, get_in_process as get, request_in_process};

fn app(max_msg_bytes: usize) -> Service {
    service_kit::service::<service_a::ServiceA>(service_a::router(max_msg_bytes))
}

#[tokio::test]
async fn health_is_ok() {
    let r = get(&app(4096), "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["service"], "service-a");
}

#[tokio::test]
async fn echo_returns_the_text_byte_for_byte() {
    let app = app(4096);
    for msg in [
        "hello",
        "a b",
        "a+b",
        "&#%=?/",
        "  leading and trailing  ",
        "line\nbreak\ttab\r\n",
        "<script>alert('x')</script>",
        "\"quotes\" and \\backslash\\",
        "żółć ✓ 日本語 🦀",
        "\u{0}\u{1f}",
    ] {
        let r = get(&app, &format!("/echo?msg={}", form_encode(msg))).await;
        assert_eq!(r.status, 200, "{msg:?}");
        assert_eq!(r.json, json!({ "echo": msg }), "{msg:?}");
    }
}

#[tokio::test]
async fn plus_is_a_space_and_percent_2b_a_plus() {
    let r = get(&app(4096), "/echo?msg=1+1%3D2%2B0").await;
    assert_eq!(r.json, json!({ "echo": "1 1=2+0" }));
}

#[tokio::test]
async fn missing_msg_echoes_empty() {
    for path in ["/echo", "/echo?", "/echo?other=1", "/echo?msg="] {
        let r = get(&app(4096), path).await;
        assert_eq!(
            (r.status, r.json.clone()),
            (200, json!({ "echo": "" })),
            "{path}"
        );
    }
}

#[tokio::test]
async fn msg_at_the_limit_passes_and_one_byte_more_is_400() {
    let app = app(4096);
    let at = "x".repeat(4096);
    assert_eq!(get(&app, &format!("/echo?msg={at}")).await.status, 200);
    let over = get(&app, &format!("/echo?msg={at}y")).await;
    assert_eq!(over.status, 400);
    assert_eq!(over.json["error"], "msg_too_long");
    assert_eq!(over.json["limit_bytes"], 4096);
}

#[tokio::test]
async fn limit_is_configurable_and_counts_decoded_bytes() {
    let app = app(4);
    // Four two-byte characters: 8 bytes, 24 characters on the wire.
    let r = get(&app, &format!("/echo?msg={}", form_encode("éé"))).await;
    assert_eq!(r.status, 200);
    let r = get(&app, &format!("/echo?msg={}", form_encode("ééé"))).await;
    assert_eq!(r.json["error"], "msg_too_long");
}

#[tokio::test]
async fn bad_encoding_is_400_bad_request() {
    for q in [
        "msg=%ff",
        "msg=%C3%28",
        "msg=%zz",
        "msg=abc%",
        "x=%ff&msg=ok",
    ] {
        let r = get(&app(4096), &format!("/echo?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json["error"], "bad_request", "{q}");
    }
}

#[tokio::test]
async fn unknown_path_is_json_404() {
    for path in ["/", "/nope", "/echo/extra", "/health/x"] {
        let r = get(&app(4096), path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json["error"], "not_found", "{path}");
        assert!(r.content_type.starts_with("application/json"), "{path}");
    }
}

#[tokio::test]
async fn other_methods_are_json_405_with_allow() {
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let r = request_in_process(&app(4096), method.clone(), "/echo?msg=x").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.json["error"], "method_not_allowed");
        assert_eq!(r.headers["allow"], "GET");
    }
}

#[tokio::test]
async fn every_answer_is_json_utf8_nosniff_no_store() {
    let app = app(4);
    for path in [
        "/health",
        "/echo?msg=a",
        "/echo?msg=toolong",
        "/echo?msg=%ff",
        "/x",
    ] {
        let r = get(&app, path).await;
        assert_eq!(r.content_type, "application/json; charset=utf-8", "{path}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
    }
}
