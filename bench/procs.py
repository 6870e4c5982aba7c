"""Process helpers shared by the bench scripts (bench.py, soak.py): build the
release binaries, start processes and wait until they answer HTTP, stop
them whatever happens, and read what /proc says of them."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
HOST = "127.0.0.1"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def apt_install(*commands):
    """Installs the Debian package of each (binary, package) pair whose
    binary is missing."""
    missing = [package for binary, package in commands if not shutil.which(binary)]
    if missing:
        log(f"installing {missing}")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def build_release(quiet=True):
    """The release binaries, up to date: a benchmark of yesterday's code
    measures nothing."""
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", *(["-q"] if quiet else [])],
                   cwd=ROOT, check=True)


def ensure_free(ports):
    """Exits if anything listens on one of `ports` ({name: port})."""
    for name, port in ports.items():
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                sys.exit(f"port {port} ({name}) is in use; stop whatever holds it")


def raise_fd_limit():
    """The soft limit on open files up to the hard one: a thousand
    connections at once need more than the usual 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_http(port, proc, path="/health", timeout=15):
    """Returns once something answers HTTP on `port`; exits if `proc` dies
    first or nothing answers within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1."):
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing answers on port {port}")


class Procs:
    """Every process the run starts, stopped at the end whatever happens."""

    def __init__(self):
        self.all = []

    def start(self, argv, env=None, port=None, path="/health", stderr=subprocess.DEVNULL):
        """Starts argv; with `port`, returns once it answers HTTP there."""
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        self.all.append(p)
        if port:
            wait_http(port, p, path)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)


def daemon_env(**extra):
    """This environment without the daemons' own variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "OTEL_"))}
    env["RUST_LOG"] = "info"
    env.update(extra)
    return env


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class HungServer:
    """Accepts connections on `port` and never answers (a hung service-a);
    holds them until closed."""

    def __init__(self, port):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.listener.listen(4096)
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self):
        self.listener.close()
        for conn in self.held:
            conn.close()
