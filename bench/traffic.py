#!/usr/bin/env python3
"""Steady traffic to service-b, to fill the dashboards and trip the alerts.

    bench/traffic.py                          # 10 requests/s for 60 s to 127.0.0.1:8081
    bench/traffic.py --rate 50 --duration 5m --concurrency 16 --msg hello

Sends GET /call-echo?msg=... at a fixed rate (open loop: a slow answer does
not slow the schedule, up to --concurrency requests in flight), shows live
progress on a terminal, and ends with a table by status and degraded kind,
with p50 and p99 latency. Every request carries
`User-Agent: lab-traffic/1 (synthetic)`, which service-b records on its
server span (`user_agent.original`), so synthetic traces can be told from
real ones. Loopback or your own test hosts only.

Exit status: 0 when the run completed (whatever the answers were), 2 for a
bad flag. `--json` prints the summary as one JSON object instead of a table;
`--trace-ids FILE` writes each degraded answer's kind and trace id, to look
up in Jaeger.
"""

import argparse
import http.client
import json
import queue
import re
import sys
import threading
import time
import urllib.parse

USER_AGENT = "lab-traffic/1 (synthetic)"


def duration(text):
    """`90`, `90s`, `500ms`, `5m`, `1h` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m or 500ms")
    value = float(m.group(1))
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    if value * scale <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value * scale


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than zero")
        return value
    return parse


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


class Results:
    """Outcomes by (status, kind), with latencies; shared by the workers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_outcome = {}
        self.traces = []  # (kind, trace_id, sampled) of each degraded answer

    def add(self, status, kind, seconds, trace=None):
        with self.lock:
            self.by_outcome.setdefault((status, kind), []).append(seconds)
            if trace:
                self.traces.append(trace)

    def snapshot(self):
        with self.lock:
            return {k: list(v) for k, v in self.by_outcome.items()}


def worker(target, path_and_query, timeout, jobs, results):
    conn = None
    while True:
        job = jobs.get()
        if job is None:
            return
        started = time.monotonic()
        status, kind, trace = 0, "no_answer", None
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=timeout)
                conn.request("GET", path_and_query, headers={"User-Agent": USER_AGENT})
                response = conn.getresponse()
                body = response.read()
                status = response.status
                kind = "ok" if status == 200 else f"http_{status}"
                if status == 503:
                    try:
                        answer = json.loads(body)
                        kind = answer.get("error", kind)
                        if answer.get("trace_id"):
                            trace = (kind, answer["trace_id"], answer.get("trace_sampled"))
                    except ValueError:
                        pass
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                    conn = None
                kind = f"no_answer ({type(e).__name__})"
                # A kept-alive connection service-b closed: once more, fresh.
                if attempt == 2 or isinstance(e, TimeoutError):
                    break
        results.add(status, kind, time.monotonic() - started, trace)


def table(outcomes):
    total = sum(len(v) for v in outcomes.values())
    rows = []
    for (status, kind), values in sorted(outcomes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        values.sort()
        rows.append({
            "status": status,
            "kind": kind,
            "count": len(values),
            "share": len(values) / total if total else 0,
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
        })
    return total, rows


def progress_line(elapsed, wanted, outcomes):
    total = sum(len(v) for v in outcomes.values())
    ok = len(outcomes.get((200, "ok"), []))
    degraded = sum(len(v) for (s, _), v in outcomes.items() if s == 503)
    latencies = sorted(x for v in outcomes.values() for x in v)
    p99 = percentile(latencies, 99)
    p99_text = f"{p99 * 1000:.1f} ms" if p99 is not None else "-"
    return (f"{elapsed:6.1f}s  sent {wanted:6d}  answered {total:6d}  ok {ok:6d}  "
            f"503 {degraded:6d}  p99 {p99_text}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Steady traffic to service-b's /call-echo, with a summary by status and kind.")
    parser.add_argument("--url", default="http://127.0.0.1:8081", help="service-b's base URL (default %(default)s)")
    parser.add_argument("--rate", type=positive(float), default=10.0, help="requests per second (default %(default)s)")
    parser.add_argument("--duration", type=duration, default=60.0, help="how long, e.g. 30s or 5m (default 60s)")
    parser.add_argument("--concurrency", type=positive(int), default=8,
                        help="requests in flight at most (default %(default)s)")
    parser.add_argument("--msg", default="hello from lab-traffic", help="the msg to echo")
    parser.add_argument("--timeout", type=duration, default=10.0, help="per request (default 10s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--trace-ids", metavar="FILE",
                        help="write each degraded answer's kind, trace id and whether it was sampled, "
                             "one per line, to find them in Jaeger")
    args = parser.parse_args(argv)

    target = urllib.parse.urlsplit(args.url)
    if target.scheme != "http" or not target.hostname:
        parser.error(f"--url {args.url!r}: expected http://HOST:PORT")
    base = target.path.rstrip("/")
    path_and_query = f"{base}/call-echo?{urllib.parse.urlencode({'msg': args.msg})}"

    results = Results()
    jobs = queue.Queue()
    workers = [threading.Thread(target=worker, args=(target, path_and_query, args.timeout, jobs, results),
                                daemon=True)
               for _ in range(args.concurrency)]
    for w in workers:
        w.start()

    live = sys.stderr.isatty() and not args.json
    total = int(args.rate * args.duration)
    started = time.monotonic()
    next_progress = started + 1
    for i in range(total):
        due = started + i / args.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        jobs.put(i)
        if live and time.monotonic() >= next_progress:
            next_progress += 1
            print("\r" + progress_line(time.monotonic() - started, i + 1, results.snapshot()),
                  end="", file=sys.stderr, flush=True)
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    if live:
        print("\r" + progress_line(elapsed, total, results.snapshot()), file=sys.stderr)

    if args.trace_ids:
        with open(args.trace_ids, "w") as out:
            for kind, trace_id, sampled in results.traces:
                out.write(f"{kind} {trace_id} {'sampled' if sampled else 'not-sampled'}\n")
    answered, rows = table(results.snapshot())
    summary = {
        "url": args.url,
        "requests": total,
        "answered": answered,
        "seconds": round(elapsed, 2),
        "rate_achieved": round(answered / elapsed, 2) if elapsed else 0,
        "outcomes": rows,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{total} requests to {args.url}/call-echo in {elapsed:.1f} s "
          f"({summary['rate_achieved']} answered/s; asked for {args.rate:g}/s)")
    print(f"{'status':>6}  {'kind':<22} {'count':>7} {'share':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for row in rows:
        print(f"{row['status']:>6}  {row['kind']:<22} {row['count']:>7} {row['share']:>7.1%} "
              f"{row['p50_ms']:>9} {row['p99_ms']:>9}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
