//! The observability stack under a real Docker Engine, in the tests that
//! need a stack of their own (one at a time: each starts from `docker
//! compose down -v`): what only the engine shows (named volumes across
//! `down`/`up`, the restart policy, a daemon that was there first, a
//! checkout the images' users cannot read), the faults run (its 5 m rate
//! windows must hold its own traffic only), Debian 12's Compose 1.29 on the
//! shipped file, and the images against the upstream facts their
//! Dockerfiles cite.
//!
//! Runs only under `observability/with-engine.sh`, so it is `#[ignore]`d
//! for a bare `cargo test`; `./test.sh` runs it there.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use testkit::compose::{
    Compose, JAEGER, PROMETHEUS, SERVICES, docker, in_engine, output_text, try_docker, wait_ready,
};
use testkit::jaeger::{Jaeger, now_ms};
use testkit::{
    Client, Proc, ProcBuilder, Prometheus, eventually, form_encode, read_yaml, refused_addr,
    stack_dir,
};

/// A daemon at its telemetry defaults, but for `env`.
async fn daemon(name: &str, env: &[(&str, &str)]) -> Proc {
    let mut builder = ProcBuilder::new(name).default_telemetry();
    for (k, v) in env {
        builder = builder.env(*k, *v);
    }
    builder.spawn().await
}

/// Telemetry sent often, so that a test sees it within seconds: metrics
/// every second, spans batched for a fifth of a second.
const QUICK: [(&str, &str); 2] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "200"),
];

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// service-b at its telemetry defaults (quick), calling an address where
/// nothing listens, its breaker off: every answer is a 503
/// `connection_refused` whose trace the collector always keeps (an error),
/// and whose body names it.
async fn b_refused(extra: &[(&str, &str)]) -> Proc {
    let refused = format!("http://{}", refused_addr());
    let mut env = vec![
        QUICK[0],
        QUICK[1],
        ("SERVICE_A_URL", refused.as_str()),
        ("SERVICE_B_BREAKER_FAILURES", "0"),
    ];
    env.extend_from_slice(extra);
    daemon("service-b", &env).await
}

/// One call to a [`b_refused`]: its trace id.
async fn refused_trace(client: &Client, b: &Proc) -> String {
    let reply = client.get(&b.url("/call-echo?msg=probe")).await;
    assert_eq!(reply.json["error"], "connection_refused", "{}", reply.text);
    reply.json["trace_id"].as_str().unwrap().to_owned()
}

// --- What only the engine shows ---------------------------------------------

#[tokio::test]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_down_and_up_keeps_prometheus_data_and_down_v_drops_it() {
    let (_only, stack) = Compose::exclusive().await;
    let prometheus = Prometheus::at(PROMETHEUS);
    stack.up().await;
    // A series only this test makes: a service name of its own.
    let name = format!("lab-volume-{}", std::process::id());
    let b = b_refused(&[("OTEL_SERVICE_NAME", &name)]).await;
    let client = Client::new();
    refused_trace(&client, &b).await;
    let query = format!(
        r#"max_over_time(http_server_request_duration_seconds_count{{service_name="{name}"}}[1h])"#
    );
    prometheus
        .wait_for(&query, Duration::from_secs(30), |s| !s.is_empty())
        .await;
    drop(b);

    stack.down(false);
    let took = stack.up().await;
    let kept = prometheus.query(&query).await;
    assert!(
        !kept.is_empty(),
        "down + up lost Prometheus's data (the prometheus-data volume)"
    );

    stack.down(true);
    stack.up().await;
    let dropped = prometheus.query(&query).await;
    assert!(
        dropped.is_empty(),
        "down -v kept Prometheus's data: {dropped:?}"
    );
    println!("down + up ({took:?} to answer again): the series is still there; down -v + up: gone");
    stack.down(true);
}

