//! What both daemons promise as programs: `--help`, one-line errors with
//! exit status 2 for a bad setting and 1 for a failure at run time,
//! `--check-config`, and a clean exit on SIGTERM/SIGINT. Each function is
//! one test, run against one daemon's binary by [`crate::daemon_contract_tests`]
//! in that daemon's own tests, where cargo builds the binary first.

use std::time::Duration;

use crate::{Daemon, Sig};

const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Asserts `out` is one line on stderr with exit status `code`, containing
/// every needle, and no panic.
pub fn assert_one_line_error(out: &crate::Exited, code: i32, needles: &[&str], case: &str) {
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

/// What `d` prints on stdout with the one argument `arg` (`--help`,
/// `--version`), which must exit 0.
pub async fn run_alone(d: &Daemon, arg: &str) -> String {
    let out = d.proc().no_listen().arg(arg).run_to_exit(EXIT_WITHIN).await;
    assert_eq!(out.code, Some(0), "{} {arg}: {}", d.name, out.stderr);
    out.stdout
}

/// `--help` documents every shared flag with the daemon's variable and default.
pub async fn help_documents_every_flag_with_its_variable_and_default(d: &Daemon) {
    let help = run_alone(d, "--help").await;
    assert!(help.starts_with(d.about), "{} --help:\n{help}", d.name);
    let prefix = d.env_prefix;
    for expected in [
        "--listen".to_owned(),
        format!("[env: {prefix}_LISTEN=]"),
        format!("[default: 127.0.0.1:{}]", d.default_port),
        format!("[env: {prefix}_MAX_MSG_BYTES=]"),
        "[default: 4096]".to_owned(),
        format!("[env: {prefix}_SHUTDOWN_TIMEOUT=]"),
        "--check-config".to_owned(),
    ] {
        assert!(
            help.contains(&expected),
            "{} --help lacks {expected:?}:\n{help}",
            d.name
        );
    }
}

/// `--version` prints the name and version, exit 0.
pub async fn version_prints_and_exits_0(d: &Daemon) {
    let version = run_alone(d, "--version").await;
    assert!(version.starts_with(d.name), "{version}");
}

/// A bad shared setting, by flag or variable: one line naming both, exit 2.
pub async fn a_bad_setting_is_one_line_naming_flag_and_variable_and_exit_2(d: &Daemon) {
    let prefix = d.env_prefix;
    let listen_env = format!("{prefix}_LISTEN");
    let timeout_env = format!("{prefix}_SHUTDOWN_TIMEOUT");
    let limit_env = format!("{prefix}_MAX_MSG_BYTES");
    let header_env = format!("{prefix}_MAX_HEADER_BYTES");
    let cases: Vec<(crate::ProcBuilder, Vec<&str>)> = vec![
        (
            d.proc().no_listen().args(["--listen", "nonsense"]),
            vec!["--listen", &listen_env, "nonsense"],
        ),
        (
            d.proc().no_listen().env(&listen_env, "localhost:80"),
            vec!["--listen", &listen_env, "localhost:80"],
        ),
        (
            d.proc().args(["--shutdown-timeout", "0s"]),
            vec!["--shutdown-timeout", &timeout_env, "greater than zero"],
        ),
        (
            d.proc().env(&limit_env, "lots"),
            vec!["--max-msg-bytes", &limit_env, "lots"],
        ),
        (
            d.proc().args(["--max-header-bytes", "8192"]),
            vec![
                "--max-header-bytes",
                &header_env,
                "--max-msg-bytes",
                "13312",
            ],
        ),
        (
            d.proc().args(["--max-header-bytes", "4096"]),
            vec!["--max-header-bytes", &header_env, "8192"],
        ),
        (
            d.proc().args(["--max-connections", "0"]),
            vec!["--max-connections"],
        ),
    ];
    for (builder, needles) in cases {
        let case = format!("{} {builder:?}", d.name);
        let out = builder.run_to_exit(EXIT_WITHIN).await;
        assert_one_line_error(&out, 2, &needles, &case);
    }
}

/// The shared duration flags of `d`.
const DURATIONS: [&str; 3] = ["shutdown-timeout", "header-timeout", "idle-timeout"];

/// A duration past the bound would overflow `Instant + d` when it is used
/// (a panic at the first breaker trip or shutdown): refused at start, by
/// `--check-config` too, with the range in the message.
pub async fn an_absurd_duration_is_refused_at_start_naming_the_range(d: &Daemon) {
    for flag in DURATIONS {
        assert_absurd_duration_refused(d, flag).await;
    }
}

/// [`an_absurd_duration_is_refused_at_start_naming_the_range`] for one
/// duration flag (a daemon's own ones too).
pub async fn assert_absurd_duration_refused(d: &Daemon, flag: &str) {
    let env = format!("{}_{}", d.env_prefix, flag.to_uppercase().replace('-', "_"));
    let flag = format!("--{flag}");
    for check in [false, true] {
        let mut builder = d.proc().args([flag.as_str(), "500000000y"]);
        if check {
            builder = builder.arg("--check-config");
        }
        let out = builder.run_to_exit(EXIT_WITHIN).await;
        let case = format!("{} {flag} 500000000y (check-config: {check})", d.name);
        assert_one_line_error(&out, 2, &[&flag, &env, "500000000y", "at most 24h"], &case);
    }
    let by_env = d
        .proc()
        .env(&env, "25h")
        .arg("--check-config")
        .run_to_exit(EXIT_WITHIN)
        .await;
    assert_one_line_error(
        &by_env,
        2,
        &[&flag, &env, "at most 24h"],
        &format!("{env}=25h"),
    );
}

/// An unknown flag: one line naming it, exit 2.
pub async fn an_unknown_flag_is_one_line_and_exit_2(d: &Daemon) {
    let out = d.proc().arg("--frobnicate").run_to_exit(EXIT_WITHIN).await;
    assert_one_line_error(&out, 2, &["--frobnicate"], d.name);
}

/// A port in use is a failure at run time: one line, exit 1.
pub async fn a_port_in_use_is_one_line_and_exit_1(d: &Daemon) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = d
        .proc()
        .no_listen()
        .args(["--listen", &addr])
        .run_to_exit(EXIT_WITHIN)
        .await;
    let env = format!("{}_LISTEN", d.env_prefix);
    assert_one_line_error(&out, 1, &[&addr, "--listen", &env, "in use"], d.name);
}

