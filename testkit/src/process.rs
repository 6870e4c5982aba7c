//! A daemon as a real process: started on port 0 with a clean environment,
//! ready when it sends `READY=1` to the notify socket this harness owns.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixDatagram;
use tokio::net::unix::pipe::Receiver;
use tokio::process::{Child, Command};

use crate::eventually;

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct ProcBuilder {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    listen: bool,
    notify: NotifyForm,
    journal_stderr: bool,
    stderr_paused: bool,
}

/// Where the harness's notify socket lives, in the two forms sd_notify(3)
/// names in `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyForm {
    /// A socket file: `NOTIFY_SOCKET=/path/notify.sock`.
    Path,
    /// Linux's abstract namespace: `NOTIFY_SOCKET=@name`, no file.
    Abstract,
}

/// What a process printed and how it ended.
#[derive(Debug)]
pub struct Exited {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl ProcBuilder {
    /// The workspace binary `name`, told to listen on `127.0.0.1:0`, with
    /// telemetry on and exporting to a collector that is not there: nothing
    /// listens at its address, or, with `TESTKIT_OTLP=blackhole` in the
    /// test's environment, it accepts and never answers. Either way the
    /// daemons must behave exactly as the contract says. Tests that check
    /// telemetry point `OTEL_EXPORTER_OTLP_ENDPOINT` at a receiver instead.
    pub fn new(name: &str) -> Self {
        Self::at(crate::bin(name))
    }

    /// As [`ProcBuilder::new`], for the binary at `bin`
    /// (`env!("CARGO_BIN_EXE_service-a")`).
    pub fn at(bin: impl Into<PathBuf>) -> Self {
        let collector = match std::env::var("TESTKIT_OTLP").as_deref() {
            Ok("blackhole") => crate::black_hole(),
            _ => crate::refused_addr(),
        };
        Self {
            bin: bin.into(),
            args: Vec::new(),
            envs: vec![
                ("RUST_LOG".into(), "info".into()),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("http://{collector}"),
                ),
            ],
            listen: true,
            notify: NotifyForm::Path,
            journal_stderr: false,
            stderr_paused: false,
        }
    }

    /// Tells the daemon its stderr is the journal, as systemd does
    /// (`JOURNAL_STREAM` names the stream). With no journald on this
    /// machine the daemon still writes text there, by the journal's policy.
    pub fn stderr_as_journal(mut self) -> Self {
        self.journal_stderr = true;
        self
    }

    /// Connects stderr to a pipe that nobody reads until
    /// [`Proc::resume_logs`]: a log reader that stalls (`| less`, paused).
    pub fn stderr_paused(mut self) -> Self {
        self.stderr_paused = true;
        self
    }

