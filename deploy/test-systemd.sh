#!/usr/bin/env bash
# End-to-end test of the units under a real systemd: boots this machine's own
# systemd in a container (systemd-nspawn, sharing the host's network),
# installs with deploy/install.sh as a user would, and checks what a user of
# `systemctl` would notice. Needs root. Cleans up after itself, pass or fail.
#
#   deploy/test-systemd.sh [--binaries DIR]   default: target/release (built if missing)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
binaries=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binaries) binaries=$(cd "${2:?--binaries needs a directory}" && pwd); shift ;;
        *) echo "usage: $0 [--binaries DIR]" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || { echo "test-systemd.sh: needs root (systemd-nspawn)" >&2; exit 1; }
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "$binaries" ]; then
    binaries="$repo/target/release"
    [ -x "$binaries/service-a" ] && [ -x "$binaries/service-b" ] ||
        cargo build --release --locked --bins --manifest-path "$repo/Cargo.toml"
fi

work=$(mktemp -d)
machine="lab-e2e-$$"
nspawn_pid=""
failures=0

cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# A hard bound on the whole test, whatever hangs (its sleep holds no pipe open).
( sleep 300 && echo "test-systemd.sh: timed out after 300 s" >&2 && kill -TERM $$ ) </dev/null >/dev/null 2>&1 &

say() { printf '\n--- %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
expect() { # expect DESCRIPTION COMMAND...: PASS if the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# ---------------------------------------------------------------- boot
echo 'disable *' > "$work/disable.preset"
systemd-nspawn -D / --volatile=yes --register=no --keep-unit -M "$machine" \
    --tmpfs=/usr/local \
    --bind-ro="$repo:/lab" --bind-ro="$binaries:/lab-bin" \
    --bind-ro="$work/disable.preset:/etc/systemd/system-preset/00-disable.preset" \
    --console=pipe -b systemd.condition-first-boot=false >"$work/boot.log" 2>&1 &
nspawn_pid=$!

# The container's init: a "systemd" child (or grandchild, depending on the
# nspawn version) of the nspawn process.
find_init() {
    local child
    pgrep -P "$nspawn_pid" -x systemd && return 0
    for child in $(pgrep -P "$nspawn_pid"); do
        pgrep -P "$child" -x systemd && return 0
    done
    return 1
}
init_pid=""
for _ in $(seq 100); do
    init_pid=$(find_init | head -n1 || true)
    [ -n "$init_pid" ] && [ -S "/proc/$init_pid/root/run/systemd/private" ] && break
    sleep 0.1
done
[ -n "$init_pid" ] || { cat "$work/boot.log"; echo "container did not boot" >&2; exit 1; }

# Runs a command inside the container, bounded (nsenter passes no signals on).
ct() { nsenter -t "$init_pid" -a timeout 60 "$@"; }
state=$(ct systemctl is-system-running --wait || true)
echo "container $machine booted (init pid $init_pid, state $state)"

show() { ct systemctl show -p "$2" --value "$1"; }
body() { curl -s --max-time 5 "$1"; }
code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1"; }
contains() { case "$1" in *"$2"*) return 0 ;; *) return 1 ;; esac; }
B=http://127.0.0.1:8081
A=http://127.0.0.1:8080

# ---------------------------------------------------------------- install
say "install, as a user would"
ct /lab/deploy/install.sh --binaries /lab-bin --no-start
expect "install.sh put the binaries, units and settings in place" \
    ct test -x /usr/local/bin/service-a -a -x /usr/local/bin/service-b \
    -a -f /etc/systemd/system/service-b.service -a -f /etc/default/service-b
ct sh -c 'echo "# edited by the user" >> /etc/default/service-b'
again=$(ct /lab/deploy/install.sh --binaries /lab-bin --no-start 2>&1)
expect "running install.sh again changes nothing and keeps an edited settings file" \
    sh -c "! printf '%s' \"\$1\" | grep -q installed && printf '%s' \"\$1\" | grep -q 'kept your /etc/default/service-b'" _ "$again"