/// `--check-config` validates and prints without binding.
pub async fn check_config_validates_without_listening(d: &Daemon) {
    // The port is taken: a daemon that tried to bind would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = d
        .proc()
        .no_listen()
        .args(["--listen", &addr, "--check-config"])
        .run_to_exit(EXIT_WITHIN)
        .await;
    assert_eq!(out.code, Some(0), "{}: {}", d.name, out.stderr);
    assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
    assert!(out.stdout.contains(&addr), "{}", out.stdout);

    let bad = d
        .proc()
        .args(["--check-config", "--shutdown-timeout", "soon"])
        .run_to_exit(EXIT_WITHIN)
        .await;
    assert_one_line_error(&bad, 2, &["--shutdown-timeout"], d.name);
}

/// SIGTERM and SIGINT: drain, `STOPPING=1`, exit 0.
pub async fn sigterm_and_sigint_stop_cleanly_with_status_0(d: &Daemon) {
    for signal in [Sig::SIGTERM, Sig::SIGINT] {
        let mut proc = d.proc().spawn().await;
        let health = crate::Client::new().get(&proc.url("/health")).await;
        assert_eq!(health.status, 200);
        proc.signal(signal);
        let status = proc.wait_exit(EXIT_WITHIN).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{} after {signal}: {}",
            d.name,
            proc.logs()
        );
        assert!(
            proc.logs().contains(&format!("{signal} received")),
            "{}",
            proc.logs()
        );
        let notes = proc.notifications().join("");
        assert!(notes.contains("STOPPING=1"), "{} sent {notes:?}", d.name);
    }
}

