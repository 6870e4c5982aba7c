//! What both daemons promise as programs: `--help`, one-line errors with
//! exit status 2 for a bad setting and 1 for a failure at run time,
//! `--check-config`, and a clean exit on SIGTERM/SIGINT. Every check runs
//! against both real binaries.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use testkit::{ProcBuilder, Sig};

const DAEMONS: [(&str, &str); 2] = [("service-a", "SERVICE_A"), ("service-b", "SERVICE_B")];
const EXIT_WITHIN: Duration = Duration::from_secs(10);

fn assert_one_line_error(out: &testkit::Exited, code: i32, needles: &[&str], case: &str) {
    assert_eq!(out.code, Some(code), "{case}: stderr: {}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{case}: expected one line, got:\n{}",
        out.stderr
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{case}: {needle:?} not in {:?}",
            lines[0]
        );
    }
    assert!(!out.stderr.contains("panicked"), "{case}: {}", out.stderr);
}

#[tokio::test]
async fn help_documents_every_flag_with_its_variable_and_default() {
    for (name, prefix) in DAEMONS {
        let out = ProcBuilder::new(name)
            .no_listen()
            .arg("--help")
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_eq!(out.code, Some(0), "{name}");
        let help = out.stdout;
        let (port, about) = if name == "service-a" {
            (8080, "The echo daemon")
        } else {
            (8081, "The caller daemon")
        };
        assert!(help.starts_with(about), "{name} --help:\n{help}");
        for expected in [
            "--listen".to_owned(),
            format!("[env: {prefix}_LISTEN=]"),
            format!("[default: 127.0.0.1:{port}]"),
            format!("[env: {prefix}_MAX_MSG_BYTES=]"),
            "[default: 4096]".to_owned(),
            format!("[env: {prefix}_SHUTDOWN_TIMEOUT=]"),
            "--check-config".to_owned(),
        ] {
            assert!(
                help.contains(&expected),
                "{name} --help lacks {expected:?}:\n{help}"
            );
        }
        if name == "service-b" {
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
    }
}

#[tokio::test]
async fn version_prints_and_exits_0() {
    for (name, _) in DAEMONS {
        let out = ProcBuilder::new(name)
            .no_listen()
            .arg("--version")
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_eq!(out.code, Some(0));
        assert!(out.stdout.starts_with(name), "{}", out.stdout);
    }
}

#[tokio::test]
async fn a_bad_setting_is_one_line_naming_flag_and_variable_and_exit_2() {
    for (name, prefix) in DAEMONS {
        let listen_env = format!("{prefix}_LISTEN");
        let timeout_env = format!("{prefix}_SHUTDOWN_TIMEOUT");
        let limit_env = format!("{prefix}_MAX_MSG_BYTES");
        let cases: Vec<(ProcBuilder, Vec<&str>)> = vec![
            (
                ProcBuilder::new(name)
                    .no_listen()
                    .args(["--listen", "nonsense"]),
                vec!["--listen", &listen_env, "nonsense"],
            ),
            (
                ProcBuilder::new(name)
                    .no_listen()
                    .env(&listen_env, "localhost:80"),
                vec!["--listen", &listen_env, "localhost:80"],
            ),
            (
                ProcBuilder::new(name).args(["--shutdown-timeout", "0s"]),
                vec!["--shutdown-timeout", &timeout_env, "greater than zero"],
            ),
            (
                ProcBuilder::new(name).env(&limit_env, "lots"),
                vec!["--max-msg-bytes", &limit_env, "lots"],
            ),
        ];
        let header_env = format!("{prefix}_MAX_HEADER_BYTES");
        let cases = cases
            .into_iter()
            .chain([
                (
                    ProcBuilder::new(name).args(["--max-header-bytes", "8192"]),
                    vec![
                        "--max-header-bytes",
                        &header_env,
                        "--max-msg-bytes",
                        "13312",
                    ],
                ),
                (
                    ProcBuilder::new(name).args(["--max-header-bytes", "4096"]),
                    vec!["--max-header-bytes", &header_env, "8192"],
                ),
                (
                    ProcBuilder::new(name).args(["--max-connections", "0"]),
                    vec!["--max-connections"],
                ),
            ])
            .collect::<Vec<_>>();
        for (builder, needles) in cases {
            let case = format!("{name} {builder:?}");
            let out = builder.run_to_exit(EXIT_WITHIN).await;
            assert_one_line_error(&out, 2, &needles, &case);
        }
    }
}

/// A duration past the bound would overflow `Instant + d` when it is used
/// (a panic at the first breaker trip or shutdown): refused at start, by
/// `--check-config` too, with the range in the message.
#[tokio::test]
async fn an_absurd_duration_is_refused_at_start_naming_the_range() {
    let mut cases = Vec::new();
    for (name, prefix) in DAEMONS {
        for flag in ["shutdown-timeout", "header-timeout", "idle-timeout"] {
            let env = format!("{prefix}_{}", flag.to_uppercase().replace('-', "_"));
            cases.push((name, format!("--{flag}"), env));
        }
    }
    for flag in ["upstream-timeout", "breaker-cooldown"] {
        let env = format!("SERVICE_B_{}", flag.to_uppercase().replace('-', "_"));
        cases.push(("service-b", format!("--{flag}"), env));
    }
    for (name, flag, env) in &cases {
        for check in [false, true] {
            let mut builder = ProcBuilder::new(name).args([flag.as_str(), "500000000y"]);
            if check {
                builder = builder.arg("--check-config");
            }
            let out = builder.run_to_exit(EXIT_WITHIN).await;
            let case = format!("{name} {flag} 500000000y (check-config: {check})");
            assert_one_line_error(&out, 2, &[flag, env, "500000000y", "at most 24h"], &case);
        }
        let by_env = ProcBuilder::new(name)
            .env(env, "25h")
            .arg("--check-config")
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(
            &by_env,
            2,
            &[flag, env, "at most 24h"],
            &format!("{env}=25h"),
        );
    }
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
        let by_flag = ProcBuilder::new("service-b")
            .args([flag, value])
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&by_flag, 2, &[flag, env], &format!("{flag} {value}"));
        let by_env = ProcBuilder::new("service-b")
            .env(env, value)
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&by_env, 2, &[flag, env], &format!("{env}={value}"));
    }
}