# ---------------------------------------------------------------- 1
say "1. systemctl start returns only once both are ready"
ct systemctl start service-a service-b
# No retry: Type=notify means start returned after READY=1.
expect "service-a answers /health right after start" test "$(code $A/health)" = 200
expect "service-b answers /health right after start" test "$(code $B/health)" = 200
expect "both active (running)" \
    test "$(show service-a ActiveState)/$(show service-a SubState) $(show service-b ActiveState)/$(show service-b SubState)" = "active/running active/running"
status_b=$(show service-b StatusText)
expect "systemctl status shows the STATUS text ($status_b)" contains "$status_b" "serving on 127.0.0.1:8081"
expect "curl through service-b gives the contract's 200 body" \
    test "$(body "$B/call-echo?msg=hello")" = '{"service_b":"ok","service_a":{"echo":"hello"}}'
ct systemctl status service-a service-b --no-pager --lines=0 || true

# ---------------------------------------------------------------- 2
say "2. stopping service-a leaves service-b up, answering 503"
ct systemctl stop service-a
reply=$(body "$B/call-echo?msg=hello")
expect "service-b still active" test "$(show service-b ActiveState)" = active
expect "503 connection_refused ($reply)" contains "$reply" '"error":"connection_refused"'
ct systemctl start service-a
expect "200 again once service-a is started" test "$(code "$B/call-echo?msg=back")" = 200

