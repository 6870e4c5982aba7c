//! The call to service-a on the wire: which answers are good, which
//! connections are kept for the next call, and when a call is sent twice.
//! `Upstream` in this process against fakes that count what they receive.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::{Duration, Instant};

use bytes::Bytes;
use service_b::classify::ErrorKind;
use service_b::upstream::Upstream;
use testkit::{Behaviour, FakeUpstream};

const DEADLINE: Duration = Duration::from_secs(1);

fn upstream(fake: &FakeUpstream) -> Upstream {
    Upstream::new(&fake.url().parse().unwrap(), DEADLINE, 4096).unwrap()
}

#[tokio::test]
async fn a_200_whose_body_is_not_utf8_is_invalid_even_in_a_field_nobody_reads() {
    let mut body = br#"{"echo":"x","z":""#.to_vec();
    body.push(0xFF);
    body.extend_from_slice(br#""}"#);
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let fake = FakeUpstream::start(Behaviour::Raw(Bytes::from(raw))).await;
    let e = upstream(&fake).echo("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e:?}");
}

#[tokio::test]
async fn small_error_bodies_are_read_so_the_connection_is_kept() {
    let answer = Behaviour::kept_alive(500, r#"{"error":"internal","message":"it broke"}"#);
    let fake = FakeUpstream::start(Behaviour::KeepAlive(vec![answer; 10])).await;
    let up = upstream(&fake);
    for _ in 0..10 {
        let e = up.echo("x").await.unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::UpstreamStatus, Some(500)));
    }
    assert_eq!(fake.requests().len(), 10);
    // Thrown away, each 500 would cost a connection. Kept, they serve the
    // next calls (the pool may open a spare one while a connection is on
    // its way back to it, so not exactly one).
    assert!(
        fake.connections() <= 3,
        "10 answers of 500 took {} connections",
        fake.connections()
    );
}

#[tokio::test]
async fn a_large_error_body_is_not_read_and_does_not_delay_the_answer() {
    let fake = FakeUpstream::start(Behaviour::Flood {
        head: Bytes::from_static(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
        chunk: Behaviour::chunk(&[b'x'; 4096]),
        total: None,
    })
    .await;
    let started = Instant::now();
    let e = upstream(&fake).echo("x").await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::UpstreamStatus, Some(503)));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_closed_on_a_fresh_connection_is_not_sent_again() {
    // service-a reads the request and closes: it may have crashed on this
    // very input, so sending it again could crash it again.
    let fake = FakeUpstream::start(Behaviour::KeepAlive(Vec::new())).await;
    let e = upstream(&fake).echo("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConnectionFailed, "{e:?}");
    assert_eq!(fake.requests().len(), 1, "sent again on a fresh connection");
}

#[tokio::test]
async fn a_kept_alive_connection_closed_under_a_request_is_sent_again_once() {
    // The first connection answers once, then closes under the next
    // request without answering; the second connection answers.
    let fake = FakeUpstream::start(Behaviour::restarting()).await;
    let up = upstream(&fake);
    up.echo("x").await.unwrap();
    up.echo("x").await.unwrap();
    assert_eq!(fake.requests().len(), 3, "one resend, and only one");
    assert_eq!(fake.connections(), 2);
}

/// The `Host` header service-a receives names it as the URL does: the host,
/// and the port unless it is the scheme's default (made once, not by hyper
/// per request; a virtual-hosting proxy in front of service-a routes on it).
#[tokio::test]
async fn the_host_header_names_service_a_as_its_url_does() {
    let fake = FakeUpstream::start(Behaviour::json(200, r#"{"echo":"x"}"#)).await;
    let port = fake
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    for base in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}/"),
    ] {
        let up = Upstream::new(&base.parse().unwrap(), DEADLINE, 4096).unwrap();
        up.echo("x").await.unwrap();
        let host = base.trim_start_matches("http://").trim_end_matches('/');
        let sent = fake.requests();
        assert_eq!(sent.last().unwrap().header("host"), Some(host), "{base}");
    }
}

/// A connector that fails every connect as a reset would, in reqwest's
/// own error type (a connect error whose cause is `ConnectionReset`).
#[derive(Clone)]
struct ResetWhileConnecting;

impl<S> tower_layer::Layer<S> for ResetWhileConnecting {
    type Service = FailConnect<S>;
    fn layer(&self, inner: S) -> FailConnect<S> {
        FailConnect(inner)
    }
}

#[derive(Clone)]
struct FailConnect<S>(S);

impl<S, R> tower_service::Service<R> for FailConnect<S>
where
    S: tower_service::Service<R>,
    S::Error: From<std::io::Error>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        Box::pin(async move { Err(reset.into()) })
    }
}

/// The one resend is for a kept-alive connection that service-a closed as
/// the request went out. A connection reset while it is being made carried
/// no request and is new: never a reason to send again, though its cause
/// reads like a closed connection's.
#[tokio::test]
async fn a_reset_while_connecting_is_never_a_reason_to_send_again() {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connector_layer(ResetWhileConnecting)
        .build()
        .unwrap();
    let e = client
        .get("http://127.0.0.1:9/echo")
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(
        !service_b::classify::closed_before_answer(&e),
        "a connect error counted as a closed connection: {e:?}"
    );
}

/// A kept-alive answer of `status` whose body is `body`, its length declared.
fn declared(status: u16, body: &[u8]) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A kept-alive answer of `status` whose body is `body`, sent in chunks of
/// `size` bytes and no declared length.
fn chunked(status: u16, body: &[u8], size: usize) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(size) {
        out.extend_from_slice(&Behaviour::chunk(piece));
    }
    out.extend_from_slice(b"0\r\n\r\n");
    Bytes::from(out)
}

