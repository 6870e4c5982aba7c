#!/usr/bin/env python3
"""Benchmark: service-b against what an operator would put in its place,
side by side in one run, on loopback, with wrk.

    bench/bench.py [--duration 10] [--connections 50] [--hung-connections 1000]

Cases, each time-bounded:
  service-a direct        GET /echo on service-a (the upper bound of a one-hop path)
  service-b, telemetry on GET /call-echo, exporting OTLP to a local sink (below)
  service-b, telemetry off  the same with OTEL_SDK_DISABLED=true
  nginx proxy_pass        nginx in front of the same service-a: upstream keepalive, 1 s timeouts
  Caddy reverse_proxy     Caddy (bench/caddy/go.mod) in front of the same service-a with its
                          OpenTelemetry tracing on (every request, OTLP/gRPC) and its metrics on
  Flask original          Flask service-b calling Flask service-a with requests (the lab's seed design)
  refused path            service-b with nothing listening at service-a's address (breaker off)
  hung path               --hung-connections at once against a service-a that never answers (breaker off)
Plus idle and under-load RSS of each daemon, and exec-to-READY=1 time.
service-b and Caddy export to one local sink: the OpenTelemetry Collector
(OTLP gRPC and HTTP in, nop exporter), from --otelcol or built by
observability/build/build.sh when the checkout has it; without one, service-b
exports to nginx answering 200 and Caddy is left out.

Prints one table with absolute figures and the ratios, all from this run.
Machines here are noisy: read the ratios, not the absolute numbers.
Needs wrk and nginx (apt), Flask and requests (pip, into target/bench-venv),
Go for Caddy (its modules come through the Go module proxy, cached in ~/go).

    bench/bench.py --instructions [--requests 2000] [--check | --write-baseline]

The headline figure instead, repeatable on noisy machines: instructions per
request, counted by callgrind (valgrind, apt) over every thread of the
release daemon for --requests requests after a warm-up, start-up, warm-up and
shut-down excluded (see instructions_per_request()). Cases: service-b /call-echo
with telemetry on (every request traced, exported to a local OTLP/HTTP sink,
metrics recorded) and off, service-a /echo with telemetry on and off.
--check compares with bench/instructions-baseline.json and fails when a
figure is more than 10 % above it (CI runs this from test.sh);
--write-baseline rewrites that file from this run.
"""

import argparse
import glob
import http.client
import http.server
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
HOST = "127.0.0.1"
PORTS = {"a": 19080, "b": 19081, "nginx": 19082, "caddy": 19083, "caddy_admin": 19084, "sink": 19318,
         "otlp_grpc": 19317, "otlp_http": 19319, "flask_a": 19090, "flask_b": 19091, "hung": 19099}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup

def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("nginx-light", "nginx")) if not shutil.which(b)]
    if missing:
        log(f"installing {missing}")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    venv = os.path.join(ROOT, "target", "bench-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        log("creating target/bench-venv with Flask and requests")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r",
                        os.path.join(ROOT, "bench", "flask_original", "requirements.txt")], check=True)
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "-q"], cwd=ROOT, check=True)
    return py


def free_ports():
    for name, port in PORTS.items():
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                sys.exit(f"port {port} ({name}) is in use; stop whatever holds it")


def wait_http(port, proc, path="/health", timeout=15):
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

    def start(self, argv, env=None, port=None, path="/health"):
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "OTEL_"))}
    env["RUST_LOG"] = "info"
    env.update(extra)
    return env


