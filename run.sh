#!/usr/bin/env bash
# Builds both daemons and runs them in the foreground with their defaults:
# service-a on 127.0.0.1:8080, service-b on 127.0.0.1:8081. Ctrl-C stops both
# (each drains its in-flight requests first). Settings come from the usual
# variables, e.g. SERVICE_B_UPSTREAM_TIMEOUT=300ms ./run.sh
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --bins

pids=()
stop() {
    [ "${#pids[@]}" -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
    wait || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# Each line says which daemon wrote it.
target/release/service-a 2> >(sed -u 's/^/[service-a] /' >&2) & pids+=($!)
target/release/service-b 2> >(sed -u 's/^/[service-b] /' >&2) & pids+=($!)
echo "run.sh: both daemons running; try: curl 'http://127.0.0.1:8081/call-echo?msg=hello' (Ctrl-C stops both)" >&2

# If either daemon exits on its own (a port in use, say), stop the other.
status=0
wait -n "${pids[@]}" || status=$?
[ "$status" -eq 0 ] || echo "run.sh: a daemon failed (status $status); stopping the other" >&2
exit "$status"
