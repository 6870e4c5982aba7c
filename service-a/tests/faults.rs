//! Faults injected on purpose, switched without a restart: edit the fault
//! file, send SIGHUP (what `systemctl reload service-a` does), and the new
//! fault is in force, announced to systemd with `RELOADING=1` then
//! `READY=1`; a bad file is refused and the fault in force stays.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::time::Duration;

use testkit::{
    Client, OtlpReceiver, Proc, ProcBuilder, SPAN_KIND_SERVER, STATUS_ERROR, Sig, eventually,
};

const WAIT: Duration = Duration::from_secs(10);

async fn fault_in_force(a: &Proc) -> String {
    let health = Client::new().get(&a.url("/health")).await;
    health.json["fault"].as_str().unwrap().to_owned()
}

async fn reload_until(a: &Proc, expected: &str) {
    a.signal(Sig::SIGHUP);
    eventually(&format!("fault {expected:?} in force"), WAIT, || async {
        (fault_in_force(a).await == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sighup_switches_the_fault_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    let mut a = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .env("SERVICE_A_FAULT_FILE", file.to_str().unwrap())
        .spawn()
        .await;
    assert_eq!(fault_in_force(&a).await, "off", "no file: no fault");
    let client = Client::new();
    let url = a.url("/echo?msg=hi");
    let echo = || client.get(&url);
    assert_eq!(echo().await.status, 200);

    std::fs::write(&file, "status=503\n").unwrap();
    reload_until(&a, "status=503").await;
    let r = echo().await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (503, Some("injected_fault"))
    );
    // systemd was told: a reload ran, then ready again with the new status.
    let notes = a.notifications().concat();
    let reloading = notes.find("RELOADING=1").expect("RELOADING=1 sent");
    assert!(notes[reloading..].contains("MONOTONIC_USEC="), "{notes}");
    let ready_again = notes[reloading..]
        .find("READY=1")
        .expect("READY=1 after the reload");
    assert!(
        notes[reloading + ready_again..].contains("fault status=503"),
        "{notes}"
    );

    // A bad fault is refused: the fault in force stays, and the log says why.
    std::fs::write(&file, "status=999\n").unwrap();
    a.signal(Sig::SIGHUP);
    a.wait_for_log("reload refused", WAIT).await;
    assert!(a.logs().contains("400 to 599"), "{}", a.logs());
    assert_eq!(fault_in_force(&a).await, "status=503");

    std::fs::write(&file, "off\n").unwrap();
    reload_until(&a, "off").await;
    assert_eq!(echo().await.status, 200);

    // Still the same process, and it stops as usual.
    a.signal(Sig::SIGTERM);
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(0));
}

/// What a trace view shows: each reload as a span of its own (applied, with
/// the fault now in force, or refused as an error), and a request that met
/// a fault marked with it.
#[tokio::test]
async fn reloads_and_injected_faults_show_in_the_traces() {
    let rx = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    let a = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .env("SERVICE_A_FAULT_FILE", file.to_str().unwrap())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn()
        .await;
    std::fs::write(&file, "status=503\n").unwrap();
    reload_until(&a, "status=503").await;
    assert_eq!(Client::new().get(&a.url("/echo?msg=hi")).await.status, 503);
    std::fs::write(&file, "status=999\n").unwrap();
    a.signal(Sig::SIGHUP);
    a.wait_for_log("reload refused", WAIT).await;

    let (applied, refused, request) = eventually("the reload and request spans", WAIT, || {
        let spans = rx.spans();
        let reload = |outcome: &str| {
            spans
                .iter()
                .find(|s| {
                    s.name == "reload" && s.attr("reload.outcome").as_deref() == Some(outcome)
                })
                .cloned()
        };
        let request = spans
            .iter()
            .find(|s| s.kind == SPAN_KIND_SERVER && s.name == "GET /echo")
            .cloned();
        let found = (|| Some((reload("applied")?, reload("refused")?, request?)))();
        async move { found }
    })
    .await;
    assert_eq!(applied.service(), "service-a");
    assert!(
        applied
            .attr("reload.settings")
            .is_some_and(|s| s.contains("fault status=503")),
        "{applied:#?}"
    );
    assert_ne!(applied.status_code, STATUS_ERROR);
    assert_eq!(refused.status_code, STATUS_ERROR, "{refused:#?}");
    assert_eq!(request.attr("service_a.fault").as_deref(), Some("status"));
    assert_eq!(
        request.attr("http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(request.status_code, STATUS_ERROR);
}

#[tokio::test]
async fn a_bad_fault_file_at_start_is_a_bad_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    std::fs::write(&file, "explode\n").unwrap();
    let out = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .env("SERVICE_A_FAULT_FILE", file.to_str().unwrap())
        .arg("--check-config")
        .run_to_exit(WAIT)
        .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("unknown fault"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// A stop with a request held by `hang`: the drain runs its course, and the
/// watchdog, whose self-check can no longer connect, stays quiet.
#[tokio::test]
async fn the_watchdog_keeps_quiet_while_a_hung_request_drains() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    std::fs::write(&file, "hang\n").unwrap();
    let a = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .env("SERVICE_A_FAULT_FILE", file.to_str().unwrap());
    testkit::systemd::the_watchdog_keeps_quiet_through_a_drain(a, "/echo?msg=held").await;
}

/// `systemctl reload service-a` runs `service-a --reload $MAINPID`: it
/// returns only once the new fault is in force, and a refused file makes it
/// exit 1 with the reason, so the failure shows at the prompt and not only
/// in the journal. Two reloads back to back each get their own answer.
#[tokio::test]
async fn the_reload_command_returns_once_the_fault_is_in_force_or_fails_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let runtime = runtime.to_str().unwrap().to_owned();
    let a = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .env("SERVICE_A_FAULT_FILE", file.to_str().unwrap())
        .env("RUNTIME_DIRECTORY", &runtime)
        .spawn()
        .await;
    let reload = || {
        ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
            .no_listen()
            .env("RUNTIME_DIRECTORY", &runtime)
            .args(["--reload", &a.pid().to_string()])
            .run_to_exit(WAIT)
    };
    for fault in ["status=503", "status=502", "delay=1500ms"] {
        std::fs::write(&file, format!("{fault}\n")).unwrap();
        let out = reload().await;
        assert_eq!(out.code, Some(0), "{fault}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("fault {fault}")),
            "{}",
            out.stdout
        );
        // In force when the command returned: no waiting.
        assert_eq!(fault_in_force(&a).await, fault);
    }
    std::fs::write(&file, "status=999\n").unwrap();
    let refused = reload().await;
    testkit::program::assert_one_line_error(&refused, 1, &["refused", "400 to 599"], "reload");
    assert_eq!(fault_in_force(&a).await, "delay=1500ms");

    // Without a runtime directory to answer through, it says what is missing.
    let lost = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .no_listen()
        .args(["--reload", &a.pid().to_string()])
        .run_to_exit(WAIT)
        .await;
    testkit::program::assert_one_line_error(&lost, 2, &["RUNTIME_DIRECTORY"], "no runtime dir");
    // Nor is a process that is not there signalled blindly.
    let gone = ProcBuilder::at(env!("CARGO_BIN_EXE_service-a"))
        .no_listen()
        .env("RUNTIME_DIRECTORY", &runtime)
        .args(["--reload", "999999999"])
        .run_to_exit(WAIT)
        .await;
    assert_eq!(gone.code, Some(1), "{}", gone.stderr);
}