/// `deploy/default-<daemon>` lists every setting `--help` shows, with its default.
pub async fn the_shipped_settings_files_show_every_setting_with_its_default(d: &Daemon) {
    let help = run_alone(d, "--help").await;
    let path = format!(
        "{}/../deploy/default-{}",
        env!("CARGO_MANIFEST_DIR"),
        d.name
    );
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

/// The head of the answer to `request`, sent as is over a new connection.
async fn raw_head(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    // The server closes after answering (`Connection: close`, or an error).
    tokio::time::timeout(EXIT_WITHIN, read)
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase()
}

/// Every answer the service gives carries `X-Content-Type-Options: nosniff`
/// and `Cache-Control: no-store`, whoever decided it: a handler (200) or the
/// router (404, 405). The 431 for an oversized head is hyper's own (the
/// request never reaches the service, and hyper has no hook for it): a bare
/// status with an empty body, nothing to sniff, and nothing that makes it
/// cacheable (RFC 9111, 4.2.2).
pub async fn every_answer_carries_the_common_headers(d: &Daemon) {
    let proc = d.proc().spawn().await;
    let request = |line: &str, extra: &str| {
        format!("{line}\r\nHost: test\r\n{extra}Connection: close\r\n\r\n").into_bytes()
    };
    let cases = [
        ("200", request("GET /health HTTP/1.1", "")),
        ("404", request("GET /nowhere HTTP/1.1", "")),
        (
            "405",
            request("POST /health HTTP/1.1", "Content-Length: 0\r\n"),
        ),
    ];
    for (status, request) in cases {
        let head = raw_head(proc.addr, &request).await;
        assert!(
            head.starts_with(&format!("http/1.1 {status} ")),
            "{}: expected {status}:\n{head}",
            d.name
        );
        for header in ["x-content-type-options: nosniff", "cache-control: no-store"] {
            assert!(
                head.lines().any(|l| l == header),
                "{}: the {status} lacks {header:?}:\n{head}",
                d.name
            );
        }
    }
    let oversized = format!("X-Filler: {}\r\n", "x".repeat(20_000));
    let head = raw_head(proc.addr, &request("GET /health HTTP/1.1", &oversized)).await;
    assert!(head.starts_with("http/1.1 431 "), "{}:\n{head}", d.name);
    assert!(head.lines().any(|l| l == "content-length: 0"), "{head}");
    for freshness in ["cache-control:", "expires:", "last-modified:"] {
        assert!(
            !head.contains(freshness),
            "{}: {freshness} in\n{head}",
            d.name
        );
    }
}

/// One request on `conn` (kept alive), its answer read to the end: the status.
async fn exchange(conn: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the answer");
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if body.len() >= length {
                    return head.split(' ').nth(1).unwrap().parse().unwrap();
                }
            }
        }
    };
    tokio::time::timeout(EXIT_WITHIN, read).await.unwrap()
}