// Two worker threads: the traffic's latencies must not count the test's own
// blocking calls to docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_collector_killed_mid_traffic_comes_back_and_telemetry_resumes_without_a_daemon_restart()
 {
    let (_only, stack) = Compose::exclusive().await;
    let jaeger = Jaeger::at(JAEGER);
    let prometheus = Prometheus::at(PROMETHEUS);
    stack.up().await;
    let a = daemon("service-a", &QUICK).await;
    let a_url = a.url("");
    let b = daemon(
        "service-b",
        &[QUICK[0], QUICK[1], ("SERVICE_A_URL", &a_url)],
    )
    .await;
    let b_probe = b_refused(&[]).await;
    let (pids, client) = ((a.pid(), b.pid(), b_probe.pid()), Client::new());

    // Traffic all along: every answer must stay the good one.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(steady_traffic(b.url(""), stop.clone()));
    let before = refused_trace(&client, &b_probe).await;
    eventually(
        "a trace before the kill",
        Duration::from_secs(30),
        || async { jaeger.has(&before).await.then_some(()) },
    )
    .await;

    let killed_at = Instant::now();
    let killed_epoch = epoch_secs();
    kill_collector(&stack);
    let back = collector_back(&stack, killed_at).await;
    // Each measured on its own, from the kill.
    let (traces, metrics) = tokio::join!(
        async {
            a_new_trace_arrives(&client, &jaeger, &b_probe).await;
            killed_at.elapsed()
        },
        metrics_resume(&prometheus, killed_epoch, killed_at),
    );

    stop.store(true, Ordering::Relaxed);
    let answers = traffic.await.unwrap();
    let bad: Vec<&(u16, Duration)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        bad.is_empty(),
        "answers other than 200 while the collector was away: {bad:?}"
    );
    // As before: nothing waits for telemetry (a request takes milliseconds
    // here; a second is service-b's whole deadline for service-a).
    let slowest = answers.iter().map(|(_, l)| *l).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?} while the collector was away"
    );
    assert_eq!((a.pid(), b.pid(), b_probe.pid()), pids);
    println!(
        "collector killed (SIGKILL): restarted by its policy, answering again after {back:?}; \
         traces in Jaeger again after {traces:?}, metrics in Prometheus after {metrics:?}; \
         service-b answered all {} requests meanwhile with 200 (slowest {slowest:?}), no daemon restarted",
        answers.len()
    );
    drop((a, b, b_probe));
    stack.down(true);
}

/// Calls service-b's /call-echo every 20 ms until `stop`: each answer's
/// status and latency.
async fn steady_traffic(base: String, stop: Arc<AtomicBool>) -> Vec<(u16, Duration)> {
    let client = Client::new();
    let mut answers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let reply = client.get(&format!("{base}/call-echo?msg=steady")).await;
        answers.push((reply.status, reply.latency));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answers
}

