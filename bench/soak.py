#!/usr/bin/env python3
"""Soak: bounded load through service-b for a while, with service-a stopped
and started every few seconds. Reports requests that failed beyond the
expected degraded 503s, service-b's RSS and open fds at start and end, and
whether service-b ever restarted (it must not).

    bench/soak.py [--minutes 10] [--workers 8] [--flap-seconds 3] [--bin DIR]

Runs the release binaries (built if missing) as plain processes on
127.0.0.1:18180/18181. Exit status 1 if anything unexpected happened.
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A_ADDR, B_ADDR = ("127.0.0.1", 18180), ("127.0.0.1", 18181)
EXPECTED_KINDS = {"connection_refused", "connection_failed", "timeout", "circuit_open", "overloaded"}


def status_of(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def wait_listening(addr, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon for {addr} exited ({proc.returncode}); see target/soak-daemons.log")
        try:
            conn = http.client.HTTPConnection(*addr, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers at {addr}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--flap-seconds", type=float, default=3)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    args = p.parse_args()

    if args.bin == os.path.join(ROOT, "target", "release"):
        # Up to date, or the soak measures yesterday's code.
        subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)
    for addr in (A_ADDR, B_ADDR):
        try:
            http.client.HTTPConnection(*addr, timeout=1).request("GET", "/health")
            raise SystemExit(f"something already listens at {addr}; stop it first")
        except ConnectionRefusedError:
            pass
    env = dict(os.environ, RUST_LOG="warn", OTEL_SDK_DISABLED="true")
    devnull = open(os.path.join(ROOT, "target", "soak-daemons.log"), "w")
    start_a = lambda: subprocess.Popen(  # noqa: E731
        [os.path.join(args.bin, "service-a"), "--listen", "%s:%d" % A_ADDR], env=env, stderr=devnull)
    a = start_a()
    b = subprocess.Popen(
        [os.path.join(args.bin, "service-b"), "--listen", "%s:%d" % B_ADDR,
         "--service-a-url", "http://%s:%d" % A_ADDR, "--breaker-cooldown", "1s"],
        env=env, stderr=devnull)
    procs = {"a": a, "b": b}
    try:
        run(args, procs, start_a)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)


def run(args, procs, start_a):
    a, b = procs["a"], procs["b"]
    wait_listening(A_ADDR, a)
    wait_listening(B_ADDR, b)
    time.sleep(1)
    before = status_of(b.pid)

    stop = time.time() + args.minutes * 60
    lock = threading.Lock()
    tally = {}
    unexpected = []

    def worker():
        conn = None
        while time.time() < stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*B_ADDR, timeout=5)
                conn.request("GET", "/call-echo?msg=soak")
                r = conn.getresponse()
                body = r.read()
                if r.status == 200:
                    key = "200"
                elif r.status == 503 and json.loads(body).get("error") in EXPECTED_KINDS:
                    key = "503 " + json.loads(body)["error"]
                else:
                    key = f"UNEXPECTED {r.status}"
                    unexpected.append(body[:200])
            except Exception as e:  # a failure to reach service-b itself
                key = f"FAILED {type(e).__name__}"
                unexpected.append(repr(e))
                conn = None
            with lock:
                tally[key] = tally.get(key, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    flaps = 0
    a_up = True
    while time.time() < stop:
        time.sleep(args.flap_seconds)
        if a_up:
            a.send_signal(signal.SIGTERM)
            a.wait()
        else:
            a = procs["a"] = start_a()
        a_up = not a_up
        flaps += 1
    for t in threads:
        t.join()
    after = status_of(b.pid)
    b_alive = b.poll() is None

    for proc in (a, b):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)

    total = sum(tally.values())
    print(f"soak: {args.minutes} min, {args.workers} workers, service-a stopped/started {flaps} times")
    print(f"requests: {total}")
    for key in sorted(tally):
        print(f"  {key:30} {tally[key]}")
    print(f"service-b RSS: {before['rss_kib']} KiB at start, {after['rss_kib']} KiB at end")
    print(f"service-b open fds: {before['fds']} at start, {after['fds']} at end")
    print(f"service-b restarted: {'no' if b_alive else 'YES'} (exit status {b.returncode}, pid {b.pid})")
    bad = [k for k in tally if not (k == "200" or k.startswith("503 "))]
    if unexpected:
        print("first unexpected answers:", unexpected[:5])
    if bad or not b_alive or after["fds"] > before["fds"] + 32:
        sys.exit(1)


if __name__ == "__main__":
    main()