def nginx_conf(tmp):
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes auto;  # as Debian ships it
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream service_a {{
        server {HOST}:{PORTS['a']};
        keepalive 64;
    }}
    # The operator's alternative to service-b: a reverse proxy.
    server {{
        listen {HOST}:{PORTS['nginx']};
        location / {{
            proxy_pass http://service_a/echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_send_timeout 1s;
            proxy_read_timeout 1s;
        }}
    }}
    # The OTLP sink for service-b's telemetry: accepts and discards.
    server {{
        listen {HOST}:{PORTS['sink']};
        client_max_body_size 64m;
        location / {{ return 200; }}
    }}
}}
""")
    return conf


def otelcol(args):
    """The OpenTelemetry Collector binary: --otelcol, else the stack's build
    script (observability/build/build.sh) when this checkout has it, else None."""
    if args.otelcol:
        return args.otelcol
    script = os.path.join(ROOT, "observability", "build", "build.sh")
    if not os.path.exists(script):
        return None
    log("building the OpenTelemetry Collector (observability/build/build.sh)")
    bindir = subprocess.run([script], check=True, capture_output=True, text=True).stdout.strip()
    return os.path.join(bindir, "otelcol-lab")


def otelcol_conf(tmp):
    """A sink both protocols reach: OTLP gRPC and HTTP in, nothing out."""
    conf = os.path.join(tmp, "otelcol.yaml")
    with open(conf, "w") as f:
        f.write(f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "{HOST}:{PORTS['otlp_grpc']}"}}
      http: {{endpoint: "{HOST}:{PORTS['otlp_http']}"}}
exporters:
  nop: {{}}
service:
  telemetry:
    metrics: {{level: none}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [nop]}}
    metrics: {{receivers: [otlp], exporters: [nop]}}
""")
    return conf


def caddy():
    """Caddy built from bench/caddy/go.mod (its version pinned there) into
    target/bench-caddy; Go's module and build caches make a rebuild cheap."""
    out = os.path.join(ROOT, "target", "bench-caddy", "caddy")
    log("building Caddy (bench/caddy/go.mod)")
    subprocess.run(["go", "build", "-trimpath", "-o", out, "."], cwd=os.path.join(ROOT, "bench", "caddy"),
                   check=True, env=dict(os.environ, GOFLAGS="-buildvcs=false"))
    return out


def caddy_conf(tmp, timeout="1s"):
    """Caddy as the operator's traced alternative to service-b: reverse_proxy
    to the same service-a, a span per request (tracing, exported by OTLP/gRPC
    as the environment says: Caddy's own default would be OTLP/HTTP), HTTP
    metrics on (Prometheus histograms, served on the admin endpoint), no
    access log (Caddy's default)."""
    conf = os.path.join(tmp, "Caddyfile")
    with open(conf, "w") as f:
        f.write(f"""{{
    admin {HOST}:{PORTS['caddy_admin']}
    auto_https off
    persist_config off
    metrics
}}
http://{HOST}:{PORTS['caddy']} {{
    bind {HOST}
    tracing {{
        span caddy-proxy
    }}
    reverse_proxy {HOST}:{PORTS['a']} {{
        transport http {{
            dial_timeout {timeout}
            response_header_timeout {timeout}
        }}
    }}
}}
""")
    return conf


# ---------------------------------------------------------------- measuring