#[tokio::test]
async fn an_unknown_flag_is_one_line_and_exit_2() {
    for (name, _) in DAEMONS {
        let out = ProcBuilder::new(name)
            .arg("--frobnicate")
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&out, 2, &["--frobnicate"], name);
    }
}

#[tokio::test]
async fn a_port_in_use_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (name, prefix) in DAEMONS {
        let out = ProcBuilder::new(name)
            .no_listen()
            .args(["--listen", &addr])
            .run_to_exit(EXIT_WITHIN)
            .await;
        let env = format!("{prefix}_LISTEN");
        assert_one_line_error(&out, 1, &[&addr, "--listen", &env, "in use"], name);
    }
}

#[tokio::test]
async fn check_config_validates_without_listening() {
    // The port is taken: a daemon that tried to bind would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (name, _) in DAEMONS {
        let out = ProcBuilder::new(name)
            .no_listen()
            .args(["--listen", &addr, "--check-config"])
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
        assert!(out.stdout.contains(&addr), "{}", out.stdout);

        let bad = ProcBuilder::new(name)
            .args(["--check-config", "--shutdown-timeout", "soon"])
            .run_to_exit(EXIT_WITHIN)
            .await;
        assert_one_line_error(&bad, 2, &["--shutdown-timeout"], name);
    }
}

#[tokio::test]
async fn sigterm_and_sigint_stop_cleanly_with_status_0() {
    for (name, _) in DAEMONS {
        for signal in [Sig::SIGTERM, Sig::SIGINT] {
            let mut proc = ProcBuilder::new(name).spawn().await;
            let health = testkit::Client::new().get(&proc.url("/health")).await;
            assert_eq!(health.status, 200);
            proc.signal(signal);
            let status = proc.wait_exit(EXIT_WITHIN).await;
            assert_eq!(
                status.code(),
                Some(0),
                "{name} after {signal}: {}",
                proc.logs()
            );
            assert!(
                proc.logs().contains(&format!("{signal} received")),
                "{}",
                proc.logs()
            );
            let notes = proc.notifications().join("");
            assert!(notes.contains("STOPPING=1"), "{name} sent {notes:?}");
        }
    }
}

#[tokio::test]
async fn the_shipped_settings_files_show_every_setting_with_its_default() {
    for (name, _) in DAEMONS {
        let help = ProcBuilder::new(name)
            .no_listen()
            .arg("--help")
            .run_to_exit(EXIT_WITHIN)
            .await
            .stdout;
        let path = format!("{}/../deploy/default-{name}", env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::read_to_string(&path).unwrap();
        // `--flag <V>  Help [env: VAR=] [default: D]`
        for line in help.lines().filter(|l| l.contains("[env: ")) {
            let var = line
                .split("[env: ")
                .nth(1)
                .unwrap()
                .split('=')
                .next()
                .unwrap();
            let default = line
                .split("[default: ")
                .nth(1)
                .map(|d| d.trim_end_matches(']'));
            let expected = format!("#{var}={}", default.unwrap_or(""));
            assert!(
                file.lines().any(|l| l == expected),
                "{path} lacks the line {expected:?} (from --help: {line})"
            );
        }
    }
}

/// journald drops a unit's lines past its rate limit (10 000 per 30 s), so
/// under the journal the requests that went well have no access line by
/// default, and the degraded and failed ones, which the contract promises
/// in the log, are not crowded out. `RUST_LOG=info` brings every line back.
#[tokio::test]
async fn under_the_journal_only_degraded_and_failed_requests_have_access_lines() {
    let upstream = format!("http://{}", testkit::unused_addr());
    for (rust_log, every_line) in [(None, false), (Some("info"), true)] {
        let mut builder = ProcBuilder::new("service-b")
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