/// SIGKILL to the collector's process, as a crash or the OOM killer sends
/// it (`docker kill` would count as a stop by hand, which the restart policy
/// leaves stopped).
fn kill_collector(stack: &Compose) {
    let pid = stack.inspect("otel-collector", "{{.State.Pid}}");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Waits until the engine has restarted the collector and its receiver
/// answers; returns the time since the kill.
async fn collector_back(stack: &Compose, killed_at: Instant) -> Duration {
    eventually(
        "the collector restarted by its restart policy",
        Duration::from_secs(30),
        || async {
            let state = stack.inspect("otel-collector", "{{.RestartCount}} {{.State.Running}}");
            (state.split(' ').next().unwrap() != "0" && state.ends_with("true")).then_some(())
        },
    )
    .await;
    wait_ready(Duration::from_secs(30)).await;
    killed_at.elapsed()
}

/// Calls service-b (a [`b_refused`]: every trace kept) every quarter of a
/// second until one of those calls' traces is in Jaeger; returns its id.
async fn a_new_trace_arrives(client: &Client, jaeger: &Jaeger, b: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = Vec::new();
    loop {
        sent.push(refused_trace(client, b).await);
        // The collector decides 7 s after a trace's first span: the last
        // 10 s of calls.
        for id in sent.iter().rev().take(40) {
            if jaeger.has(id).await {
                return id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "none of {} traces in Jaeger within 60 s",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until Prometheus has a sample of service-b's exported after the
/// kill; returns the time since the kill.
async fn metrics_resume(
    prometheus: &Prometheus,
    killed_epoch: f64,
    killed_at: Instant,
) -> Duration {
    prometheus
        .wait_for(
            r#"max(timestamp(http_server_request_duration_seconds_count{service_name="service-b"}))"#,
            Duration::from_secs(60),
            |s| s.first().is_some_and(|s| s.value > killed_epoch + 1.0),
        )
        .await;
    killed_at.elapsed()
}

#[tokio::test]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_a_daemon_started_before_the_stack_shows_up_once_it_is_up() {
    let (_only, stack) = Compose::exclusive().await;
    let jaeger = Jaeger::at(JAEGER);
    let prometheus = Prometheus::at(PROMETHEUS);
    let client = Client::new();
    let b = b_refused(&[]).await;
    // The stack is down: exports fail, answers do not.
    let early = refused_trace(&client, &b).await;
    let pid = b.pid();

    let started = Instant::now();
    stack.up().await;
    let ((id, traced), metrics) = tokio::join!(
        async {
            let id = a_new_trace_arrives(&client, &jaeger, &b).await;
            (id, started.elapsed())
        },
        async {
            prometheus
                .wait_for(
                    r#"http_server_request_duration_seconds_count{service_name="service-b", http_route="/call-echo"}"#,
                    Duration::from_secs(60),
                    |s| !s.is_empty(),
                )
                .await;
            started.elapsed()
        },
    );
    assert_eq!(b.pid(), pid);
    println!(
        "service-b started before the stack (its first trace, {early}, sent to no one): after `up`, trace {id} \
         in Jaeger {traced:?} later, its metrics in Prometheus {metrics:?} later, without a restart"
    );
    drop(b);
    stack.down(true);
}

#[tokio::test]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_a_checkout_its_users_cannot_read_fails_as_the_readme_says_and_its_fix_works() {
    let (_only, shipped) = Compose::exclusive().await;
    drop(shipped);
    // observability/ as a checkout made under umask 077 leaves it: files
    // 0600, folders 0700, in a home folder 0700.
    let home = tempfile::tempdir().unwrap();
    let checkout = home.path().join("observability");
    copy_tree(&stack_dir(), &checkout, 0o600, 0o700);
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let stack = Compose::at(&checkout.join("compose.yaml"));
    stack.start();

    // Each image's user cannot read its mounted configuration: the
    // container exits and restarts, `permission denied` in its logs.
    let doc = std::fs::read_to_string(stack_dir().join("../docs/TELEMETRY.md")).unwrap();
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        doc.contains("`permission denied` in `docker compose logs`"),
        "docs/TELEMETRY.md no longer names the error"
    );
    for service in SERVICES {
        eventually(
            &format!("{service} to fail with permission denied and restart"),
            Duration::from_secs(30),
            || async {
                let restarts: u32 = stack.inspect(service, "{{.RestartCount}}").parse().unwrap();
                (restarts > 0 && stack.logs(service).contains("permission denied")).then_some(())
            },
        )
        .await;
        println!(
            "{service}: {}",
            stack
                .logs(service)
                .lines()
                .find(|l| l.contains("permission denied"))
                .unwrap()
        );
    }
    stack.down(true);

    // The README's fix: read access to the stack's files, and the parent
    // folder's x bit.
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&checkout)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let took = stack.up().await;
    for service in SERVICES {
        assert_eq!(
            stack.inspect(service, "{{.RestartCount}}"),
            "0",
            "{service}"
        );
    }
    println!("after chmod -R a+rX (and a+x on the parent): all three up in {took:?}, no restart");
    stack.down(true);
}

/// Copies the tree `from` to `to` (a new folder), files with mode `file`,
/// folders with mode `dir`.
fn copy_tree(from: &Path, to: &Path, file: u32, dir: u32) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, file, dir);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file)).unwrap();
        }
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(dir)).unwrap();
}

// --- Debian 12's Compose ------------------------------------------------------