/// Waits for the server to close `conn`; how long that took.
async fn closed_after(conn: &mut tokio::net::TcpStream, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = async {
        if let Ok(n @ 1..) = conn.read(&mut buf).await {
            panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(within, closed)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"));
    start.elapsed()
}

/// An idle keep-alive connection stays open for `--idle-timeout` (however
/// short `--header-timeout` is) and is closed once it has passed; a request
/// begun on it and left unfinished is cut at the header timeout.
pub async fn an_idle_connection_lasts_the_idle_timeout_and_no_shorter(d: &Daemon) {
    let proc = d
        .proc()
        .args(["--header-timeout", "1s", "--idle-timeout", "3s"])
        .spawn()
        .await;
    let mut conn = tokio::net::TcpStream::connect(proc.addr).await.unwrap();
    assert_eq!(exchange(&mut conn).await, 200);
    // Idle for twice the header timeout: still open, and it serves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(exchange(&mut conn).await, 200, "{}", d.name);
    let idle = closed_after(&mut conn, Duration::from_secs(10)).await;
    assert!(
        (Duration::from_millis(2950)..Duration::from_secs(5)).contains(&idle),
        "{}: an idle connection was closed after {idle:?}; --idle-timeout is 3s",
        d.name
    );

    // The next request's head, begun and never finished: the header
    // timeout applies from its first byte, not the idle timeout.
    let mut conn = tokio::net::TcpStream::connect(proc.addr).await.unwrap();
    assert_eq!(exchange(&mut conn).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    use tokio::io::AsyncWriteExt;
    conn.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let cut = closed_after(&mut conn, Duration::from_secs(10)).await;
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(2900)).contains(&cut),
        "{}: an unfinished head was cut after {cut:?}; --header-timeout is 1s",
        d.name
    );
}

/// A SIGHUP that comes while the daemon starts (`systemctl reload` just
/// after `start`, or a script's `kill -HUP`) is handled, never fatal.
/// Nothing can catch a signal before the program's own code runs, so the
/// promise is that the handler comes first: before the daemon starts its
/// first thread, i.e. before anything that takes time (seen through strace,
/// which shows the order of system calls exactly). Then a daemon sent
/// SIGHUP every millisecond from then until `READY=1` becomes ready and
/// serves.
pub async fn a_sighup_while_starting_is_not_fatal(d: &Daemon) {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace");
    let trace_arg = trace.to_str().unwrap();
    let mut traced = d
        .proc()
        .via(&[
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=rt_sigaction,clone,clone3",
            "-o",
            trace_arg,
        ])
        .spawn()
        .await;
    // The daemon is strace's child: SIGTERM goes to it, and strace ends with it.
    let strace = traced.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children")).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    kill(Pid::from_raw(daemon), Sig::SIGTERM).unwrap();
    traced.wait_exit(EXIT_WITHIN).await;
    let calls = std::fs::read_to_string(&trace).unwrap();
    let handled = calls
        .lines()
        .position(|l| l.contains("rt_sigaction(SIGHUP, {sa_handler=0x"));
    let first_thread = calls.lines().position(|l| l.contains("clone"));
    assert!(
        matches!((handled, first_thread), (Some(h), Some(t)) if h < t),
        "{}: SIGHUP must be handled before the first thread starts:\n{calls}",
        d.name
    );

    for start in 0..4 {
        let mut proc = d.proc().spawn_unready();
        let pid = Pid::from_raw(proc.pid() as i32);
        crate::eventually("SIGHUP to be handled", EXIT_WITHIN, || {
            let handled = catches(pid.as_raw(), Sig::SIGHUP);
            async move { handled.then_some(()) }
        })
        .await;
        let mut sent = 0;
        while !proc.is_ready() {
            if let Some(status) = proc.exited() {
                panic!(
                    "{} (start {start}) ended ({status}) after {sent} SIGHUP while starting:\n{}",
                    d.name,
                    proc.logs()
                );
            }
            let _ = kill(pid, Sig::SIGHUP);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proc.wait_ready().await;
        let health = crate::Client::new().get(&proc.url("/health")).await;
        assert_eq!(health.status, 200, "{} after {sent} SIGHUP", d.name);
    }
}

/// Whether process `pid` has a handler for `signal` (`SigCgt` in its status).
fn catches(pid: i32, signal: Sig) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// A log reader that stalls (stderr piped into a paused `less`, a stuck
/// collector) never stalls the answers: past a bounded buffer, lines are
/// dropped and counted, and the count is logged once the reader is back.
/// 6000 access lines are far more than the pipe (64 KiB) and the buffer
/// (4096 lines) hold.
pub async fn a_stalled_log_reader_stalls_no_answer_and_drops_are_counted(d: &Daemon) {
    let mut proc = d.proc().stderr_paused().spawn().await;
    let client = crate::Client::new();
    let url = proc.url("/health");
    let answered = async {
        for _ in 0..6000 {
            assert_eq!(client.get(&url).await.status, 200);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), answered)
        .await
        .unwrap_or_else(|_| panic!("{}: answers stalled behind a stalled log reader", d.name));
    proc.resume_logs();
    let dropped = crate::eventually("the count of dropped log lines", EXIT_WITHIN, || {
        let logs = proc.logs();
        let count = logs.lines().rev().find_map(|l| {
            let (_, after) = l.split_once("dropped_lines=")?;
            after.split_whitespace().next()?.parse::<u64>().ok()
        });
        async move { count }
    })
    .await;
    assert!(
        (1..6000).contains(&dropped),
        "{}: {dropped} lines dropped",
        d.name
    );
    // The lines that were kept are whole, and the daemon logs on as usual.
    assert_eq!(client.get(&url).await.status, 200);
    proc.wait_for_log("GET /health 200", EXIT_WITHIN).await;
}

/// SIGTERM while clients keep connecting: every connection the daemon
/// accepted gets its request answered. One it never accepted is refused
/// or reset when the daemon exits (the client may try elsewhere); one
/// accepted and then closed without an answer (an end of file, no status
/// line) would be a request lost, which hyper's graceful shutdown does to
/// a connection it has not read from yet.
pub async fn a_stop_answers_every_connection_it_accepted(d: &Daemon) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut lost = Vec::new();
    let mut answered = 0;
    for round in 0..6 {
        let mut proc = d.proc().spawn().await;
        let addr = proc.addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut lost) = (0, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
                            break;
                        };
                        if conn
                            .write_all(
                                b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                            )
                            .await
                            .is_err()
                        {
                            break;
                        }
                        let mut answer = Vec::new();
                        match conn.read_to_end(&mut answer).await {
                            Ok(_) if answer.starts_with(b"HTTP/1.1 200") => ok += 1,
                            Ok(_) => lost.push(String::from_utf8_lossy(&answer).into_owned()),
                            Err(_) => break, // reset: never accepted
                        }
                    }
                    (ok, lost)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        proc.signal(Sig::SIGTERM);
        proc.wait_exit(EXIT_WITHIN).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in clients {
            let (ok, mut l) = client.await.unwrap();
            answered += ok;
            lost.extend(l.drain(..).map(|a| format!("round {round}: {a:?}")));
        }
    }
    assert!(answered > 100, "{}: only {answered} answered", d.name);
    assert!(
        lost.is_empty(),
        "{}: {} connections closed unanswered ({answered} answered): {lost:?}",
        d.name,
        lost.len()
    );
}

