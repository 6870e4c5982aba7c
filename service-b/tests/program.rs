//! service-b as a program and under systemd's protocols: the checks both
//! daemons share (testkit's `program` and `systemd` modules), and those of
//! service-b's own settings, run against the binary cargo builds for these
//! tests from the current source.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use testkit::program::{assert_absurd_duration_refused, assert_one_line_error, run_alone};

const SERVICE_B: testkit::Daemon = testkit::Daemon {
    name: "service-b",
    bin: env!("CARGO_BIN_EXE_service-b"),
    env_prefix: "SERVICE_B",
    default_port: 8081,
    about: "The caller daemon",
};
const EXIT_WITHIN: Duration = Duration::from_secs(10);

testkit::daemon_contract_tests!(SERVICE_B);

#[tokio::test]
async fn help_documents_the_callers_own_settings() {
    let help = run_alone(&SERVICE_B, "--help").await;
    for expected in [
        "--service-a-url",
        "[env: SERVICE_A_URL=]",
        "[default: http://127.0.0.1:8080]",
        "--upstream-timeout",
        "[env: SERVICE_B_UPSTREAM_TIMEOUT=]",
        "[default: 1s]",
    ] {
        assert!(
            help.contains(expected),
            "service-b --help lacks {expected:?}:\n{help}"
        );
    }
}

#[tokio::test]
async fn the_ready_status_names_the_upstream_and_its_deadline() {
    let proc = SERVICE_B.proc().spawn().await;
    let status = testkit::systemd::last_status(&proc).unwrap();
    assert!(
        status.contains("upstream http://127.0.0.1:8080/echo, deadline 1s"),
        "{status}"
    );
}

#[tokio::test]
async fn service_b_checks_its_own_settings() {
    let cases = [
        ("--service-a-url", "https://127.0.0.1:8080", "SERVICE_A_URL"),
        ("--service-a-url", "127.0.0.1:8080", "SERVICE_A_URL"),
        ("--upstream-timeout", "fast", "SERVICE_B_UPSTREAM_TIMEOUT"),
        ("--upstream-timeout", "0ms", "SERVICE_B_UPSTREAM_TIMEOUT"),
        ("--max-in-flight", "0", "SERVICE_B_MAX_IN_FLIGHT"),
        ("--breaker-failures", "lots", "SERVICE_B_BREAKER_FAILURES"),
        ("--breaker-cooldown", "soon", "SERVICE_B_BREAKER_COOLDOWN"),
    ];
    for (flag, value, env) in cases {
        let by_flag = SERVICE_B
            .proc()
            .args([flag, value])
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&by_flag, 2, &[flag, env], &format!("{flag} {value}"));
        let by_env = SERVICE_B
            .proc()
            .env(env, value)
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&by_env, 2, &[flag, env], &format!("{env}={value}"));
    }
}

#[tokio::test]
async fn an_absurd_duration_of_its_own_is_refused_at_start_naming_the_range() {
    for flag in ["upstream-timeout", "breaker-cooldown"] {
        assert_absurd_duration_refused(&SERVICE_B, flag).await;
    }
}

/// journald drops a unit's lines past its rate limit (10 000 per 30 s), so
/// under the journal the requests that went well have no access line by
/// default, and the degraded and failed ones, which the contract promises
/// in the log, are not crowded out. `RUST_LOG=info` brings every line back.
#[tokio::test]
async fn under_the_journal_only_degraded_and_failed_requests_have_access_lines() {
    let upstream = format!("http://{}", testkit::refused_addr());
    for (rust_log, every_line) in [(None, false), (Some("info"), true)] {
        let mut builder = SERVICE_B
            .proc()
            .env_remove("RUST_LOG")
            .stderr_as_journal()
            .args(["--service-a-url", &upstream]);
        if let Some(filter) = rust_log {
            builder = builder.env("RUST_LOG", filter);
        }
        let proc = builder.spawn().await;
        let client = testkit::Client::new();
        assert_eq!(client.get(&proc.url("/health")).await.status, 200);
        assert_eq!(client.get(&proc.url("/nowhere")).await.status, 404);
        assert_eq!(client.get(&proc.url("/call-echo?msg=x")).await.status, 503);
        // Access lines are written in order, each before its answer is sent.
        proc.wait_for_log(
            "GET /call-echo 503 degraded: connection_refused",
            EXIT_WITHIN,
        )
        .await;
        let logs = proc.logs();
        for line in ["GET /health 200", "GET (none) 404"] {
            assert_eq!(
                logs.contains(line),
                every_line,
                "RUST_LOG={rust_log:?}: {line:?} in\n{logs}"
            );
        }
    }
}