#[tokio::test]
#[ignore = "needs Docker and Debian 12's docker-compose: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_runs_with_debian_12_docker_compose_1_29() {
    let (_only, _shipped) = Compose::exclusive().await;
    let version = std::process::Command::new("docker-compose")
        .arg("version")
        .arg("--short")
        .output()
        .unwrap_or_else(|e| panic!("docker-compose (Debian's package): {e}"));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert!(version.starts_with("1.29."), "docker-compose {version}");
    let file = stack_dir().join("compose.yaml");
    let v1 = |args: &[&str]| {
        let out = std::process::Command::new("docker-compose")
            .arg("-f")
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut up = vec!["up", "-d"];
    up.extend_from_slice(&SERVICES);
    let started = Instant::now();
    v1(&up);
    wait_ready(Duration::from_secs(60)).await;
    let took = started.elapsed();
    // Its project is the one `docker compose` makes (its containers, its
    // volume): the file's project name comes from observability/.env.
    let names = docker(&["ps", "--format", "{{.Names}}"]);
    for service in SERVICES {
        let name = format!("two-service-lab_{service}_1");
        assert!(names.lines().any(|n| n == name), "no {name} in {names}");
    }
    let volumes = docker(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(
        volumes
            .lines()
            .any(|v| v == "two-service-lab_prometheus-data"),
        "{volumes}"
    );
    v1(&["down", "-v"]);
    println!(
        "docker-compose {version}: up -d of the shipped file, all three answering in {took:?}; down -v"
    );
}

// --- The images ---------------------------------------------------------------

/// The image compose.yaml pins for the program built in
/// `observability/build/<dir>`.
fn pinned_image(dir: &str) -> String {
    let repository = match dir {
        "otelcol" => "otel/opentelemetry-collector-contrib",
        "jaeger" => "jaegertracing/jaeger",
        "prometheus" => "prom/prometheus",
        _ => panic!("no image for {dir}"),
    };
    let compose = read_yaml(&stack_dir().join("compose.yaml"));
    compose["services"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|s| s["image"].as_str())
        .find(|i| {
            i.strip_prefix(repository)
                .is_some_and(|t| t.starts_with(':'))
        })
        .unwrap_or_else(|| panic!("compose.yaml runs no {repository}"))
        .to_owned()
}

/// Every file of `image`: path -> "MODE UID GID" (`docker export` of a
/// container made from it, as tar lists it).
fn image_files(image: &str) -> std::collections::BTreeMap<String, String> {
    let id = docker(&["create", image]).trim().to_owned();
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "docker export \"$1\" | tar --numeric-owner -tvf -",
            "-",
            &id,
        ])
        .output()
        .unwrap();
    docker(&["rm", "-v", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // -rwxr-xr-x 0/0  123 2026-01-01 00:00 path (-> target)
            let fields: Vec<&str> = l.split_whitespace().collect();
            let (uid, gid) = fields.get(1)?.split_once('/')?;
            let path = format!("/{}", fields.get(5)?.trim_end_matches('/'));
            Some((path, format!("{} {uid} {gid}", fields[0])))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_images_match_the_upstream_facts_their_dockerfiles_cite() {
    in_engine();
    let mut checked = Vec::new();
    for dir in ["otelcol", "jaeger", "prometheus"] {
        let dockerfile = stack_dir().join("build").join(dir).join("Dockerfile");
        let text = std::fs::read_to_string(&dockerfile).unwrap();
        let image = pinned_image(dir);
        let inspect: Value = serde_json::from_str(&docker(&["image", "inspect", &image])).unwrap();
        let config = &inspect[0]["Config"];
        let files = image_files(&image);
        let facts: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# upstream: ")?.split_once(' '))
            .collect();
        assert!(facts.len() >= 7, "{}: {facts:?}", dockerfile.display());
        for (field, want) in &facts {
            let got = match *field {
                "Entrypoint" | "Cmd" | "Volumes" => config[*field].to_string(),
                "User" => config["User"].as_str().unwrap_or("").to_owned(),
                "WorkingDir" => config["WorkingDir"].to_string(),
                "ExposedPorts" => {
                    let ports: BTreeSet<&String> = config["ExposedPorts"]
                        .as_object()
                        .map(|p| p.keys().collect())
                        .unwrap_or_default();
                    serde_json::to_string(&ports).unwrap()
                }
                "Env" => {
                    let env = config["Env"].as_array().unwrap();
                    assert!(
                        env.iter().any(|e| e == want),
                        "{image}: Env {env:?} lacks {want}"
                    );
                    continue;
                }
                "file" => {
                    let (path, attributes) = want.split_once(' ').unwrap();
                    let got = files.get(path).map_or("(missing)", String::as_str);
                    assert_eq!(got, attributes, "{image}: file {path}");
                    continue;
                }
                other => panic!("{}: unknown fact {other}", dockerfile.display()),
            };
            assert_eq!(&got, want, "{image}: {field}");
        }
        runs_with_its_default_command(&image);
        checked.push(format!("{image}: {} facts", facts.len()));
    }
    println!("images as upstream: {checked:?}");
}

/// The image, run without a command as `docker run IMAGE` runs it, starts and
/// says it is ready.
fn runs_with_its_default_command(image: &str) {
    let id = docker(&["run", "-d", image]).trim().to_owned();
    let ready = [
        "Everything is ready",
        "Server is ready to receive web requests",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = output_text(&try_docker(&["logs", &id]));
        if ready.iter().any(|r| logs.contains(r)) || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &id]);
    docker(&["rm", "-f", "-v", &id]);
    assert!(
        running.trim() == "true" && ready.iter().any(|r| logs.contains(r)),
        "{image} with its default command: running={running}\n{logs}"
    );
}

// --- Faults on purpose ----------------------------------------------------------

/// How long one export may take to show: the 60 s interval, the collector's
/// batching, and a rule evaluation (15 s).
const EXPORT: Duration = Duration::from_secs(90);

const CALLS: &str = r#"sum(traces_span_metrics_calls_total{service_name="service-b", span_kind="SPAN_KIND_SERVER", span_name="GET /call-echo"})"#;

/// A stack of its own: the degraded share it checks is over a 5 m window
/// that other tests' traffic would share.
#[tokio::test]
#[ignore = "needs Docker: ./test.sh runs it under observability/with-engine.sh"]
async fn stack_faults_a_tenth_of_answers_failing_on_purpose_is_counted_traced_and_alerted() {
    let (_only, stack) = Compose::exclusive().await;
    stack.up().await;
    let jaeger = Jaeger::at(JAEGER);
    let prometheus = Prometheus::at(PROMETHEUS);
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("fault");
    std::fs::write(&fault, "status=500 ratio=0.1\n").unwrap();
    let a = daemon(
        "service-a",
        &[("SERVICE_A_FAULT_FILE", fault.to_str().unwrap())],
    )
    .await;
    let a_url = a.url("");
    // Every failure its own kind: no breaker.
    let b = daemon(
        "service-b",
        &[
            ("SERVICE_A_URL", &a_url),
            ("SERVICE_B_BREAKER_FAILURES", "0"),
        ],
    )
    .await;

    let calls_before = prelude_exported_once(&prometheus, &b).await;
    let traffic = a_minute_of_traffic(&b, &dir.path().join("traces")).await;
    let all_found = every_degraded_trace_in_jaeger(&jaeger, &traffic).await;
    let good_kept = good_traces_thinned(&jaeger, &traffic).await;
    let counted = span_metrics_count_every_request(&prometheus, calls_before, &traffic).await;
    let (ratio, alerts) = the_share_and_its_alert(&prometheus).await;
    let (exemplars, exemplar) = an_exemplar_opens_its_trace(&prometheus, &jaeger).await;
    println!(
        "status=500 ratio=0.1, traffic.py 20/s for 60 s: {} answers, {} degraded ({:.3}); \
         all {} degraded traces in Jaeger {:.1}s after the traffic; good traces kept {good_kept} of {}; \
         span metrics counted {counted}; service_b:degraded_ratio:rate5m {ratio:.3}; alerts {alerts:?}; \
         {exemplars} exemplar trace ids, {exemplar} found in Jaeger",
        traffic.answered,
        traffic.failed,
        traffic.failed as f64 / traffic.answered as f64,
        traffic.degraded.len(),
        all_found.as_secs_f64(),
        traffic.answered - traffic.failed,
    );
    drop((a, b));
    stack.down(true);
}

/// Prometheus sees a counter's increase only from its second sample on, and
/// a series exists from its first request: a prelude with a good and a
/// degraded answer, exported once, so that the minute of traffic is all
/// increase (as on a system that has been running). Returns the span
/// metrics' count of calls once the connector has flushed the prelude.
async fn prelude_exported_once(prometheus: &Prometheus, b: &Proc) -> f64 {
    let client = Client::new();
    let prelude = b.url("/call-echo?msg=prelude");
    let mut statuses = BTreeSet::new();
    while statuses.len() < 2 {
        statuses.insert(client.get(&prelude).await.status);
    }
    prometheus
        .wait_for(
            r#"http_server_request_duration_seconds_count{service_name="service-b", http_route="/call-echo", http_response_status_code="503"}"#,
            EXPORT,
            |s| !s.is_empty(),
        )
        .await;
    prometheus.wait_for(CALLS, EXPORT, |s| !s.is_empty()).await[0].value
}

/// What a minute of traffic did.
struct Traffic {
    answered: u64,
    failed: u64,
    /// The trace ids of the degraded answers.
    degraded: Vec<String>,
    ended: Instant,
}

/// A minute of steady traffic, as a user fills the dashboards.
async fn a_minute_of_traffic(b: &Proc, traces: &Path) -> Traffic {
    let summary = testkit::traffic(
        &b.url(""),
        &[
            "--rate",
            "20",
            "--duration",
            "60s",
            "--trace-ids",
            traces.to_str().unwrap(),
        ],
    )
    .await;
    let ended = Instant::now();
    let answered = summary["answered"].as_u64().unwrap();
    let failed = testkit::traffic_count(&summary, "upstream_status");
    assert_eq!(answered, 1200, "{summary}");
    assert_eq!(
        failed + testkit::traffic_count(&summary, "ok"),
        answered,
        "{summary}"
    );
    let degraded: Vec<String> = std::fs::read_to_string(traces)
        .unwrap()
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            assert_eq!(fields[0], "upstream_status", "{l}");
            assert_eq!(fields[2], "sampled", "{l}");
            fields[1].to_owned()
        })
        .collect();
    assert_eq!(degraded.len() as u64, failed);
    Traffic {
        answered,
        failed,
        degraded,
        ended,
    }
}