/// A request whose client gives up while the daemon cannot read (frozen,
/// busy): the request and the client's end of file wait together, and the
/// request is still recorded (the access line here; the span and duration
/// come with it), never dropped unseen. Kept-alive connections and fresh
/// ones alike.
pub async fn a_request_whose_client_left_while_the_daemon_was_frozen_is_recorded(d: &Daemon) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proc = d.proc().spawn().await;
    let request = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
    let rounds = 6;
    for round in 0..rounds {
        let mut conn = tokio::net::TcpStream::connect(proc.addr).await.unwrap();
        if round % 2 == 0 {
            // Kept alive: one answered request first.
            conn.write_all(request).await.unwrap();
            let mut buf = [0u8; 1024];
            assert!(conn.read(&mut buf).await.unwrap() > 0);
        }
        proc.signal(Sig::SIGSTOP);
        conn.write_all(request).await.unwrap();
        conn.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        proc.signal(Sig::SIGCONT);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(EXIT_WITHIN, conn.read_to_end(&mut rest)).await;
    }
    let expected = rounds + rounds / 2;
    crate::eventually(
        &format!("{expected} access lines for /health"),
        EXIT_WITHIN,
        || {
            let n = proc.logs().matches("GET /health ").count();
            async move { (n >= expected).then_some(()) }
        },
    )
    .await;
}
