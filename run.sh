#!/usr/bin/env bash
# Builds both daemons and runs them in the foreground with their defaults:
# service-a on 127.0.0.1:8080, service-b on 127.0.0.1:8081. Ctrl-C stops both
# (each drains its in-flight requests first). Settings come from the usual
# variables, e.g. SERVICE_B_UPSTREAM_TIMEOUT=300ms ./run.sh
#
# To see the failure the lab is about, from another terminal:
#   kill -STOP $(pgrep -x service-a)   # service-a hangs: 503 "timeout" after 1 s
#   kill -CONT $(pgrep -x service-a)   # it answers again
#   kill $(pgrep -x service-a)         # service-a stops: 503 "connection_refused";
#                                      # service-b keeps running here
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --bins

pids=()
stop() {
    if [ "${#pids[@]}" -gt 0 ]; then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
    wait || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# Each line says which daemon wrote it.
target/release/service-a 2> >(sed -u 's/^/[service-a] /' >&2) & a=$!
target/release/service-b 2> >(sed -u 's/^/[service-b] /' >&2) & b=$!
pids=("$a" "$b")
echo "run.sh: both daemons running; try: curl 'http://127.0.0.1:8081/call-echo?msg=hello' (Ctrl-C stops both)" >&2

# Works on bash 4.4 and later (Debian 10+, Ubuntu 18.04+): plain `wait -n`,
# no ids and no -p (bash 5.1), so the daemon that ended is the one whose pid
# is gone once wait has reaped it.
alive() { kill -0 "$1" 2>/dev/null; }
while :; do
    status=0
    wait -n || status=$?
    # A signal to this script (Ctrl-C) interrupts wait: the trap has already
    # stopped both and exited.
    if ! alive "$b"; then
        name=service-b
    elif [ "${#pids[@]}" -eq 2 ] && ! alive "$a"; then
        if [ "$status" -eq 0 ]; then
            # Stopped from outside (SIGTERM drains and exits 0): exactly the
            # fault service-b exists to survive, so keep it running.
            pids=("$b")
            echo "run.sh: service-a stopped; service-b keeps answering (503 connection_refused)." \
                "Start service-a again in another terminal: target/release/service-a" >&2
            continue
        fi
        name=service-a
    else
        continue # something else ended (a log pipe); both daemons still run
    fi
    # Anything else (a port in use, service-b stopped) ends the session.
    echo "run.sh: $name exited (status $status); stopping" >&2
    exit "$status"
done