/// Every degraded answer's trace is in Jaeger within the 20 s the docs
/// tell users to wait, tail sampling on; returns when the last was found,
/// after the traffic.
async fn every_degraded_trace_in_jaeger(jaeger: &Jaeger, traffic: &Traffic) -> Duration {
    for trace_id in &traffic.degraded {
        let left = Duration::from_secs(20).saturating_sub(traffic.ended.elapsed());
        eventually(
            &format!("trace {trace_id} of a degraded answer in Jaeger"),
            left.max(Duration::from_millis(1)),
            || async { jaeger.has(trace_id).await.then_some(()) },
        )
        .await;
    }
    traffic.ended.elapsed()
}

/// Good traces thinned: the traffic's traces Jaeger kept, errors aside, are
/// about a tenth. Returns how many good ones it kept.
async fn good_traces_thinned(jaeger: &Jaeger, traffic: &Traffic) -> u64 {
    let kept = jaeger
        .search(
            "service-b",
            10,
            5000,
            &[
                ("operation", "GET /call-echo".to_owned()),
                (
                    "tags",
                    r#"{"user_agent.original":"lab-traffic/1 (synthetic)"}"#.to_owned(),
                ),
            ],
        )
        .await
        .len() as u64;
    let good_kept = kept.saturating_sub(traffic.failed);
    let good_sent = traffic.answered - traffic.failed;
    assert!(
        good_kept > 0 && (good_kept as f64) < 0.3 * good_sent as f64,
        "kept {good_kept} of {good_sent} good traces (a tenth expected)"
    );
    good_kept
}