/// `{"echo":"xxx..."}`, exactly `len` bytes long.
fn echo_of_length(len: usize) -> Vec<u8> {
    let frame = r#"{"echo":""}"#.len();
    format!(r#"{{"echo":"{}"}}"#, "x".repeat(len - frame)).into_bytes()
}

/// The largest body service-b takes from service-a is what an echo of the
/// longest `msg` can be, every byte JSON-escaped (6 each, plus 1 KiB), and
/// never less than 64 KiB: a body of exactly that size is an answer, one
/// byte more is `invalid_response`, declared or not.
#[tokio::test]
async fn the_body_size_cap_is_the_longest_echo_and_at_least_64_kib() {
    // (--max-msg-bytes, the cap it gives)
    for (max_msg, cap) in [(4096, 64 * 1024), (20_000, 20_000 * 6 + 1024)] {
        let body = echo_of_length(cap);
        let over = echo_of_length(cap + 1);
        for (answer, good) in [
            (declared(200, &body), true),
            (chunked(200, &body, 16 * 1024), true),
            (declared(200, &over), false),
            (chunked(200, &over, 16 * 1024), false),
        ] {
            let fake = FakeUpstream::start(Behaviour::KeepAlive(vec![answer])).await;
            let up = Upstream::new(&fake.url().parse().unwrap(), DEADLINE, max_msg).unwrap();
            match up.echo("x").await {
                Ok(echo) => assert!(good, "a body of {} bytes was taken", echo.len()),
                Err(e) => {
                    assert!(!good, "a body of {cap} bytes was refused: {e:?}");
                    assert_eq!(
                        (e.kind, e.status),
                        (ErrorKind::InvalidResponse, Some(200)),
                        "{e:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_any_body_arrives() {
    let fake = FakeUpstream::start(Behaviour::Trickle {
        head: Bytes::from_static(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n",
        ),
        chunk: Bytes::from_static(b" "),
        every: Duration::from_millis(10),
    })
    .await;
    let started = Instant::now();
    let e = upstream(&fake).echo("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e:?}");
    assert!(e.detail.contains("1000000 bytes"), "{e:?}");
    assert!(started.elapsed() < DEADLINE / 2, "{:?}", started.elapsed());
}

/// Error bodies up to 16 KiB are read to their end, so that the connection
/// serves the next call; a larger one is not read, and its connection is
/// closed instead.
#[tokio::test]
async fn error_bodies_are_drained_up_to_16_kib_and_no_further() {
    const CALLS: usize = 5;
    let limit = 16 * 1024;
    let at_limit = vec![b' '; limit];
    let over = vec![b' '; limit + 1];
    let large = vec![b' '; 40_000];
    for (what, answer, kept) in [
        ("declared, 16 KiB", declared(500, &at_limit), true),
        ("chunked, 16 KiB", chunked(500, &at_limit, 4000), true),
        ("declared, 16 KiB + 1", declared(500, &over), false),
        ("chunked, 40 000 bytes", chunked(500, &large, 4000), false),
    ] {
        let fake = FakeUpstream::start(Behaviour::KeepAlive(vec![answer; CALLS])).await;
        let up = upstream(&fake);
        for _ in 0..CALLS {
            let e = up.echo("x").await.unwrap_err();
            assert_eq!((e.kind, e.status), (ErrorKind::UpstreamStatus, Some(500)));
        }
        if kept {
            // (the pool may open a spare connection while one is on its
            // way back to it, so not exactly one)
            assert!(fake.connections() <= 3, "{what}: {}", fake.connections());
        } else {
            assert!(
                fake.connections() >= CALLS,
                "{what}: {}",
                fake.connections()
            );
        }
    }
}

/// At the bound itself, the end of the body is waited for (briefly): a
/// 16 KiB error body whose last chunk comes a moment later is still read to
/// its end, and its connection serves the next call.
#[tokio::test]
async fn an_error_body_of_exactly_16_kib_is_read_to_its_end_when_the_end_comes_later() {
    const CALLS: usize = 5;
    let answer = chunked(500, &vec![b' '; 16 * 1024], 4096);
    let end = answer.len() - b"0\r\n\r\n".len();
    let parts = vec![answer.slice(..end), answer.slice(end..)];
    let fake = FakeUpstream::start(Behaviour::KeepAliveInParts(vec![parts; CALLS])).await;
    let up = upstream(&fake);
    for _ in 0..CALLS {
        let e = up.echo("x").await.unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::UpstreamStatus, Some(500)));
    }
    assert!(fake.connections() <= 3, "{}", fake.connections());
}

/// A 2xx that is not the expected answer still carries service-a's status,
/// for the CLIENT span's and the duration metric's `http.response.status_code`.
#[tokio::test]
async fn an_invalid_answer_keeps_service_a_status() {
    for (answer, status) in [
        (declared(200, b"not json"), 200),
        (
            Bytes::from_static(
                b"HTTP/1.1 202 Accepted\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
            ),
            202,
        ),
    ] {
        let fake = FakeUpstream::start(Behaviour::KeepAlive(vec![answer])).await;
        let e = upstream(&fake).echo("x").await.unwrap_err();
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::InvalidResponse, Some(status)),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn an_answer_that_is_not_http_on_a_kept_alive_connection_is_not_sent_again() {
    // Only a connection closed before any answer may be tried again: here
    // service-a answered, with garbage.
    let good = Behaviour::kept_alive(200, r#"{"echo":"x"}"#);
    let garbage = Bytes::from_static(b"garbage, not HTTP at all\r\n\r\n");
    let fake = FakeUpstream::start(Behaviour::KeepAlive(vec![good, garbage])).await;
    let up = upstream(&fake);
    up.echo("x").await.unwrap();
    let e = up.echo("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e:?}");
    assert_eq!(fake.requests().len(), 2, "sent again after an answer");
}
