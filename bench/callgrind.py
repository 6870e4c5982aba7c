"""The callgrind counter: instructions per request of a daemon run under
valgrind --tool=callgrind, counted over every thread for a window of
requests (start-up, warm-up and shut-down left out), and what the dumps say
by crate. bench.py --instructions runs the cases; report.py shows them."""

import glob
import http.client
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from procs import HOST, apt_install, build_release, log, wait_http


def ensure_valgrind():
    apt_install(("valgrind", "valgrind"))
    build_release()


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



def callgrind_control(pid, *args):
    r = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"callgrind_control {' '.join(args)} {pid} failed:\n{r.stdout}{r.stderr}")



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


def thousands(n):
    return f"{n:,.0f}".replace(",", " ")