/// Span metrics count every request, sampled or not; returns their count.
async fn span_metrics_count_every_request(
    prometheus: &Prometheus,
    calls_before: f64,
    traffic: &Traffic,
) -> f64 {
    let answered = traffic.answered as f64;
    prometheus
        .wait_for(CALLS, EXPORT, |s| {
            s.first()
                .is_some_and(|s| s.value - calls_before >= answered)
        })
        .await[0]
        .value
        - calls_before
}

/// Prometheus: the degraded share, and the alert it trips.
async fn the_share_and_its_alert(prometheus: &Prometheus) -> (f64, Vec<(String, String)>) {
    let ratio = prometheus
        .wait_for("service_b:degraded_ratio:rate5m", 3 * EXPORT, |s| {
            s.first().is_some_and(|s| (s.value - 0.10).abs() <= 0.03)
        })
        .await[0]
        .value;
    let alerts = prometheus
        .wait_for_alerts(&["ServiceBDegrading"], 2 * EXPORT)
        .await;
    (ratio, alerts)
}

/// An exemplar on an error series: its trace id opens a trace in Jaeger.
/// Returns how many exemplar trace ids there were, and the one opened.
async fn an_exemplar_opens_its_trace(prometheus: &Prometheus, jaeger: &Jaeger) -> (usize, String) {
    let exemplars = prometheus
        .api(&format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            form_encode(
                r#"traces_span_metrics_duration_milliseconds_bucket{service_name="service-b", status_code="STATUS_CODE_ERROR"}"#
            ),
            now_ms() / 1000 - 600,
            now_ms() / 1000 + 60,
        ))
        .await;
    let exemplar_ids: Vec<String> = exemplars["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().into_iter().flatten())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
        .collect();
    let exemplar = exemplar_ids
        .first()
        .unwrap_or_else(|| panic!("no exemplar with a trace_id: {exemplars}"))
        .clone();
    eventually(
        &format!("exemplar trace {exemplar} in Jaeger"),
        Duration::from_secs(30),
        || async { jaeger.has(&exemplar).await.then_some(()) },
    )
    .await;
    (exemplar_ids.len(), exemplar)
}
