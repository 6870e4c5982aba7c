//! A stand-in collector for the end-to-end scripts (`deploy/tests/`): it
//! takes OTLP/HTTP protobuf (the daemons' one export format) on ADDR,
//! decodes it as the tests' receiver does, and prints one line for each
//! resource that exports to it, once: `<service.name> host.name=<value>`.
//! What an installed daemon says of its host is checked there, at the
//! wire, with no collector image to run.
//!
//!   otlp-sink 127.0.0.1:PORT
#![allow(clippy::unwrap_used, clippy::print_stdout)] // A tool for tests: its output is the point.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: otlp-sink ADDR");
        std::process::exit(2);
    });
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("otlp-sink: cannot listen on {addr}: {e}");
            std::process::exit(1);
        });
    let rx = testkit::OtlpReceiver::start_on(listener);
    let mut seen = BTreeSet::new();
    loop {
        let resources = rx
            .spans()
            .iter()
            .map(|s| {
                (
                    s.service(),
                    s.resource.get("host.name").map(testkit::Attr::as_string),
                )
            })
            .chain(rx.points().iter().map(|p| {
                (
                    p.service(),
                    p.resource.get("host.name").map(testkit::Attr::as_string),
                )
            }))
            .collect::<Vec<_>>();
        for (service, host) in resources {
            let line = format!("{service} host.name={}", host.unwrap_or_default());
            if seen.insert(line.clone()) {
                println!("{line}");
                std::io::stdout().flush().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
