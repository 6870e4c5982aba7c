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