    /// Which form of notify socket to offer (a path unless told).
    pub fn notify_socket(mut self, form: NotifyForm) -> Self {
        self.notify = form;
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the environment starts empty).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Leaves an environment variable unset (one [`ProcBuilder::new`] sets).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self
    }

    /// Telemetry at the daemons' defaults: no `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// so they export to `http://localhost:4318` (the observability stack's
    /// published port, under `observability/with-engine.sh`).
    pub fn default_telemetry(mut self) -> Self {
        self.envs
            .retain(|(k, _)| k != "OTEL_EXPORTER_OTLP_ENDPOINT");
        self
    }

    /// Do not add `--listen 127.0.0.1:0` (the test sets the address itself).
    pub fn no_listen(mut self) -> Self {
        self.listen = false;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        if self.listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.args)
            .env_clear()
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion (for command-line checks), killing it after `timeout`.
    pub async fn run_to_exit(self, timeout: Duration) -> Exited {
        let child = self.command().spawn().unwrap();
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.bin.display()))
            .unwrap();
        Exited {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the daemon and waits (up to 10 s) until it is ready.
    pub async fn spawn(self) -> Proc {
        let mut proc = self.spawn_unready();
        proc.wait_ready().await;
        proc
    }

    /// Starts the daemon without waiting for `READY=1` (socket activation:
    /// it only starts once a client connects).
    pub fn spawn_unready(self) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let (socket, name) = match self.notify {
            NotifyForm::Path => {
                let path = dir.path().join("notify.sock");
                (UnixDatagram::bind(&path).unwrap(), path.into_os_string())
            }
            NotifyForm::Abstract => abstract_socket(),
        };
        let mut cmd = self.command();
        cmd.env("NOTIFY_SOCKET", name);
        let output = Arc::new(Mutex::new(String::new()));
        let mut paused = None;
        let mut readers = Vec::new();
        let child = if self.stderr_paused {
            let (reader, writer) = std::io::pipe().unwrap();
            cmd.stderr(writer);
            paused = Some(std::os::fd::OwnedFd::from(reader));
            cmd.spawn().unwrap()
        } else if self.journal_stderr {
            let (reader, writer) = std::io::pipe().unwrap();
            let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
            let meta = writer.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
                .stderr(writer);
            let reader = std::os::fd::OwnedFd::from(reader);
            readers.push(collect(
                Receiver::from_owned_fd(reader).unwrap(),
                output.clone(),
            ));
            cmd.spawn().unwrap()
        } else {
            let mut child = cmd.spawn().unwrap();
            readers.push(collect(child.stderr.take().unwrap(), output.clone()));
            child
        };
        let mut child = child;
        readers.push(collect(child.stdout.take().unwrap(), output.clone()));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        let (exited, mut has_exited) = tokio::sync::oneshot::channel::<()>();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let keep = |n: usize, buf: &[u8]| {
                let note = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), note));
            };
            loop {
                tokio::select! {
                    biased;
                    received = socket.recv(&mut buf) => match received {
                        Ok(n) => keep(n, &buf),
                        Err(_) => return,
                    },
                    // What it sent before it exited is queued: read it all.
                    _ = &mut has_exited => {
                        while let Ok(n) = socket.try_recv(&mut buf) {
                            keep(n, &buf);
                        }
                        return;
                    }
                }
            }
        }));
        Proc {
            child,
            name: self.bin.display().to_string(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            output,
            notes,
            paused,
            readers,
            exited: Some(exited),
            _dir: dir,
        }
    }

    /// Runs the daemon under `wrapper` (a program and its arguments that end
    /// by running the daemon, such as `systemd-socket-activate -l ADDR`).
    pub fn via(mut self, wrapper: &[&str]) -> Self {
        let mut args: Vec<String> = wrapper[1..].iter().map(|s| (*s).to_owned()).collect();
        args.push(self.bin.display().to_string());
        if std::mem::take(&mut self.listen) {
            args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.append(&mut self.args);
        self.args = args;
        self.bin = PathBuf::from(wrapper[0]);
        self
    }
}

/// A notify socket in the abstract namespace, named uniquely, and its
/// `NOTIFY_SOCKET` value (`@name`).
fn abstract_socket() -> (UnixDatagram, std::ffi::OsString) {
    use std::os::linux::net::SocketAddrExt;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "testkit-notify-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    socket.set_nonblocking(true).unwrap();
    (
        UnixDatagram::from_std(socket).unwrap(),
        format!("@{name}").into(),
    )
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    })
}

/// A running daemon. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// The program, for messages.
    name: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
    /// Each datagram on the notify socket, with when it arrived.
    notes: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The read end of a stderr nobody reads yet ([`ProcBuilder::stderr_paused`]).
    paused: Option<std::os::fd::OwnedFd>,
    /// The tasks that read its output and its notifications: done once it
    /// has exited and they have read everything it wrote.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the notifications' reader that the process has exited.
    exited: Option<tokio::sync::oneshot::Sender<()>>,
    /// Holds the notify socket's directory for the process's lifetime.
    _dir: tempfile::TempDir,
}

