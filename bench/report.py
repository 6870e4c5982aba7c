"""The report: bench.py's figures as the tables docs/PERFORMANCE.md quotes, and the
instructions per request against bench/instructions-baseline.json (--check
fails above it, --write-baseline rewrites it)."""

import json
import os
import sys

from callgrind import by_crate, thousands
from procs import ROOT

BASELINE = os.path.join(ROOT, "bench", "instructions-baseline.json")
TOLERANCE = 1.10  # --check fails above baseline x this


def instructions_report(args, figures, cases):
    """The instructions table of `figures` (by key of `cases`, as bench.py
    lists them), against the baseline."""
    base = {}
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            base = json.load(f)
    print(f"\nInstructions per request: callgrind, release build, {args.requests} requests after "
          f"{args.warmup} to warm up, {args.instr_connections} keep-alive connection(s), every thread\n")
    print("| case | instructions / request | baseline | change |")
    print("|---|---:|---:|---:|")
    worse = []
    for key, label, *_ in cases:
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
        for key, label, *_ in cases:
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



def hung_report(f):
    """The hung path: per number of calls at once, how late the degraded
    answers come after the 1 s deadline, and where the +100 ms promise holds."""
    print("\n| hung path: calls at once | requests/s | p50 after the deadline | max after the deadline | "
          "max <= +100 ms | RSS peak |")
    print("|---:|---:|---:|---:|---|---:|")
    held = [n for n, r in f["hung"].items() if r["max_ms"] - 1000 <= 100]
    for n, r in f["hung"].items():
        print(f"| {n} | {r['rps']:.0f} | +{r['p50_ms'] - 1000:.0f} ms | +{r['max_ms'] - 1000:.0f} ms | "
              f"{'yes' if n in held else 'no'} | {f['rss_hung_b_kib'][n] / 1024:.1f} MB |")
    print(f"\nthe +100 ms promise held up to {max(held)} calls at once" if held
          else "\nthe +100 ms promise held at none of these")


def report(args, f):
    """The wrk run's tables: each case, memory and start-up, the ratios."""
    if "a_direct" not in f:  # --only-hung
        hung_report(f)
        return
    rows = [("service-a direct", "a_direct"), ("service-b, telemetry on", "b_on"),
            ("service-b, telemetry off", "b_off"), ("nginx proxy_pass", "nginx"),
            ("Caddy reverse_proxy, tracing on", "caddy"),
            ("Flask original", "flask"), ("refused path (503)", "refused"),
            ("refused path, 1 connection (503)", "refused_1")]
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
    print(f"| idle RSS service-a / service-b | {f['rss_idle_a_kib'] / 1024:.1f} / {f['rss_idle_b_on_kib'] / 1024:.1f} MB | < 15 MB |")
    if "caddy" in f:
        print(f"| RSS Caddy idle / under load (peak) | {f['rss_idle_caddy_kib'] / 1024:.1f} / "
              f"{f['rss_load_caddy_kib'] / 1024:.1f} MB | (for comparison) |")
    print(f"| exec to READY=1 service-a / service-b | {f['ready_a_ms']:.1f} / {f['ready_b_ms']:.1f} ms | < 50 ms |")
    hung_report(f)
