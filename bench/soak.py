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
import sys
import threading
import time

from procs import BIN, HOST, ROOT, Procs, build_release, daemon_env, ensure_free, log, open_fds, rss_kib

A_ADDR, B_ADDR = (HOST, 18180), (HOST, 18181)
EXPECTED_KINDS = {"connection_refused", "connection_failed", "timeout", "circuit_open", "overloaded"}


def status_of(pid):
    return {"rss_kib": rss_kib(pid), "fds": open_fds(pid)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--flap-seconds", type=float, default=3)
    p.add_argument("--bin", default=BIN)
    args = p.parse_args()

    if args.bin == BIN:
        build_release(quiet=False)
    ensure_free({"service-a": A_ADDR[1], "service-b": B_ADDR[1]})
    env = daemon_env(RUST_LOG="warn", OTEL_SDK_DISABLED="true")
    daemon_log = os.path.join(ROOT, "target", "soak-daemons.log")
    log(f"the daemons log to {daemon_log}")
    procs = Procs()
    with open(daemon_log, "w") as stderr:
        def start_a():
            return procs.start([os.path.join(args.bin, "service-a"), "--listen", "%s:%d" % A_ADDR],
                               env, port=A_ADDR[1], stderr=stderr)
        try:
            a = start_a()
            b = procs.start([os.path.join(args.bin, "service-b"), "--listen", "%s:%d" % B_ADDR,
                             "--service-a-url", "http://%s:%d" % A_ADDR, "--breaker-cooldown", "1s"],
                            env, port=B_ADDR[1], stderr=stderr)
            run(args, procs, a, b, start_a)
        finally:
            procs.stop_all()


def run(args, procs, a, b, start_a):
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
            procs.stop(a)
        else:
            a = start_a()
        a_up = not a_up
        flaps += 1
    for t in threads:
        t.join()
    after = status_of(b.pid)
    b_alive = b.poll() is None

    procs.stop_all()

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