def wrk(url, duration, connections, threads=1):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def parse_wrk(out):
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    result["max_ms"] = to_ms(lat.group(3))
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = to_ms(re.search(rf"\s{pct}%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = errors.group(1) if errors else ""
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    return result


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def loaded(pid, fn):
    """Runs fn() and samples pid's RSS meanwhile; returns (fn(), peak KiB)."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    try:
        return fn(), peak[0]
    finally:
        done.set()
        t.join()


def ready_ms(binary, env, runs=20):
    """Median time from exec to READY=1 on a notify socket we own."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(10)
        for _ in range(runs):
            e = dict(env, NOTIFY_SOCKET=path)
            start = time.perf_counter()
            p = subprocess.Popen([binary, "--listen", f"{HOST}:0"], env=e,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                msg = sock.recv(4096).decode()
                if "READY=1" in msg.splitlines():
                    times.append((time.perf_counter() - start) * 1000)
                    break
            p.send_signal(signal.SIGTERM)
            p.wait()
        sock.close()
    return statistics.median(times)


def hung_server(port):
    """Accepts connections and never answers (a hung service-a)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(4096)
    held = []

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                return

    threading.Thread(target=loop, daemon=True).start()
    return srv


# ---------------------------------------------------------------- instructions per request

BASELINE = os.path.join(ROOT, "bench", "instructions-baseline.json")
TOLERANCE = 1.10  # --check fails above baseline x this
CALL = "/call-echo?msg=hello+bench"
ECHO = "/echo?msg=hello+bench"
# key, label, daemon, path, telemetry on
INSTRUCTION_CASES = [
    ("b_on", "service-b /call-echo, telemetry on", "b", CALL, True),
    ("b_off", "service-b /call-echo, telemetry off", "b", CALL, False),
    ("a_on", "service-a /echo, telemetry on", "a", ECHO, True),
    ("a_off", "service-a /echo, telemetry off", "a", ECHO, False),
]


def otlp_http_sink(port):
    """An OTLP/HTTP receiver that reads every export and answers 200 with an
    empty (valid) protobuf response; counts the exports per path."""
    exports = {}

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
            exports[self.path] = exports.get(self.path, 0) + 1

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer((HOST, port), Sink)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, exports


class Client:
    """`connections` keep-alive connections, each on a thread of its own,
    that send GETs one after the other and insist on `expect` (200; the hung
    path's load is one connection per request at once, each ending in 503)."""

    def __init__(self, port, connections, expect=200, timeout=60):
        self.expect = expect
        self.conns = [http.client.HTTPConnection(HOST, port, timeout=timeout) for _ in range(connections)]

    def run(self, path, n, strict=True):
        failures = []

        def send(conn, k):
            try:
                for _ in range(k):
                    conn.request("GET", path)
                    r = conn.getresponse()
                    r.read()
                    if r.status != self.expect:
                        failures.append(r.status)
            except OSError as e:
                failures.append(repr(e))

        share = [n // len(self.conns) + (i < n % len(self.conns)) for i in range(len(self.conns))]
        threads = [threading.Thread(target=send, args=(c, k)) for c, k in zip(self.conns, share)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures and strict:
            sys.exit(f"GET {path}: {len(failures)} of {n} requests did not end in {self.expect}, "
                     f"e.g. {failures[0]}")

    def close(self):
        for c in self.conns:
            c.close()


def hung_instructions(args, b_bin, env, tmp):
    """service-b's own cost per timed-out call: args.hung_calls requests at
    once against a socket that accepts and never answers (the hung path of
    the wrk run: breaker off, 1 s deadline), telemetry on, every thread
    counted. Not guarded: reported."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, PORTS["hung"]))
    listener.listen(4096)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    log(f"service-b /call-echo against a hung service-a: {args.hung_calls} timed-out calls at once "
        f"to warm up, {args.hung_calls} counted")
    argv = [b_bin, "--listen", f"{HOST}:{PORTS['b']}", "--service-a-url", f"http://{HOST}:{PORTS['hung']}",
            "--upstream-timeout", "1s", "--breaker-failures", "0", "--max-in-flight", "100000"]
    try:
        return instructions_per_request(argv, env, PORTS["b"], CALL, args, tmp, "b_hung", args.settle,
                                        client=Client(PORTS["b"], args.hung_calls, expect=503, timeout=120),
                                        n=args.hung_calls)
    finally:
        listener.close()
        for c in held:
            c.close()


def callgrind_control(pid, *args):
    r = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"callgrind_control {' '.join(args)} {pid} failed:\n{r.stdout}{r.stderr}")


def thousands(n):
    return f"{n:,.0f}".replace(",", " ")


def instructions_per_request(argv, env, port, path, args, tmp, key, settle, client=None, n=None):
    """Runs the daemon under callgrind with instrumentation off through
    start-up, switches it on, warms up (connections opened, pools filled,
    spans of the warm-up exported), zeroes the counters, sends
    args.requests requests over the same keep-alive connections, waits for
    the telemetry they caused to be exported, and dumps. The dump covers
    every thread of the daemon (callgrind sums them), so exporting and
    metric recording on background threads count as well. `client` and `n`
    replace the keep-alive client and the request counts (the hung path)."""
    warmup, n = (args.warmup, args.requests) if n is None else (n, n)
    out = os.path.join(tmp, f"callgrind.{key}")
    with open(os.path.join(tmp, f"valgrind.{key}.log"), "w") as err:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={out}", *argv],
                             env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_http(port, p, timeout=120)
        callgrind_control(p.pid, "-i", "on")
        client = client or Client(port, args.instr_connections)
        # The first requests run while valgrind translates the code they
        # take, slowly: one may miss a deadline, which only warms up more.
        client.run(path, warmup, strict=False)
        time.sleep(settle)
        callgrind_control(p.pid, "-z")
        start = time.perf_counter()
        client.run(path, n)
        elapsed = time.perf_counter() - start
        time.sleep(settle)
        callgrind_control(p.pid, "-d")
        client.close()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    dumps = sorted(glob.glob(f"{out}.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    if not dumps:
        sys.exit(f"callgrind wrote no dump for {key}; see its log")
    total = None
    with open(dumps[0]) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copy(dumps[0], os.path.join(args.keep, f"callgrind.out.{key}"))
    log(f"  {key}: {thousands(total / n)} instructions/request "
        f"({n} requests in {elapsed:.1f} s under callgrind)")
    return total / n


def by_crate(dump, requests, top=12):
    """Instructions per request by crate (exclusive cost, from
    callgrind_annotate; libc's allocator and mem*/str* apart)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", dump],
                         capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S*?):(.*) \[(.*)\]$", line)
        if not m:
            continue
        ir, file, fn, obj = int(m.group(1).replace(",", "")), m.group(2), m.group(3), m.group(4)
        if "/libc.so" in obj:
            key = "libc malloc/free" if "malloc" in file else "libc mem*/str*" if re.search(r"mem|str", file) else "libc"
        else:
            if re.match(r"_?mi_", fn):  # mimalloc's C functions
                costs["mimalloc"] = costs.get("mimalloc", 0) + ir
                continue
            parts = re.split(r"::|<| as ", fn.lstrip("<"))
            # core, alloc and std by module: core::fmt is formatting, core::ptr drops.
            key = "::".join(parts[:2]) if parts[0] in ("core", "alloc", "std") else parts[0] or fn
        costs[key] = costs.get(key, 0) + ir
    return sorted(((v / requests, k) for k, v in costs.items()), reverse=True)[:top]


def instructions(args):
    ensure_valgrind()
    for port in (PORTS["a"], PORTS["b"], PORTS["sink"], PORTS["hung"]):
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                sys.exit(f"port {port} is in use; stop whatever holds it")
    a_bin, b_bin = os.path.join(BIN, "service-a"), os.path.join(BIN, "service-b")
    a_url = f"http://{HOST}:{PORTS['a']}"
    sink, exports = otlp_http_sink(PORTS["sink"])
    # Metrics are recorded on every request; their export, once a minute
    # whatever the traffic, is kept out of the counted window so that the
    # figure does not depend on how fast the machine runs valgrind.
    on = dict(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:{PORTS['sink']}", OTEL_METRIC_EXPORT_INTERVAL="3600000")
    off = dict(OTEL_SDK_DISABLED="true")
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="bench-instructions-")
    figures = {}
    try:
        # service-b's peer runs natively, telemetry off: only service-b is counted.
        procs.start([a_bin, "--listen", f"{HOST}:{PORTS['a']}"], daemon_env(**off), PORTS["a"])
        for key, label, daemon, path, telemetry in INSTRUCTION_CASES:
            if args.cases and key not in args.cases:
                continue
            log(f"{label}: {args.warmup} requests to warm up, {args.requests} counted, "
                f"{args.instr_connections} connection(s)")
            if daemon == "b":
                port = PORTS["b"]
                # A deadline valgrind's pace cannot miss: the counted path is the 200 one.
                argv = [b_bin, "--listen", f"{HOST}:{port}", "--service-a-url", a_url, "--upstream-timeout", "10s", "--shutdown-timeout", "15s"]
            else:
                port = PORTS["b"]  # a second service-a, on service-b's port
                argv = [a_bin, "--listen", f"{HOST}:{port}"]
            env = daemon_env(**(on if telemetry else off))
            before = exports.get("/v1/traces", 0)
            figures[key] = instructions_per_request(argv, env, port, path, args, tmp, key,
                                                   args.settle if telemetry else 0.5)
            if telemetry and exports.get("/v1/traces", 0) == before:
                sys.exit(f"{label}: no trace export reached the sink")
        if args.hung:
            figures["b_hung"] = hung_instructions(args, b_bin, daemon_env(**on), tmp)
        if args.caddy:
            figures["caddy"] = caddy_instructions(args, procs, tmp)
    finally:
        procs.stop_all()
        sink.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def caddy_instructions(args, procs, tmp):
    """Caddy, the traced peer (see caddy_conf), counted the same way, for
    comparison only (not in the baseline: Go's runtime makes its count move
    by tens of percent between runs): it exports over OTLP/gRPC, so to the
    Collector. Go's asynchronous preemption signals trip an assertion in
    callgrind 3.19, hence GODEBUG=asyncpreemptoff=1."""
    collector = otelcol(args)
    if not collector:
        sys.exit("--caddy needs the OpenTelemetry Collector: --otelcol PATH")
    procs.start([collector, "--config", otelcol_conf(tmp)], port=PORTS["otlp_http"], path="/v1/traces")
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
               XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp, GODEBUG="asyncpreemptoff=1",
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:{PORTS['otlp_grpc']}",
               OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_SERVICE_NAME="caddy")
    log(f"Caddy reverse_proxy, tracing on: {args.warmup} requests to warm up, {args.requests} counted")
    # As for service-b, a deadline valgrind's pace cannot miss.
    argv = [caddy(), "run", "--adapter", "caddyfile", "--config", caddy_conf(tmp, "10s")]
    return instructions_per_request(argv, env, PORTS["caddy"], ECHO, args, tmp, "caddy", args.settle)


def ensure_valgrind():
    if not shutil.which("valgrind"):
        log("installing valgrind")
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "-q"], cwd=ROOT, check=True)


def instructions_report(args, figures):
    base = {}
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            base = json.load(f)
    print(f"\nInstructions per request: callgrind, release build, {args.requests} requests after "
          f"{args.warmup} to warm up, {args.instr_connections} keep-alive connection(s), every thread\n")
    print("| case | instructions / request | baseline | change |")
    print("|---|---:|---:|---:|")
    worse = []
    for key, label, *_ in INSTRUCTION_CASES:
        if key not in figures:
            continue
        value, ref = figures[key], base.get(key)
        change = f"{(value / ref - 1) * 100:+.1f} %" if ref else "-"
        print(f"| {label} | {thousands(value)} | {thousands(ref) if ref else '-'} | {change} |")
        if ref and value > ref * TOLERANCE:
            worse.append(f"{label}: {thousands(value)} > {thousands(ref)} + {TOLERANCE * 100 - 100:.0f} %")
    if "b_hung" in figures:
        print(f"| service-b /call-echo, a timed-out call to a hung service-a, {args.hung_calls} at once "
              f"(not guarded) | {thousands(figures['b_hung'])} | - | - |")
    if "caddy" in figures:
        print(f"| Caddy reverse_proxy /echo, tracing on (not guarded) | {thousands(figures['caddy'])} | - | - |")
    if args.keep:
        for key, label, *_ in INSTRUCTION_CASES:
            dump = os.path.join(args.keep, f"callgrind.out.{key}")
            if key in figures and os.path.exists(dump):
                print(f"\n{label}, by crate (exclusive, per request): " +
                      ", ".join(f"{name} {thousands(v)}" for v, name in by_crate(dump, args.requests)))
        print(f"\n(callgrind_annotate --inclusive=yes {args.keep}/callgrind.out.CASE for functions)")
    if args.write_baseline:
        note = ("instructions per request, bench/bench.py --instructions; CI fails when a figure "
                     "rises more than 10 % above these; rewrite: bench/bench.py --instructions --write-baseline")
        new = {**base, "_": note, **{k: int(round(v, -2)) for k, v in figures.items() if k not in ("caddy", "b_hung")}}
        with open(BASELINE, "w") as f:
            json.dump(new, f, indent=2)
            f.write("\n")
        print(f"\nwrote {os.path.relpath(BASELINE, ROOT)}")
    if args.check:
        if not base:
            sys.exit(f"--check: no baseline at {BASELINE}")
        if worse:
            print("\nFAIL, more than 10 % above bench/instructions-baseline.json:\n  " + "\n  ".join(worse))
            sys.exit(1)
        print("\nok: no figure more than 10 % above bench/instructions-baseline.json")


# ---------------------------------------------------------------- the run

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per case (default 10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--hung-connections", type=int, default=1000, help="concurrent requests against a hung service-a")
    ap.add_argument("--skip-flask", action="store_true", help="leave out the Flask original")
    ap.add_argument("--skip-caddy", action="store_true", help="leave out Caddy")
    ap.add_argument("--otelcol", metavar="PATH",
                    help="the OpenTelemetry Collector to use as the OTLP sink "
                         "(default: built by observability/build/build.sh when the checkout has it)")
    ap.add_argument("--json", help="also write the figures to this file")
    g = ap.add_argument_group("instructions per request (callgrind)")
    g.add_argument("--instructions", action="store_true", help="count instructions per request instead of wrk")
    g.add_argument("--requests", type=int, default=2000, help="requests counted per case (default 2000)")
    g.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    g.add_argument("--instr-connections", type=int, default=1, help="keep-alive connections (default 1)")
    g.add_argument("--settle", type=float, default=6.0,
                   help="seconds after warm-up and after the counted requests for the batch exporter "
                        "(5 s schedule) to send what they traced (default 6)")
    g.add_argument("--case", dest="cases", action="append", choices=[c[0] for c in INSTRUCTION_CASES],
                   help="only this case (repeatable)")
    g.add_argument("--caddy", action="store_true",
                   help="also count Caddy with tracing on (needs --otelcol or the stack's build script)")
    g.add_argument("--hung", action="store_true",
                   help="also count service-b's cost per timed-out call against a hung service-a (not guarded)")
    g.add_argument("--hung-calls", type=int, default=200, help="timed-out calls at once for --hung (default 200)")
    g.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps here (for callgrind_annotate)")
    g.add_argument("--check", action="store_true",
                   help="fail when a figure is more than 10 %% above bench/instructions-baseline.json")
    g.add_argument("--write-baseline", action="store_true", help="rewrite bench/instructions-baseline.json")
    args = ap.parse_args()

    if args.instructions or args.check or args.write_baseline:
        figures = instructions(args)
        instructions_report(args, figures)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    py = ensure_tools()
    free_ports()
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="bench-")
    figures = {}
    try:
        run(args, py, procs, tmp, figures)
    finally:
        procs.stop_all()
        if os.path.exists(f"{tmp}/nginx.pid"):
            subprocess.run(["nginx", "-c", f"{tmp}/nginx.conf", "-s", "quit"], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


def run(args, py, procs, tmp, figures):
    d, c = args.duration, args.connections
    a_bin, b_bin = os.path.join(BIN, "service-a"), os.path.join(BIN, "service-b")
    a_url = f"http://{HOST}:{PORTS['a']}"
    sink = f"http://{HOST}:{PORTS['sink']}"
    msg = "/call-echo?msg=hello+bench"

    subprocess.run(["nginx", "-c", nginx_conf(tmp)], check=True)
    wait_http(PORTS["sink"], None, "/")
    collector = otelcol(args)
    if collector:
        # One sink for service-b (OTLP/HTTP) and Caddy (OTLP/gRPC): the Collector, discarding.
        procs.start([collector, "--config", otelcol_conf(tmp)], port=PORTS["otlp_http"], path="/v1/traces")
        sink = f"http://{HOST}:{PORTS['otlp_http']}"
        figures["sink"] = "OpenTelemetry Collector (otlp receiver, nop exporter)"
    else:
        log("no OpenTelemetry Collector (--otelcol, observability/build/build.sh): service-b exports "
            "to nginx answering 200, and Caddy, which needs a gRPC sink, is left out")
        figures["sink"] = "nginx answering 200 (OTLP/HTTP only)"

    env_on = daemon_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink)
    env_off = daemon_env(OTEL_SDK_DISABLED="true")
    a = procs.start([a_bin, "--listen", f"{HOST}:{PORTS['a']}"], daemon_env(OTEL_SDK_DISABLED="true"), PORTS["a"])
    time.sleep(0.5)
    figures["rss_idle_a_kib"] = rss_kib(a.pid)

    log(f"service-a direct: {d}s, {c} connections")
    figures["a_direct"], figures["rss_load_a_kib"] = loaded(
        a.pid, lambda: wrk(f"{a_url}/echo?msg=hello+bench", d, c))

    for name, env in (("b_on", env_on), ("b_off", env_off)):
        b = procs.start([b_bin, "--listen", f"{HOST}:{PORTS['b']}", "--service-a-url", a_url], env, PORTS["b"])
        time.sleep(0.5)
        figures[f"rss_idle_{name}_kib"] = rss_kib(b.pid)
        log(f"service-b, telemetry {name[2:]}: {d}s, {c} connections")
        figures[name], figures[f"rss_load_{name}_kib"] = loaded(
            b.pid, lambda: wrk(f"http://{HOST}:{PORTS['b']}{msg}", d, c))
        procs.stop(b)

    log(f"nginx proxy_pass: {d}s, {c} connections")
    figures["nginx"] = wrk(f"http://{HOST}:{PORTS['nginx']}/?msg=hello+bench", d, c)

    if collector and not args.skip_caddy:
        caddy_env = dict(
            {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:{PORTS['otlp_grpc']}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_SERVICE_NAME="caddy")
        cd = procs.start([caddy(), "run", "--adapter", "caddyfile", "--config", caddy_conf(tmp)],
                         caddy_env, PORTS["caddy"], "/health")
        time.sleep(0.5)
        figures["rss_idle_caddy_kib"] = rss_kib(cd.pid)
        log(f"Caddy reverse_proxy, tracing on: {d}s, {c} connections")
        figures["caddy"], figures["rss_load_caddy_kib"] = loaded(
            cd.pid, lambda: wrk(f"http://{HOST}:{PORTS['caddy']}/echo?msg=hello+bench", d, c))
        procs.stop(cd)
    procs.stop(a)

    if not args.skip_flask:
        fa = procs.start([py, os.path.join(ROOT, "bench", "flask_original", "service_a.py")],
                         dict(os.environ, PORT=str(PORTS["flask_a"])), PORTS["flask_a"])
        fb = procs.start([py, os.path.join(ROOT, "bench", "flask_original", "service_b.py")],
                         dict(os.environ, PORT=str(PORTS["flask_b"]),
                              SERVICE_A_URL=f"http://{HOST}:{PORTS['flask_a']}"), PORTS["flask_b"])
        log(f"Flask original: {d}s, {c} connections")
        figures["flask"] = wrk(f"http://{HOST}:{PORTS['flask_b']}{msg}", d, c)
        procs.stop(fb)
        procs.stop(fa)

    # Failure paths, with the breaker off so every request really tries.
    nothing = f"http://{HOST}:{PORTS['a']}"  # service-a is stopped now
    b = procs.start([b_bin, "--listen", f"{HOST}:{PORTS['b']}", "--service-a-url", nothing,
                     "--breaker-failures", "0"], daemon_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink), PORTS["b"])
    log(f"refused path: {d}s, {c} connections, then 1 connection")
    figures["refused"] = wrk(f"http://{HOST}:{PORTS['b']}{msg}", d, c)
    # One request at a time: the time a refused call takes, without queueing.
    figures["refused_1"] = wrk(f"http://{HOST}:{PORTS['b']}{msg}", d, 1)
    procs.stop(b)

    hung = hung_server(PORTS["hung"])
    b = procs.start([b_bin, "--listen", f"{HOST}:{PORTS['b']}", "--service-a-url", f"http://{HOST}:{PORTS['hung']}",
                     "--breaker-failures", "0", "--max-in-flight", str(max(1024, args.hung_connections))],
                    daemon_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink, RUST_LOG="warn,access=off"), PORTS["b"])
    n = args.hung_connections
    log(f"hung path: {n} connections for {max(d, 5)}s")
    figures["hung"], figures["rss_hung_b_kib"] = loaded(
        b.pid, lambda: wrk(f"http://{HOST}:{PORTS['b']}{msg}", max(d, 5), n, threads=2))
    procs.stop(b)
    hung.close()

    log("exec to READY=1, 20 starts each")
    figures["ready_a_ms"] = ready_ms(a_bin, env_off)
    figures["ready_b_ms"] = ready_ms(b_bin, env_on)


def report(args, f):
    rows = [("service-a direct", "a_direct"), ("service-b, telemetry on", "b_on"),
            ("service-b, telemetry off", "b_off"), ("nginx proxy_pass", "nginx"),
            ("Caddy reverse_proxy, tracing on", "caddy"),
            ("Flask original", "flask"), ("refused path (503)", "refused"),
            ("refused path, 1 connection (503)", "refused_1"),
            (f"hung path, {args.hung_connections} conns (503)", "hung")]
    print(f"\nBenchmark: wrk, {args.connections} connections, {args.duration}s per case, loopback, "
          f"{os.cpu_count()} cores; OTLP sink: {f['sink']}\n")
    print(f"| case | requests/s | p50 ms | p99 ms | max ms | non-2xx | socket errors |")
    print(f"|---|---:|---:|---:|---:|---:|---|")
    for label, key in rows:
        if key in f:
            r = f[key]
            print(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                  f"{r['non2xx']} | {r['socket_errors'] or '-'} |")
    print()
    print(f"| memory and start-up | service-a | service-b |")
    print(f"|---|---:|---:|")
    print(f"| RSS idle | {f['rss_idle_a_kib'] / 1024:.1f} MB | {f['rss_idle_b_on_kib'] / 1024:.1f} MB |")
    print(f"| RSS under load (peak) | {f['rss_load_a_kib'] / 1024:.1f} MB | {f['rss_load_b_on_kib'] / 1024:.1f} MB |")
    print(f"| RSS, {args.hung_connections} requests on a hung service-a | | {f['rss_hung_b_kib'] / 1024:.1f} MB |")
    print(f"| exec to READY=1 (median of 20) | {f['ready_a_ms']:.1f} ms | {f['ready_b_ms']:.1f} ms |")
    on, off, ngx = f["b_on"], f["b_off"], f["nginx"]
    print()
    print("| ratio (this run) | value | target |")
    print("|---|---:|---|")
    if "caddy" in f:
        cd = f["caddy"]
        print(f"| service-b (telemetry on) / Caddy (tracing on), requests/s | {on['rps'] / cd['rps']:.2f} | >= 1.5 |")
        print(f"| service-b (telemetry on) / Caddy (tracing on), p99 | {on['p99_ms'] / cd['p99_ms']:.2f} | < 1 |")
    print(f"| service-b (telemetry on) / nginx, requests/s | {on['rps'] / ngx['rps']:.2f} | >= 0.6 |")
    print(f"| service-b (telemetry on) / nginx, p99 | {on['p99_ms'] / ngx['p99_ms']:.2f} | |")
    print(f"| telemetry on / off, requests/s | {on['rps'] / off['rps']:.2f} | >= 0.9 |")
    if "flask" in f:
        print(f"| service-b (telemetry on) / Flask original, requests/s | {on['rps'] / f['flask']['rps']:.1f} | >= 20 |")
    print(f"| service-b / service-a direct, requests/s | {on['rps'] / f['a_direct']['rps']:.2f} | (one hop costs) |")
    print(f"| refused path p99, {args.connections} connections / 1 connection | {f['refused']['p99_ms']:.2f} / {f['refused_1']['p99_ms']:.2f} ms | < 2 ms |")
    hung = f["hung"]
    print(f"| hung path: p50 / max answer vs the 1 s deadline | +{hung['p50_ms'] - 1000:.0f} / +{hung['max_ms'] - 1000:.0f} ms | max <= +100 ms |")
    print(f"| idle RSS service-a / service-b | {f['rss_idle_a_kib'] / 1024:.1f} / {f['rss_idle_b_on_kib'] / 1024:.1f} MB | < 15 MB |")
    if "caddy" in f:
        print(f"| RSS Caddy idle / under load (peak) | {f['rss_idle_caddy_kib'] / 1024:.1f} / "
              f"{f['rss_load_caddy_kib'] / 1024:.1f} MB | (for comparison) |")
    print(f"| exec to READY=1 service-a / service-b | {f['ready_a_ms']:.1f} / {f['ready_b_ms']:.1f} ms | < 50 ms |")


if __name__ == "__main__":
    main()
