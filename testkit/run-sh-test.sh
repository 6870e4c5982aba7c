#!/usr/bin/env bash
# ./run.sh the way a user runs it (it builds the release binaries first):
# both daemons answer on 8080/8081; stopping service-a leaves service-b
# running and answering 503 connection_refused; a service-a started again by
# hand is used at once; Ctrl-C (SIGINT to the whole foreground group, as a
# terminal sends it) stops everything and run.sh exits 0.
# Needs 127.0.0.1:8080 and :8081 free (it checks).
#
# run.sh must work on bash 4.4 and later (Debian 11 and Ubuntu 20.04 have
# 5.0). This machine's bash is newer, so run.sh runs here with `wait` as bash
# 5.0 has it: no -p, no -f, no ids after -n (BASH_ENV defines the function
# before the script's first line). A run.sh that uses them fails this test.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "run-sh-test: FAIL: $*" >&2; exit 1; }
ok() { echo "run-sh-test: ok: $*" >&2; }
get() { curl -s --max-time 3 -w ' %{http_code}' "$1" || true; }
# echoes MSG WHAT: service-b's answer to MSG is the 200 echo of MSG.
echoes() {
    local out
    out=$(get "http://127.0.0.1:8081/call-echo?msg=$1")
    [ "$out" = "{\"service_b\":\"ok\",\"service_a\":{\"echo\":\"${1//+/ }\"}} 200" ] \
        || fail "$2: $out"
    ok "$2: $out"
}

# until DEADLINE_SECONDS CMD...: poll CMD until it succeeds.
until_ok() {
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

for port in 8080 8081; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
        fail "something already listens on 127.0.0.1:$port; stop it first"
    fi
done

log=$(mktemp)
old_wait=$(mktemp)
extra_a=
cleanup() {
    [ -n "${group:-}" ] && kill -KILL -- "-$group" 2>/dev/null || true
    [ -n "$extra_a" ] && kill -KILL "$extra_a" 2>/dev/null || true
    rm -f "$log" "$old_wait"
}
trap cleanup EXIT

# Job control gives run.sh its own process group, as in a terminal, so that
# SIGINT reaches it (bash ignores SIGINT in background jobs otherwise).
cat > "$old_wait" <<'EOF'
wait() {
    case "${1:-}" in
        -p | -f) echo "wait: $1: invalid option (bash < 5.1)" >&2; return 2 ;;
        -n) [ $# -eq 1 ] || { echo "wait: -n takes no ids (bash < 5.1)" >&2; return 2; } ;;
    esac
    builtin wait "$@"
}
EOF
set -m
BASH_ENV=$old_wait ./run.sh >"$log" 2>&1 &
group=$!
set +m

# The first run may compile for minutes.
# run.sh has exited (a zombie until waited for).
gone() { case "$(ps -o stat= -p "$group")" in '' | Z*) return 0 ;; *) return 1 ;; esac; }
up_or_gone() { curl -sf --max-time 1 http://127.0.0.1:8081/health || gone; }
until_ok 900 up_or_gone && ! gone \
    || { cat "$log" >&2; fail "service-b never answered /health (or run.sh exited)"; }
until_ok 10 curl -sf --max-time 1 http://127.0.0.1:8080/health \
    || fail "service-a never answered /health"

echoes hello+run.sh "both daemons answer"

a_pid=$(pgrep -x -P "$group" service-a) ||
    fail "service-a is not running under run.sh; run.sh said: $(tail -n 3 "$log")"
kill -TERM "$a_pid"
until_ok 10 bash -c '! curl -s -o /dev/null --max-time 1 http://127.0.0.1:8080/health' \
    || fail "service-a did not stop"
out=$(get 'http://127.0.0.1:8081/call-echo?msg=x')
case "$out" in
    *'"error":"connection_refused"'*' 503') ok "service-a stopped, service-b answers: $out" ;;
    *) fail "with service-a stopped, service-b answered: $out" ;;
esac
grep -q 'run.sh: service-a stopped; service-b keeps answering' "$log" \
    || fail "run.sh did not say service-a stopped"
kill -0 "$group" 2>/dev/null || fail "run.sh exited when service-a stopped"

target/release/service-a 2>/dev/null &
extra_a=$!
until_ok 10 curl -sf --max-time 1 http://127.0.0.1:8080/health \
    || fail "service-a started by hand never answered"
echoes back "service-a started again, service-b answers"
kill -TERM "$extra_a"; wait "$extra_a" || true; extra_a=

# Ctrl-C.
kill -INT -- "-$group"
status=0
wait "$group" || status=$?
[ "$status" -eq 0 ] || fail "run.sh exited $status after Ctrl-C"
until_ok 10 bash -c '! pgrep -x -P '"$group"' service-b' \
    || fail "service-b still running after Ctrl-C"
curl -s -o /dev/null --max-time 1 http://127.0.0.1:8081/health \
    && fail "something still answers on 8081 after Ctrl-C"
group=
ok "Ctrl-C stopped everything, run.sh exited 0"