impl Proc {
    /// `http://ADDR/path`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Everything it wrote on stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Starts reading a paused stderr: what it wrote shows in [`Proc::logs`].
    pub fn resume_logs(&mut self) {
        if let Some(reader) = self.paused.take() {
            self.readers.push(collect(
                Receiver::from_owned_fd(reader).unwrap(),
                self.output.clone(),
            ));
        }
    }

    /// Every datagram it sent to the notify socket so far.
    pub fn notifications(&self) -> Vec<String> {
        let notes = self.notes.lock().unwrap();
        notes.iter().map(|(_, note)| note.clone()).collect()
    }

    /// When each notification containing the line `line` arrived.
    pub fn notification_times(&self, line: &str) -> Vec<Instant> {
        let notes = self.notes.lock().unwrap();
        notes
            .iter()
            .filter(|(_, n)| n.lines().any(|l| l == line))
            .map(|(at, _)| *at)
            .collect()
    }

    /// Plays systemd's watchdog timer: waits until `timeout` has passed
    /// with no `WATCHDOG=1` (counted from the last one, or from now if none
    /// came yet), which is when systemd would kill the daemon. Panics if
    /// keep-alives keep coming for `within`.
    pub async fn wait_watchdog_expiry(&self, timeout: Duration, within: Duration) {
        let start = Instant::now();
        eventually(
            &format!("{} to miss its watchdog ({timeout:?})", self.name),
            within,
            || {
                let last = self
                    .notes
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|(_, n)| n.lines().any(|l| l == "WATCHDOG=1"))
                    .map_or(start, |(at, _)| (*at).max(start));
                async move { (last.elapsed() >= timeout).then_some(()) }
            },
        )
        .await;
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Waits (up to 10 s) for `READY=1`, and learns the address from `STATUS=`.
    pub async fn wait_ready(&mut self) {
        let name = self.name.clone();
        let addr = eventually(
            &format!("{name} to send READY=1"),
            Duration::from_secs(10),
            || {
                let ready = self.ready_addr();
                let exited = self.child.try_wait().ok().flatten();
                let logs = self.logs();
                let name = name.clone();
                async move {
                    if let Some(status) = exited {
                        panic!("{name} exited ({status}) before it was ready:\n{logs}");
                    }
                    ready
                }
            },
        )
        .await;
        self.addr = addr;
    }

    /// Whether it has sent `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.ready_addr().is_some()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn ready_addr(&self) -> Option<SocketAddr> {
        let notes = self.notes.lock().unwrap();
        let (_, ready) = notes
            .iter()
            .find(|(_, n)| n.lines().any(|l| l == "READY=1"))?;
        let status = ready.lines().find_map(|l| l.strip_prefix("STATUS="))?;
        let addr = status.strip_prefix("serving on ")?;
        addr.split([';', ' ']).next()?.parse().ok()
    }

    /// Sends `signal` (SIGTERM, SIGSTOP...).
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for it to exit, panicking after `timeout`; then, until what
    /// it wrote and sent before it exited is in [`Proc::logs`] and
    /// [`Proc::notifications`] (the readers may lag behind on a busy
    /// machine).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "process did not exit within {timeout:?}; logs:\n{}",
                self.logs()
            ),
        };
        if let Some(exited) = self.exited.take() {
            let _ = exited.send(());
        }
        // A pipe ends once every writer has closed it: the daemon, and any
        // child it left behind (none does), so this is bounded too.
        let readers = std::mem::take(&mut self.readers);
        let read = async {
            for reader in readers {
                let _ = reader.await;
            }
        };
        if tokio::time::timeout(timeout, read).await.is_err() {
            panic!(
                "{}: its output did not end within {timeout:?} of its exit",
                self.name
            );
        }
        status
    }

    /// Waits until its logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        eventually(&format!("log line containing {needle:?}"), timeout, || {
            let found = self.logs().contains(needle);
            async move { found.then_some(()) }
        })
        .await;
    }
}

pub use nix::sys::signal::Signal as Sig;