# ---------------------------------------------------------------- 3
say "3. a frozen service-a: 503 timeout at the deadline, then the watchdog restarts it"
b_pid=$(show service-b MainPID)
a_restarts=$(show service-a NRestarts)
ct systemctl kill -s SIGSTOP service-a
timed=$(curl -s --max-time 5 -w ' %{time_total}' "$B/call-echo?msg=frozen")
elapsed=${timed##* }
expect "503 timeout from service-b (${timed% *})" contains "$timed" '"error":"timeout"'
expect "answered at the 1 s deadline (took ${elapsed}s)" awk -v t="$elapsed" 'BEGIN { exit !(t >= 1.0 && t < 1.1) }'
recovered=no
for _ in $(seq 60); do
    if [ "$(show service-a NRestarts)" -gt "$a_restarts" ] && [ "$(code "$B/call-echo?msg=x")" = 200 ]; then
        recovered=yes
        break
    fi
    sleep 0.5
done
expect "systemd restarted service-a (watchdog) and service-b answers 200 again" test "$recovered" = yes
expect "service-b was not touched (MainPID $b_pid)" test "$(show service-b MainPID)" = "$b_pid"

# ---------------------------------------------------------------- 4
say "4. with the .socket units, restarting service-a loses no request"
ct /lab/deploy/install.sh --binaries /lab-bin --socket-activation
expect "service-a.socket listening" test "$(show service-a.socket ActiveState)" = active
expect "service-a serves the socket systemd passed" contains "$(show service-a StatusText)" "(socket from systemd)"
load() { # sequential requests for $1 seconds; prints "ok failed", keeps failed answers in $2
    local ok=0 bad=0 end=$((SECONDS + $1)) answer
    while [ $SECONDS -lt "$end" ]; do
        answer=$(curl -s --max-time 5 -w ' %{http_code}' "$B/call-echo?msg=load" || true)
        if [ "${answer##* }" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "$answer" >> "$2"; fi
    done
    echo "$ok $bad"
}
for i in 1 2 3 4; do load 6 "$work/failed" > "$work/load.$i" & done
sleep 1.5
ct systemctl restart service-a
sleep 1.5
ct systemctl restart service-a
wait_for_loads() { for i in 1 2 3 4; do while [ ! -s "$work/load.$i" ]; do sleep 0.2; done; done; }
wait_for_loads
total_ok=0 total_bad=0
for i in 1 2 3 4; do read -r ok bad < "$work/load.$i"; total_ok=$((total_ok + ok)); total_bad=$((total_bad + bad)); done
expect "no failed request across two restarts ($total_ok ok, $total_bad failed)" test "$total_bad" -eq 0 -a "$total_ok" -gt 100
[ -s "$work/failed" ] && sort "$work/failed" | uniq -c | head -n 5

# ---------------------------------------------------------------- 5
say "5. stopping service-b is clean; the journal holds the degraded answers"
b_main=$(show service-b ExecMainPID)
expect "service-b ran (ExecMainPID $b_main)" test "$b_main" -gt 0
start=$(date +%s.%N)
ct systemctl stop service-b
took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
expect "stopped in ${took}s, well under TimeoutStopSec=15s" awk -v t="$took" 'BEGIN { exit !(t < 5) }'
expect "Result=success, exit status 0" \
    test "$(show service-b Result) $(show service-b ExecMainStatus)" = "success 0"
records=$(ct journalctl -u service-b -o json --no-pager KIND=timeout)
expect "journalctl -u service-b KIND=timeout finds the record, with its fields" \
    sh -c 'printf "%s" "$1" | grep -q "\"STATUS\":\"503\"" && printf "%s" "$1" | grep -q "\"UPSTREAM_STATUS\":\"504\"" && printf "%s" "$1" | grep -Eq "\"TRACE_ID\":\"[0-9a-f]{32}\""' _ "$records"
refused=$(ct journalctl -u service-b -o cat --no-pager KIND=connection_refused | head -n1)
expect "and KIND=connection_refused ($refused)" contains "$refused" "degraded: connection_refused"
ct journalctl -u service-b -o cat --no-pager PRIORITY=4 | head -n 3

# ---------------------------------------------------------------- 6
say "6. hardening: systemd-analyze security --offline=yes"
for unit in service-a service-b; do
    line=$(systemd-analyze security --offline=yes "$repo/deploy/$unit.service" 2>/dev/null | grep 'Overall exposure level')
    echo "$line"
    score=$(printf '%s' "$line" | sed -E 's/.*: ([0-9.]+) .*/\1/')
    expect "$unit.service exposure $score <= 0.9" awk -v s="$score" 'BEGIN { exit !(s <= 0.9) }'
done

# ---------------------------------------------------------------- bad settings
say "a bad setting stops the unit from starting, and says why"
ct sh -c 'echo "SERVICE_A_LISTEN=nonsense" >> /etc/default/service-a'
if ct systemctl restart service-a 2>/dev/null; then
    fail "systemctl restart service-a fails"
else
    pass "systemctl restart service-a fails"
fi
why=$(ct journalctl -u service-a -o cat --no-pager -n 20 | grep -F 'invalid value' | tail -n1 || true)
expect "the journal names the setting ($why)" contains "$why" '--listen / SERVICE_A_LISTEN'
refusal=$(ct /lab/deploy/install.sh --binaries /lab-bin 2>&1 || true)
expect "install.sh refuses the bad file too" contains "$refusal" "/etc/default/service-a has a bad setting"
ct sed -i '/^SERVICE_A_LISTEN=nonsense$/d' /etc/default/service-a
ct systemctl restart service-a
expect "fixed, it starts again" test "$(show service-a ActiveState)" = active

# ---------------------------------------------------------------- uninstall
say "uninstall"
ct /lab/deploy/install.sh --uninstall
expect "binaries and units gone, settings kept" \
    ct sh -c '! test -e /usr/local/bin/service-a && ! test -e /etc/systemd/system/service-b.socket && test -f /etc/default/service-b'
expect "nothing listens any more" test "$(code $B/health)" = 000
ct /lab/deploy/install.sh --uninstall --purge
expect "--purge removes the settings" ct sh -c '! test -e /etc/default/service-a && ! test -e /etc/default/service-b'

say "result"
if [ "$failures" -eq 0 ]; then
    echo "test-systemd.sh: all checks passed"
else
    echo "test-systemd.sh: $failures check(s) failed"
    exit 1
fi
