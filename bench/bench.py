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

Beside it: procs.py (starting and stopping processes, shared with soak.py),
callgrind.py (the instruction counter), report.py (the tables and --check).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from callgrind import Client, ensure_valgrind, instructions_per_request, otlp_http_sink
from procs import (BIN, HOST, ROOT, HungServer, Procs, apt_install, build_release, daemon_env, ensure_free,
                   log, raise_fd_limit, rss_kib, wait_http)
from report import instructions_report, report

PORTS = {"a": 19080, "b": 19081, "nginx": 19082, "caddy": 19083, "caddy_admin": 19084, "sink": 19318,
         "otlp_grpc": 19317, "otlp_http": 19319, "flask_a": 19090, "flask_b": 19091, "hung": 19099}


# ---------------------------------------------------------------- setup

def ensure_tools():
    apt_install(("wrk", "wrk"), ("nginx", "nginx-light"))
    venv = os.path.join(ROOT, "target", "bench-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        log("creating target/bench-venv with Flask and requests")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r",
                        os.path.join(ROOT, "bench", "flask_original", "requirements.txt")], check=True)
    build_release()
    return py

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



# ---------------------------------------------------------------- instructions per request

CALL = "/call-echo?msg=hello+bench"
ECHO = "/echo?msg=hello+bench"
# key, label, daemon, path, telemetry on
INSTRUCTION_CASES = [
    ("b_on", "service-b /call-echo, telemetry on", "b", CALL, True),
    ("b_off", "service-b /call-echo, telemetry off", "b", CALL, False),
    ("a_on", "service-a /echo, telemetry on", "a", ECHO, True),
    ("a_off", "service-a /echo, telemetry off", "a", ECHO, False),
]


def hung_instructions(args, b_bin, env, tmp):
    """service-b's own cost per timed-out call: args.hung_calls requests at
    once against a socket that accepts and never answers (the hung path of
    the wrk run: breaker off, 1 s deadline), telemetry on, every thread
    counted. Not guarded: reported."""
    hung = HungServer(PORTS["hung"])
    log(f"service-b /call-echo against a hung service-a: {args.hung_calls} timed-out calls at once "
        f"to warm up, {args.hung_calls} counted")
    argv = [b_bin, "--listen", f"{HOST}:{PORTS['b']}", "--service-a-url", f"http://{HOST}:{PORTS['hung']}",
            "--upstream-timeout", "1s", "--breaker-failures", "0", "--max-in-flight", "100000"]
    try:
        return instructions_per_request(argv, env, PORTS["b"], CALL, args, tmp, "b_hung", args.settle,
                                        client=Client(PORTS["b"], args.hung_calls, expect=503, timeout=120),
                                        n=args.hung_calls)
    finally:
        hung.close()


def instructions(args):
    ensure_valgrind()
    ensure_free({name: PORTS[name] for name in ("a", "b", "sink", "hung")})
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
        instructions_report(args, figures, INSTRUCTION_CASES)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        return

    raise_fd_limit()
    py = ensure_tools()
    ensure_free(PORTS)
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

    hung = HungServer(PORTS["hung"])
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



if __name__ == "__main__":
    main()
