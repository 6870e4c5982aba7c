//! The observability stack as users run it: Docker Compose on the shipped
//! `observability/compose.yaml`, against the Docker Engine that
//! `observability/with-engine.sh` starts for the test run (it sets
//! `DOCKER_HOST` and `DOCKER_CONFIG`, builds the images and installs Compose
//! as a CLI plugin). [`Compose`] runs `docker compose` and `docker`, and
//! waits until the stack answers where the daemons send by default.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{eventually, stack_dir};

/// The services the tests run: every one of compose.yaml's but Grafana,
/// whose image cannot be built or pulled here (it is checked statically).
pub const SERVICES: [&str; 3] = ["otel-collector", "jaeger", "prometheus"];
/// Jaeger's UI and API, as compose.yaml publishes it.
pub const JAEGER: &str = "http://127.0.0.1:16686";
/// Prometheus's UI and API, as compose.yaml publishes it.
pub const PROMETHEUS: &str = "http://127.0.0.1:9090";
/// The collector's OTLP/HTTP receiver, where the daemons send by default.
pub const OTLP_HTTP: &str = "http://127.0.0.1:4318";

/// Panics unless the test runs under `observability/with-engine.sh`.
pub fn in_engine() {
    assert!(
        std::env::var_os("DOCKER_HOST").is_some() && std::env::var_os("DOCKER_CONFIG").is_some(),
        "run under observability/with-engine.sh (./test.sh does)"
    );
}

/// Runs `docker ARGS`; panics with its output if it fails.
pub fn docker(args: &[&str]) -> String {
    succeeded(&format!("docker {args:?}"), try_docker(args))
}

/// A command's standard output, once it has succeeded (else a panic that
/// shows `what` and its standard error).
fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A command's standard output and error, as a terminal shows them.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `docker ARGS` and returns what it did.
pub fn try_docker(args: &[&str]) -> Output {
    in_engine();
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker: {e}"))
}

/// One compose file's project: the shipped one, or a copy of it.
#[derive(Debug, Clone)]
pub struct Compose {
    file: PathBuf,
}

/// Held by a test that takes the stack down or up: one at a time per test
/// binary (each test has a runtime of its own: tokio's lock works across).
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Whether [`Compose::up_shared`] has started the stack in this process.
static SHARED: Mutex<bool> = Mutex::new(false);

impl Compose {
    /// The shipped `observability/compose.yaml`.
    pub fn shipped() -> Self {
        Self::at(&stack_dir().join("compose.yaml"))
    }

    /// The compose file at `file`.
    pub fn at(file: &Path) -> Self {
        Self {
            file: file.to_owned(),
        }
    }

    /// Runs `docker compose -f FILE ARGS` and returns what it did.
    pub fn try_run(&self, args: &[&str]) -> Output {
        let file = self.file.to_str().unwrap();
        let mut all = vec!["compose", "-f", file];
        all.extend_from_slice(args);
        try_docker(&all)
    }

    /// Runs `docker compose -f FILE ARGS`; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        succeeded(&format!("docker compose {args:?}"), self.try_run(args))
    }

    /// `docker compose up -d --pull never` of [`SERVICES`] (what a user runs,
    /// less Grafana); does not wait for them to answer.
    pub fn start(&self) {
        let mut args = vec!["up", "-d", "--pull", "never"];
        args.extend_from_slice(&SERVICES);
        self.run(&args);
    }

    /// [`Compose::start`], then waits until the stack answers on its
    /// published ports; returns how long that took.
    pub async fn up(&self) -> Duration {
        let started = Instant::now();
        self.start();
        wait_ready(Duration::from_secs(60)).await;
        started.elapsed()
    }

    /// `docker compose down`, with `-v` (named volumes too) if `volumes`.
    pub fn down(&self, volumes: bool) {
        if volumes {
            self.run(&["down", "-v"]);
        } else {
            self.run(&["down"]);
        }
    }

    /// A stack of its own for a test that changes it: waits for the other
    /// such tests of this binary, then starts from nothing (`down -v`,
    /// `up`). Hold the guard for the whole test.
    pub async fn exclusive() -> (tokio::sync::MutexGuard<'static, ()>, Self) {
        let guard = EXCLUSIVE.lock().await;
        *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = false;
        let stack = Self::shipped();
        stack.down(true);
        (guard, stack)
    }

    /// The stack the tests of this binary share: started from nothing
    /// (`down -v`, `up`) by the first that asks, then left up.
    pub async fn up_shared() -> Self {
        let stack = Self::shipped();
        {
            let mut started = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if !*started {
                stack.down(true);
                stack.start();
                *started = true;
            }
        }
        wait_ready(Duration::from_secs(60)).await;
        stack
    }

    /// The id of `service`'s container (empty if it has none).
    pub fn container(&self, service: &str) -> String {
        self.run(&["ps", "-a", "-q", service]).trim().to_owned()
    }

    /// `docker inspect -f FORMAT` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        assert!(!id.is_empty(), "{service} has no container");
        docker(&["inspect", "-f", format, &id]).trim().to_owned()
    }

    /// What `docker compose logs SERVICE` shows.
    pub fn logs(&self, service: &str) -> String {
        output_text(&self.try_run(&["logs", "--no-color", service]))
    }
}

/// Waits until the stack answers on its published ports: Prometheus ready,
/// Jaeger's API answering, the collector's OTLP/HTTP receiver listening (it
/// answers a GET with 405).
pub async fn wait_ready(timeout: Duration) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for (url, any_status) in [
        (format!("{PROMETHEUS}/-/ready"), false),
        (format!("{JAEGER}/api/services"), false),
        (format!("{OTLP_HTTP}/v1/traces"), true),
    ] {
        eventually(&format!("{url} to answer"), timeout, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(&url).send().await.ok()?;
                (any_status || response.status().is_success()).then_some(())
            }
        })
        .await;
    }
}
