#!/usr/bin/env bash
# End-to-end test of the units under a real systemd: boots this machine's own
# systemd in containers (systemd-nspawn, sharing the host's network), installs
# as users do, and checks what a user of `systemctl` would notice:
#   1-6  deploy/install.sh --binaries in an empty system (--volatile=yes): the
#        units' behaviour (notify, watchdog, sockets, journal, hardening);
#   7-11 in a copy of this system (an in-memory overlay of it): a user with sudo and
#        a rustup toolchain runs `sudo deploy/install.sh` from a checkout;
#        modes; a user without a toolchain; two hosts (network namespaces);
#   12-14 in a fresh copy: the .deb installed, reinstalled, upgraded,
#        removed and purged with apt.
# Needs root. Cleans up after itself, pass or fail, and gives up after 1200 s
# whatever hangs.
#
#   deploy/test-systemd.sh [--binaries DIR] [--debs DIR]
#     --binaries: default target/release (built if missing)
#     --debs: two-service-lab_*.deb files (cargo deb -p service-b); the lowest
#             version is installed first, the highest is the upgrade
#
# The container shares the host's network: nothing else may listen on
# 127.0.0.1:8080 or :8081 while it runs (it checks, and stops if so).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
limit=${TEST_SYSTEMD_TIMEOUT:-1200} # seconds for the whole run
binaries=""
debs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binaries) binaries=$(cd "${2:?--binaries needs a directory}" && pwd); shift ;;
        --debs) debs=$(cd "${2:?--debs needs a directory}" && pwd); shift ;;
        *) echo "usage: $0 [--binaries DIR] [--debs DIR]" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || { echo "test-systemd.sh: needs root (systemd-nspawn)" >&2; exit 1; }
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
command -v sudo >/dev/null || missing+=(sudo)     # the users of check 9
command -v ip >/dev/null || missing+=(iproute2)   # the two hosts of check 13
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test-systemd.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi
if [ -z "$binaries" ]; then
    binaries="$repo/target/release"
    [ -x "$binaries/service-a" ] && [ -x "$binaries/service-b" ] ||
        cargo build --release --locked --bins --manifest-path "$repo/Cargo.toml"
fi
for d in service-a service-b; do
    [ -x "$binaries/$d" ] || { echo "test-systemd.sh: $binaries/$d: no such executable" >&2; exit 1; }
done

# Shared network: a daemon already on the ports would be tested instead of ours.
for port in 8080 8081; do
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        echo "test-systemd.sh: something already listens on 127.0.0.1:$port; stop it first" >&2
        exit 1
    fi
done

t0=$(date +%s.%N)
work=$(mktemp -d)
machine="lab-e2e-$$-$RANDOM"
main_pid=$$
nspawn_pid=""
guard_pid=""
failures=0

stop_container() {
    [ -n "$nspawn_pid" ] || return 0
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            echo "test-systemd.sh: container did not halt in 15 s; SIGKILL" >&2
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
}
cleanup() {
    local rc=$? job
    trap - EXIT TERM INT
    stop_container
    [ -n "$guard_pid" ] && kill -TERM "$guard_pid" 2>/dev/null || true
    for job in $(jobs -p); do # the request loops of check 4, if interrupted
        pkill -TERM -P "$job" 2>/dev/null || true
        kill -TERM "$job" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
interrupted() {
    if [ -e "$work/timed-out" ]; then
        echo "test-systemd.sh: FAIL: timed out after $limit s (raise TEST_SYSTEMD_TIMEOUT if this machine is slow)" >&2
    else
        echo "test-systemd.sh: interrupted" >&2
    fi
    exit 143
}
trap interrupted TERM INT

# The bound on the whole run: after $limit s, halt the container (which ends
# every command running in it) and stop this script, whose trap cleans up.
guard() {
    local s=""
    trap '[ -n "$s" ] && kill "$s" 2>/dev/null && wait "$s"; exit 0' TERM
    sleep "$limit" & s=$!
    wait "$s" || exit 0
    : > "$work/timed-out"
    [ -s "$work/nspawn.pid" ] && kill -TERM "$(cat "$work/nspawn.pid")" 2>/dev/null
    kill -TERM "$main_pid" 2>/dev/null
    exit 0
}
guard </dev/null >/dev/null 2>&1 &
guard_pid=$!

say() { printf '\n--- %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
expect() { # expect DESCRIPTION COMMAND...: PASS if the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
elapsed_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'; }

# ---------------------------------------------------------------- boot
# Units the host enables are masked in the containers: with the host's own
# /etc (an overlay of it) they would start there too, on the shared
# network (a database, timers that run apt).
masks=()
for link in /etc/systemd/system/*.wants/* /etc/systemd/system/*.requires/*; do
    [ -L "$link" ] || [ -e "$link" ] || continue
    masks+=("systemd.mask=${link##*/}")
done
echo 'disable *' > "$work/disable.preset"

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

# boot LABEL [--host-overlay] NSPAWN-OPTION...: boots this machine's own
# systemd in a container sharing the host's network; sets nspawn_pid and
# init_pid. --host-overlay: the container's / is this machine's, under a
# writable in-memory overlay (nspawn refuses --volatile=overlay on /, so the
# overlay is mounted here, in a mount namespace that ends with the container).
boot() {
    local label=$1 t state dir=/ launcher=()
    # An empty /etc: first boot, whose presets would enable and start all
    # that is installed; "disable *" stops that.
    local preset=(--bind-ro="$work/disable.preset:/etc/systemd/system-preset/00-disable.preset")
    shift
    if [ "${1:-}" = --host-overlay ]; then
        shift
        # This machine's /etc: no first boot. (The preset would also make
        # deb-systemd-helper leave the package's units disabled.)
        preset=()
        dir=$work/root-$label
        # IPAddressDeny= is a BPF program on the unit's cgroup: it needs
        # cgroup v2 inside, whatever the host runs, and the bpf() system call,
        # which nspawn filters out by default. Check 11 tests it.
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        set -- --system-call-filter=bpf "$@"
        mkdir -p "$dir" "$work/rw-$label"
        # shellcheck disable=SC2016 # expanded by that sh
        launcher=(unshare -m --propagation private sh -c '
            mount -t tmpfs lab-rw "$1" && mkdir "$1/upper" "$1/work" &&
            mount -t overlay lab-root -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$2" &&
            shift 2 && exec "$@"' _ "$work/rw-$label" "$dir")
    fi
    t=$(date +%s.%N)
    "${launcher[@]}" systemd-nspawn -D "$dir" --register=no --keep-unit -M "$machine-$label" "$@" "${preset[@]}" \
        --console=pipe -b systemd.condition-first-boot=false "${masks[@]}" \
        </dev/null >"$work/boot-$label.log" 2>&1 &
    nspawn_pid=$!
    unset SYSTEMD_NSPAWN_UNIFIED_HIERARCHY
    echo "$nspawn_pid" > "$work/nspawn.pid"
    init_pid=""
    for _ in $(seq 300); do
        kill -0 "$nspawn_pid" 2>/dev/null || break
        init_pid=$(find_init | head -n1 || true)
        [ -n "$init_pid" ] && [ -S "/proc/$init_pid/root/run/systemd/private" ] && break
        sleep 0.1
    done
    if [ -z "$init_pid" ] || [ ! -S "/proc/$init_pid/root/run/systemd/private" ]; then
        cat "$work/boot-$label.log"
        echo "test-systemd.sh: the container did not boot" >&2
        exit 1
    fi
    state=$(ct systemctl is-system-running --wait || true)
    echo "container $machine-$label booted in $(elapsed_since "$t")s (init pid $init_pid, state: $state)"
    case "$state" in
        running|degraded) ;;
        *) ct systemctl --failed --no-pager || true; echo "test-systemd.sh: system state $state" >&2; exit 1 ;;
    esac
    # A unit that stops cleanly and that nothing references is unloaded at
    # once, and `systemctl show` then reports Result=success even if it never
    # ran. This started target references every unit under test, so they stay
    # loaded.
    ct sh -c 'mkdir -p /run/systemd/system && cat > /run/systemd/system/lab-keep.target' <<'EOF'
[Unit]
Description=keeps the units under test loaded (test-systemd.sh)
After=service-a.service service-b.service service-a.socket service-b.socket
EOF
    ct systemctl daemon-reload
    ct systemctl start lab-keep.target
    # A container image's policy-rc.d (101: start nothing during apt runs)
    # is no part of a VM; it goes, in the container only.
    [ "$dir" = / ] || ct rm -f /usr/sbin/policy-rc.d
}

# Runs a command inside the container, bounded (nsenter passes no signals on).
ct() { nsenter -t "$init_pid" -a timeout 60 "$@"; }
# The same with a longer bound: ctt SECONDS COMMAND...
ctt() { local limit=$1; shift; nsenter -t "$init_pid" -a timeout "$limit" "$@"; }

# --volatile=yes: / and /etc are an empty tmpfs, /usr is the host's, read-only.
# --tmpfs=/usr/local gives install.sh a writable /usr/local/bin (empty at
# first), so the units find /usr/local/bin/service-{a,b}.
boot empty --volatile=yes --tmpfs=/usr/local --bind-ro="$repo:/lab" --bind-ro="$binaries:/lab-bin"

show() { ct systemctl show -p "$2" --value "$1"; }
code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" || true; }
ask() { curl -s --max-time 5 -w ' %{http_code} %{time_total}' "$1" || true; } # "BODY CODE SECONDS"
contains() { case "$1" in *"$2"*) return 0 ;; *) return 1 ;; esac; }
B=http://127.0.0.1:8081
A=http://127.0.0.1:8080
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost # curl straight to the daemons

# ---------------------------------------------------------------- install
say "install, as a user would: deploy/install.sh --binaries DIR"
ct /lab/deploy/install.sh --binaries /lab-bin --no-start
expect "install.sh put the binaries, units and settings in place" \
    ct test -x /usr/local/bin/service-a -a -x /usr/local/bin/service-b \
    -a -f /etc/systemd/system/service-a.service -a -f /etc/systemd/system/service-b.service \
    -a -f /etc/default/service-a -a -f /etc/default/service-b
expect "both units enabled" test "$(ct systemctl is-enabled service-a.service service-b.service | tr '\n' ' ')" = "enabled enabled "
settings=$(ct stat -c '%U:%G %a' /etc/default/service-a /etc/default/service-b | tr '\n' ' ')
expect "settings files root:root 0640 ($settings)" test "$settings" = "root:root 640 root:root 640 "
ct sh -c 'echo "# edited by the user" >> /etc/default/service-b'
again=$(ct /lab/deploy/install.sh --binaries /lab-bin --no-start 2>&1)
expect "running install.sh again changes nothing and keeps an edited settings file" \
    sh -c "! printf '%s' \"\$1\" | grep -q installed && printf '%s' \"\$1\" | grep -q 'kept your /etc/default/service-b'" _ "$again"

# ---------------------------------------------------------------- 1
say "1. systemctl start returns only once both are ready (Type=notify)"
t=$(date +%s.%N)
ct systemctl start service-a service-b
echo "systemctl start service-a service-b returned after $(elapsed_since "$t")s"
# No retry, no sleep: with Type=notify start returns after READY=1.
a_health=$(code $A/health) b_health=$(code $B/health)
expect "service-a answers /health at once after start ($a_health)" test "$a_health" = 200
expect "service-b answers /health at once after start ($b_health)" test "$b_health" = 200
status_a=$(ct systemctl status service-a --no-pager --lines=0 || true)
status_b=$(ct systemctl status service-b --no-pager --lines=0 || true)
printf '%s\n\n%s\n' "$status_a" "$status_b"
expect "service-a: Active: active (running)" contains "$status_a" "Active: active (running)"
expect "service-b: Active: active (running)" contains "$status_b" "Active: active (running)"
expect "systemctl status service-a shows its STATUS= text" contains "$status_a" 'Status: "serving on 127.0.0.1:8080'
expect "systemctl status service-b shows its STATUS= text" contains "$status_b" 'Status: "serving on 127.0.0.1:8081'
hello=$(curl -s --max-time 5 "$B/call-echo?msg=hello" || true)
expect "curl through service-b gives exactly the contract's 200 body ($hello)" \
    test "$hello" = '{"service_b":"ok","service_a":{"echo":"hello"}}'

# ---------------------------------------------------------------- 2
say "2. stopping service-a leaves service-b up, answering 503 connection_refused"
ct systemctl stop service-a
reply=$(ask "$B/call-echo?msg=hello")
read -r got _ <<<"${reply##*\}}"
expect "service-b still active ($(show service-b ActiveState))" test "$(show service-b ActiveState)" = active
expect "503 with \"error\":\"connection_refused\" (${reply% * *})" \
    sh -c '[ "$1" = 503 ] && case "$2" in *\"error\":\"connection_refused\"*) ;; *) exit 1 ;; esac' _ "$got" "$reply"
ct systemctl start service-a
back=$(code "$B/call-echo?msg=back")
expect "200 again once service-a is started ($back)" test "$back" = 200

# ---------------------------------------------------------------- 3
say "3. a frozen service-a: 503 timeout at the 1 s deadline, then the watchdog restarts it"
b_pid=$(show service-b MainPID)
a_pid=$(show service-a MainPID)
a_restarts=$(show service-a NRestarts)
ct systemctl kill -s SIGSTOP service-a
frozen_at=$(date +%s.%N)
reply=$(ask "$B/call-echo?msg=frozen")
read -r got took <<<"${reply##*\}}"
expect "503 with \"error\":\"timeout\" (${reply% * *})" \
    sh -c '[ "$1" = 503 ] && case "$2" in *\"error\":\"timeout\"*) ;; *) exit 1 ;; esac' _ "$got" "$reply"
expect "answered at about the 1 s deadline (${took}s)" awk -v t="$took" 'BEGIN { exit !(t >= 1.0 && t < 1.2) }'
recovered=no
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ]; do
    if [ "$(show service-a NRestarts)" -gt "$a_restarts" ] && [ "$(show service-a MainPID)" != "$a_pid" ] &&
        [ "$(code "$B/call-echo?msg=thawed")" = 200 ]; then
        recovered=yes
        break
    fi
    sleep 0.5
done
new_a_pid=$(show service-a MainPID)
expect "systemd restarted service-a (NRestarts $a_restarts -> $(show service-a NRestarts), MainPID $a_pid -> $new_a_pid) and service-b answers 200 again, $(elapsed_since "$frozen_at")s after the freeze" \
    test "$recovered" = yes
why=$(ct journalctl -u service-a -o cat --no-pager | grep -m1 -i 'watchdog timeout' || true)
expect "it was the watchdog: \"$why\"" contains "$why" "atchdog timeout"
expect "service-b was not touched (MainPID $b_pid -> $(show service-b MainPID), NRestarts $(show service-b NRestarts))" \
    test "$(show service-b MainPID)" = "$b_pid" -a "$(show service-b NRestarts)" = 0

# ---------------------------------------------------------------- 4
say "4. with the .socket units, restarting service-a loses no request"
ct /lab/deploy/install.sh --binaries /lab-bin --socket-activation
expect "service-a.socket and service-b.socket enabled and listening" \
    test "$(ct systemctl is-enabled service-a.socket service-b.socket | tr '\n' ' ')$(show service-a.socket ActiveState) $(show service-b.socket ActiveState)" = "enabled enabled active active"
expect "service-a serves the socket systemd passed ($(show service-a StatusText))" \
    contains "$(show service-a StatusText)" "(socket from systemd)"
expect "service-b serves the socket systemd passed ($(show service-b StatusText))" \
    contains "$(show service-b StatusText)" "(socket from systemd)"
load() { # sequential requests for $1 seconds; writes "ok failed slowest" to $2, failed answers to $2.failed
    local ok=0 bad=0 end=$((SECONDS + $1)) answer slowest=0
    while [ $SECONDS -lt "$end" ]; do
        answer=$(curl -s --max-time 5 -w ' %{http_code} %{time_total}' "$B/call-echo?msg=load" || true)
        read -r got took <<<"${answer##*\}}"
        if [ "$got" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "$answer" >> "$2.failed"; fi
        slowest=$(awk -v a="$slowest" -v b="$took" 'BEGIN { print (b > a ? b : a) }')
    done
    echo "$ok $bad $slowest" > "$2"
}
a_pid=$(show service-a MainPID)
loads=()
for i in 1 2 3 4; do load 6 "$work/load.$i" & loads+=($!); done
sleep 1.5
ct systemctl restart service-a
mid_pid=$(show service-a MainPID)
sleep 1.5
ct systemctl restart service-a
wait "${loads[@]}"
total_ok=0 total_bad=0 slowest=0
for i in 1 2 3 4; do
    read -r ok bad slow < "$work/load.$i"
    total_ok=$((total_ok + ok)) total_bad=$((total_bad + bad))
    slowest=$(awk -v a="$slowest" -v b="$slow" 'BEGIN { print (b > a ? b : a) }')
done
expect "service-a restarted twice meanwhile (MainPID $a_pid -> $mid_pid -> $(show service-a MainPID))" \
    test "$a_pid" != "$mid_pid" -a "$mid_pid" != "$(show service-a MainPID)"
expect "4 request loops for 6 s: $total_ok answered 200, $total_bad failed (must be 0); slowest answer ${slowest}s" \
    test "$total_bad" -eq 0 -a "$total_ok" -gt 100
if [ "$total_bad" -gt 0 ]; then # what the failures were: count, HTTP status, error kind
    cat "$work"/load.*.failed | sed -E 's/^(.*"error":"([a-z_]+)".*|.*) ([0-9]{3}) [0-9.]+$/\3 \2/' | sort | uniq -c
    head -n 2 "$work"/load.*.failed | grep -v '^==>' || true
fi

# ---------------------------------------------------------------- 5
say "5. stopping service-b is clean and quick; the journal holds the degraded answers"
b_main=$(show service-b ExecMainPID)
expect "service-b is running (ExecMainPID $b_main)" test "$b_main" -gt 0 -a "$(show service-b SubState)" = running
t=$(date +%s.%N)
ct systemctl stop service-b
took=$(elapsed_since "$t")
after=""
for p in LoadState ActiveState Result ExecMainPID ExecMainCode ExecMainStatus; do after+="$p=$(show service-b $p) "; done
echo "after stop: $after"
expect "stopped in ${took}s, well under TimeoutStopSec=15s" awk -v t="$took" 'BEGIN { exit !(t < 5) }'
expect "still loaded, and what it reports is about the process that ran (ExecMainPID $b_main)" \
    test "$after" != "${after/LoadState=loaded ActiveState=inactive /}" -a "$(show service-b ExecMainPID)" = "$b_main"
expect "Result=success, ExecMainCode=1 (exited), ExecMainStatus=0" \
    test "$(show service-b Result) $(show service-b ExecMainCode) $(show service-b ExecMainStatus)" = "success 1 0"
json_has() { # json_has JSON-LINES KEY VALUE: some record has "KEY":"VALUE"
    printf '%s' "$1" | grep -q "\"$2\":\"$3\""
}
records=$(ct journalctl -u service-b KIND=timeout -o json --no-pager || true)
n=$(printf '%s' "$records" | grep -c . || true)
expect "journalctl -u service-b KIND=timeout -o json: $n record(s) with KIND, STATUS=503, UPSTREAM_STATUS=504, TRACE_ID" \
    sh -c '[ "$1" -gt 0 ]' _ "$n"
for field in KIND=timeout STATUS=503 UPSTREAM_STATUS=504; do
    expect "  ... field $field" json_has "$records" "${field%%=*}" "${field#*=}"
done
expect "  ... field TRACE_ID (32 hex digits)" sh -c 'printf "%s" "$1" | grep -Eq "\"TRACE_ID\":\"[0-9a-f]{32}\""' _ "$records"
records=$(ct journalctl -u service-b KIND=connection_refused -o json --no-pager || true)
expect "journalctl -u service-b KIND=connection_refused: STATUS=503, UPSTREAM_STATUS=502" \
    sh -c 'printf "%s" "$1" | grep "\"KIND\":\"connection_refused\"" | grep "\"STATUS\":\"503\"" | grep -q "\"UPSTREAM_STATUS\":\"502\""' _ "$records"
ct journalctl -u service-b -o cat --no-pager KIND=timeout | head -n 2 || true

# ---------------------------------------------------------------- 6
say "6. hardening: systemd-analyze security --offline=yes"
for unit in service-a service-b; do
    line=$(systemd-analyze security --offline=yes "$repo/deploy/$unit.service" 2>/dev/null | grep 'Overall exposure level' || true)
    echo "$line"
    score=$(printf '%s' "$line" | sed -nE 's/.*: ([0-9.]+) .*/\1/p')
    expect "$unit.service exposure ${score:-?} <= 0.9" awk -v s="${score:-99}" 'BEGIN { exit !(s <= 0.9) }'
done

# ---------------------------------------------------------------- 7
# journald keeps at most LogRateLimitBurst= lines of a unit per
# LogRateLimitIntervalSec= and priority (10 000 per 30 s by default, scaled up
# with free space) and drops the rest. After a flood of requests that went
# well, the degraded answers that follow in the same interval must each have
# their WARN line in the journal. The limit is lowered here (a drop-in,
# removed after) so that a flood this machine can send in 20 s passes it;
# the lines the daemon writes are the same. Loopback only; bounded in count
# and time.
journal_keeps_degraded_lines_after_a_flood() {
    local flood=20000 degraded=300 dropin=/run/systemd/system/service-b.service.d
    local cursor codes sent=0 answered=0 found=0 suppressed t
    say "7. after a flood of requests, every degraded answer is in the journal"
    ct sh -c "mkdir -p $dropin && printf '[Service]\nLogRateLimitIntervalSec=30s\nLogRateLimitBurst=500\n' > $dropin/50-flood-test.conf"
    ct systemctl daemon-reload
    ct systemctl reset-failed service-b # earlier checks restarted it often: no start-limit-hit
    ct systemctl restart service-b
    ct systemctl start service-a.socket service-a.service
    cursor=$(ct journalctl -u service-b -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p')
    t=$(date +%s.%N)
    # One curl, one keep-alive connection, up to $flood requests in 20 s.
    codes=$(timeout 20 curl -s --max-time 5 -o /dev/null -w '%{http_code}\n' "$B/health?n=[1-$flood]" || true)
    sent=$(printf '%s\n' "$codes" | grep -c '^200$' || true)
    expect "flood: $sent requests answered 200 in $(elapsed_since "$t")s (more than the 500-line burst)" test "$sent" -gt 2000
    # With the .socket units (check 4) the socket would start service-a again.
    ct systemctl stop service-a.socket service-a.service
    codes=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}\n' "$B/call-echo?msg=d[1-$degraded]" || true)
    answered=$(printf '%s\n' "$codes" | grep -c '^503$' || true)
    expect "service-a stopped: $answered of $degraded answered 503" test "$answered" -eq "$degraded"
    # journald may take a moment to write what it received: poll, bounded.
    for _ in $(seq 50); do
        found=$(ct journalctl -u service-b --after-cursor="$cursor" -o cat --no-pager |
            grep -c 'GET /call-echo 503 degraded: ' || true)
        [ "$found" -ge "$answered" ] && break
        sleep 0.2
    done
    suppressed=$(ct journalctl -u systemd-journald -o cat --no-pager | grep -F 'service-b.service' | grep -i 'suppressed' | tail -n1 || true)
    expect "the journal holds all $answered degraded lines ($found found${suppressed:+; journald: $suppressed})" \
        test "$found" -eq "$answered" -a "$answered" -gt 0
    # The lowered limit goes with the next start of service-b.
    ct rm -rf "$dropin"
    ct systemctl daemon-reload
    ct systemctl start service-a.socket service-a.service
}
journal_keeps_degraded_lines_after_a_flood

# ---------------------------------------------------------------- 8
# The README's "Break service-a on purpose", as a user does it: write a fault
# into /etc/service-a/fault, systemctl reload service-a, curl service-b.
faults_switched_by_reload() {
    local a_pid a_restarts spec kind reply health status_a refused
    say "8. faults injected on purpose, switched by systemctl reload service-a"
    ct systemctl restart service-b # a closed breaker to start with
    ct mkdir -p /etc/service-a
    a_pid=$(show service-a MainPID)
    a_restarts=$(show service-a NRestarts)
    # One call each, so the breaker (5 failures in a row) stays closed.
    for case in "delay=300ms ok" "status=500 upstream_status" "garbage invalid_response" \
        "reset connection_failed" "hang timeout" "off ok"; do
        spec=${case% *} kind=${case##* }
        ct sh -c "echo '$spec' > /etc/service-a/fault"
        ct systemctl reload service-a
        health=""
        for _ in $(seq 50); do
            health=$(curl -s --max-time 5 "$A/health" || true)
            contains "$health" "\"fault\":\"$spec\"" && break
            sleep 0.1
        done
        expect "after reload, /health says the fault in force ($health)" contains "$health" "\"fault\":\"$spec\""
        reply=$(curl -s --max-time 5 "$B/call-echo?msg=fault" || true)
        if [ "$kind" = ok ]; then
            expect "$spec: /call-echo answers 200 ($reply)" contains "$reply" '"service_a":{"echo":"fault"}'
        else
            expect "$spec: /call-echo answers 503 $kind ($reply)" contains "$reply" "\"error\":\"$kind\""
        fi
        if [ "$spec" = "status=500" ]; then
            status_a=$(ct systemctl status service-a --no-pager --lines=0 || true)
            expect "systemctl status service-a shows the fault" contains "$status_a" "fault status=500"
        fi
    done
    ct sh -c "echo 'status=503' > /etc/service-a/fault"
    ct systemctl reload service-a
    ct sh -c "echo 'status=999' > /etc/service-a/fault"
    ct systemctl reload service-a
    refused=""
    for _ in $(seq 50); do
        refused=$(ct journalctl -u service-a -o cat --no-pager -n 20 | grep -F 'reload refused' | tail -n1 || true)
        [ -n "$refused" ] && break
        sleep 0.1
    done
    expect "a bad fault is refused in the journal ($refused)" contains "$refused" "400 to 599"
    health=$(curl -s --max-time 5 "$A/health" || true)
    expect "and the fault in force stays ($health)" contains "$health" '"fault":"status=503"'
    expect "no restart: MainPID $a_pid -> $(show service-a MainPID), NRestarts $a_restarts -> $(show service-a NRestarts)" \
        test "$(show service-a MainPID)" = "$a_pid" -a "$(show service-a NRestarts)" = "$a_restarts"
    ct rm -f /etc/service-a/fault
    ct systemctl reload service-a
}
faults_switched_by_reload

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
printf '%s\n' "$refusal" | tail -n 2
expect "install.sh refuses the bad file too" contains "$refusal" "/etc/default/service-a has a bad setting"
ct sed -i '/^SERVICE_A_LISTEN=nonsense$/d' /etc/default/service-a
ct systemctl restart service-a
expect "fixed, it starts again" test "$(show service-a ActiveState)" = active

# ---------------------------------------------------------------- uninstall
say "uninstall: deploy/install.sh --uninstall"
ct /lab/deploy/install.sh --uninstall
expect "binaries and units gone, settings kept" \
    ct sh -c '! test -e /usr/local/bin/service-a && ! test -e /usr/local/bin/service-b &&
        ! ls /etc/systemd/system/service-[ab].* >/dev/null 2>&1 && test -f /etc/default/service-a && test -f /etc/default/service-b'
load_states=$(ct systemctl show -p LoadState --value service-a.service service-b.service service-a.socket service-b.socket | grep . | tr '\n' ' ')
expect "no unit left for systemd (LoadState: $load_states)" test "$load_states" = "not-found not-found not-found not-found "
expect "nothing listens any more" test "$(code $A/health)$(code $B/health)" = 000000
ct /lab/deploy/install.sh --uninstall --purge
expect "--purge removes the settings" ct sh -c '! test -e /etc/default/service-a && ! test -e /etc/default/service-b'

stop_container

# ---------------------------------------------------------------- users
# This machine's whole system under a writable in-memory overlay (its users,
# sudo, apt and dpkg database; nothing persists): a VM where a user with
# sudo installs from a checkout.
say "9. a user with sudo and a rustup toolchain in ~/.cargo/bin: sudo deploy/install.sh"
boot users --host-overlay --private-network
# Its own network (loopback only): nothing here needs the host's ports.
ct_code() { ct curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" || true; }
settings() { ct stat -c '%U:%G %a' /etc/default/service-a /etc/default/service-b | tr '\n' ' '; }
# alice: her own toolchain, this machine's rustup toolchain made hers (an
# overlay of it, owned by her) with rustup's proxies in her ~/.cargo/bin,
# which is not on her PATH (as after a rustup install that left the profile
# alone). Her ~/.profile points cargo at this machine's cargo home, offline:
# its registry, and paths that match the fingerprints of this machine's
# release build, so that the dependencies copied into her target/ count as
# built and she compiles and links service-kit, service-a and service-b
# only (minutes, not a whole release build).
# This machine's toolchain: root's, or (under sudo) the calling user's.
cargo_bin=$(dirname "$(command -v cargo || echo "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin/cargo")")
rustup_home=$("$cargo_bin/rustup" show home) ||
    { echo "test-systemd.sh: no rustup toolchain found (cargo on PATH, or ~${SUDO_USER:-root}/.cargo/bin)" >&2; exit 1; }
cargo_home=$(dirname "$cargo_bin")
toolchain=$(basename "$("$cargo_bin/rustc" --print sysroot)")
ct useradd -m -s /bin/bash alice
ct sh -c 'echo "alice ALL=(ALL:ALL) NOPASSWD: ALL" > /etc/sudoers.d/alice && chmod 0440 /etc/sudoers.d/alice'
ct sh -ec '
    mkdir -p /home/alice/.cargo /home/alice/.rustup /run/lab-rustup/upper /run/lab-rustup/work
    cp -a "$1/bin" /home/alice/.cargo/
    chown -R alice: /home/alice/.cargo
    printf "export CARGO_HOME=%s CARGO_NET_OFFLINE=true\n" "$1" >> /home/alice/.profile
    # (in this throw-away copy only: she may read and lock that cargo home)
    d=$1; while [ "$d" != / ]; do chmod o+x "$d"; d=$(dirname "$d"); done
    chmod o+w "$1"; chmod -R o+rwX "$1/registry/index" "$1/registry/cache"
    mount -t overlay lab-rustup -o "lowerdir=$2,upperdir=/run/lab-rustup/upper,workdir=/run/lab-rustup/work,metacopy=on" /home/alice/.rustup
    # Hers: ~/.rustup, its settings and the toolchain she uses (its 50 000
    # files of docs aside: they stay readable).
    cd /home/alice/.rustup
    chown alice: . toolchains
    find . -mindepth 1 -maxdepth 1 ! -name toolchains -exec chown alice: {} +
    find "toolchains/$3" -path "*/share" -prune -o -exec chown alice: {} +' _ "$cargo_home" "$rustup_home" "$toolchain"
checkout() { # checkout USER: this tree, as git knows it, in ~USER/lab
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
        nsenter -t "$init_pid" -a timeout 60 runuser -u "$1" -- sh -c "mkdir -p ~$1/lab && tar -C ~$1/lab -xf -"
}
checkout alice
# Her target/: this machine's release build without anything of service-kit,
# service-a or service-b, copied as hers.
if [ -d "$repo/target/release/deps" ]; then
    tar -C "$repo/target" -cf - --exclude='release/deps/*service_[ab]*' --exclude='release/deps/*service_kit*' \
        --exclude='release/.fingerprint/service-*' --exclude='release/service-[ab]*' \
        release/deps release/build release/.fingerprint |
        nsenter -t "$init_pid" -a timeout 300 runuser -u alice -- sh -c 'mkdir -p ~alice/lab/target && tar -C ~alice/lab/target -xf -'
fi
t=$(date +%s.%N)
out=$(ctt 900 su - alice -c 'cd lab && sudo deploy/install.sh' 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | grep -v '^ *Compiling' | tail -n 12
expect "sudo deploy/install.sh as alice exits 0 after $(elapsed_since "$t")s (exit $rc)" test "$rc" = 0
expect "it built as alice with her ~/.cargo/bin/cargo" contains "$out" "building release binaries as alice with /home/alice/.cargo/bin/cargo"
expect "cargo compiled service-a and service-b for her" \
    sh -c 'printf "%s" "$1" | grep -q "Compiling service-a" && printf "%s" "$1" | grep -q "Compiling service-b"' _ "$out"
for d in service-a service-b; do
    expect "/usr/local/bin/$d is the one alice built: $(ct stat -c '%n %U' "/home/alice/lab/target/release/$d")" \
        ct sh -c "[ \"\$(stat -c %U /home/alice/lab/target/release/$d)\" = alice ] &&
            cmp -s /home/alice/lab/target/release/$d /usr/local/bin/$d"
done
expect "nothing of root's in her tree" test -z "$(ct find /home/alice/lab -not -user alice -print -quit)"
expect "both active: $(show service-a ActiveState) $(show service-b ActiveState)" \
    test "$(show service-a ActiveState) $(show service-b ActiveState)" = "active active"
hello=$(ct curl -s --max-time 5 -w ' %{http_code}' "$B/call-echo?msg=alice" || true)
expect "curl through service-b: $hello" test "$hello" = '{"service_b":"ok","service_a":{"echo":"alice"}} 200'
expect "settings after sudo install.sh: $(settings)" test "$(settings)" = "root:root 640 root:root 640 "

say "10. again, as alice: nothing restarts; a loose settings file is tightened, never edited"
ct chmod 0644 /etc/default/service-b
sum=$(ct sha256sum /etc/default/service-b)
pids="$(show service-a MainPID) $(show service-b MainPID)"
out=$(ctt 300 su - alice -c 'cd lab && sudo deploy/install.sh' 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 5
expect "exit 0 ($rc), no restart, nothing installed" \
    sh -c '[ "$1" = 0 ] && ! printf "%s" "$2" | grep -Eq "restarting|installed /"' _ "$rc" "$out"
expect "same MainPIDs ($pids -> $(show service-a MainPID) $(show service-b MainPID))" \
    test "$pids" = "$(show service-a MainPID) $(show service-b MainPID)"
expect "settings: $(settings), content unchanged" \
    test "$(settings)$(ct sha256sum /etc/default/service-b)" = "root:root 640 root:root 640 $sum"

say "11. switching modes: --socket-activation, then plain again; one mode enabled each time"
modes() {
    echo "$(ct systemctl is-enabled service-a.service service-b.service service-a.socket service-b.socket 2>/dev/null | tr '\n' ' ')$(show service-a.socket ActiveState) $(show service-b.socket ActiveState)"
}
ctt 300 su - alice -c 'cd lab && sudo deploy/install.sh --socket-activation' 2>&1 | tail -n 3
expect "--socket-activation: services and sockets enabled, sockets listening ($(modes))" \
    test "$(modes)" = "enabled enabled enabled enabled active active"
expect "service-b serves systemd's socket ($(show service-b StatusText))" contains "$(show service-b StatusText)" "(socket from systemd)"
expect "curl 200" test "$(ct_code "$B/call-echo?msg=sockets")" = 200
ctt 300 su - alice -c 'cd lab && sudo deploy/install.sh' 2>&1 | tail -n 3
expect "plain: sockets disabled and stopped ($(modes))" \
    test "$(modes)" = "enabled enabled disabled disabled inactive inactive"
expect "service-b binds its own socket again ($(show service-b StatusText))" \
    sh -c '! case "$1" in *"(socket from systemd)"*) true ;; *) false ;; esac' _ "$(show service-b StatusText)"
expect "curl 200" test "$(ct_code "$B/call-echo?msg=plain")" = 200
expect "settings: $(settings)" test "$(settings)" = "root:root 640 root:root 640 "

say "12. a user without a toolchain is told what to do"
ct useradd -m -s /bin/bash bob
ct sh -c 'echo "bob ALL=(ALL:ALL) NOPASSWD: ALL" > /etc/sudoers.d/bob && chmod 0440 /etc/sudoers.d/bob'
checkout bob
out=$(ct su - bob -c 'cd lab && sudo deploy/install.sh' 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out"
expect "exit 1, and it says which user lacks what, and what to do" \
    sh -c '[ "$1" = 1 ] && printf "%s" "$2" | grep -q "no Rust toolchain for bob" && printf "%s" "$2" | grep -q "rustup.rs"' _ "$rc" "$out"

say "13. two hosts: service-a on 192.0.2.2, service-b on 192.0.2.1 (network namespaces, a veth between)"
# Each daemon in a network namespace of its own ("host-a", "host-b"); the
# drop-in that puts it there stands in for running on another VM.
ct sh -ec '
    ip netns add lab-host-a; ip netns add lab-host-b
    ip link add lab-b netns lab-host-b type veth peer name lab-a netns lab-host-a
    ip -n lab-host-a addr add 192.0.2.2/24 dev lab-a; ip -n lab-host-a link set lab-a up; ip -n lab-host-a link set lo up
    ip -n lab-host-b addr add 192.0.2.1/24 dev lab-b; ip -n lab-host-b link set lab-b up; ip -n lab-host-b link set lo up
    for h in a b; do
        mkdir -p /run/systemd/system/service-$h.service.d
        printf "[Service]\nNetworkNamespacePath=/run/netns/lab-host-$h\n" > /run/systemd/system/service-$h.service.d/host.conf
    done
    # As the README says: settings in /etc/default, widening in a drop-in.
    echo SERVICE_A_LISTEN=192.0.2.2:8080 >> /etc/default/service-a
    echo SERVICE_A_URL=http://192.0.2.2:8080 >> /etc/default/service-b
    mkdir -p /etc/systemd/system/service-a.service.d
    printf "[Service]\nIPAddressAllow=192.0.2.0/24\n" > /etc/systemd/system/service-a.service.d/network.conf
    systemctl daemon-reload
    systemctl restart service-a service-b'
on_b() { ct nsenter --net=/run/netns/lab-host-b curl -s --max-time 5 -w ' %{http_code}' "$@" || true; }
expect "service-a listens on 192.0.2.2:8080 in host-a ($(show service-a StatusText))" \
    contains "$(show service-a StatusText)" "serving on 192.0.2.2:8080"
reply=$(on_b "http://127.0.0.1:8081/call-echo?msg=two+hosts")
echo "without the drop-in, on host-b: curl 'http://127.0.0.1:8081/call-echo?msg=two+hosts' -> $reply"
# IPAddressDeny=any drops service-a's answers (the SYN-ACK) silently: the
# call times out at service-b's deadline.
expect "without the drop-in: 503 timeout (service-b's IPAddressDeny=any)" \
    sh -c 'case "$1" in *"\"error\":\"timeout\""*" 503") ;; *) exit 1 ;; esac' _ "$reply"
ct sh -ec '
    mkdir -p /etc/systemd/system/service-b.service.d
    printf "[Service]\nIPAddressAllow=192.0.2.2\n" > /etc/systemd/system/service-b.service.d/network.conf
    systemctl daemon-reload
    systemctl restart service-b'
reply=$(on_b "http://127.0.0.1:8081/call-echo?msg=two+hosts")
echo "with IPAddressAllow=192.0.2.2: $reply"
expect "with the README's drop-in: 200 through the veth" \
    test "$reply" = '{"service_b":"ok","service_a":{"echo":"two hosts"}} 200'
stop_container

# ---------------------------------------------------------------- the .deb
if [ -n "$debs" ]; then
    say "14. the .deb in a fresh container: apt install ./two-service-lab_*.deb"
    boot deb --host-overlay --private-network --bind-ro="$debs:/lab-deb"
    first=$(cd "$debs" && ls two-service-lab_*.deb | sort -V | head -n1)
    newer=$(cd "$debs" && ls two-service-lab_*.deb | sort -V | tail -n1)
    ct sh -c 'cd /lab-deb && DEBIAN_FRONTEND=noninteractive apt install -y -q "./$1"' _ "$first" 2>&1 | tail -n 4
    expect "installed: $(ct dpkg-query -W -f '${Package} ${Version} ${db:Status-Status}' two-service-lab)" \
        contains "$(ct dpkg-query -W -f '${db:Status-Status}' two-service-lab)" installed
    expect "both active, from the package's units ($(show service-a FragmentPath))" \
        sh -c '[ "$1" = "active active" ] && case "$2" in */lib/systemd/system/service-a.service) ;; *) exit 1 ;; esac' _ \
        "$(show service-a ActiveState) $(show service-b ActiveState)" "$(show service-a FragmentPath)"
    expect "services enabled, sockets shipped but not enabled ($(modes))" \
        test "$(modes)" = "enabled enabled disabled disabled inactive inactive"
    hello=$(ct curl -s --max-time 5 -w ' %{http_code}' "$B/call-echo?msg=deb" || true)
    expect "curl through service-b: $hello" test "$hello" = '{"service_b":"ok","service_a":{"echo":"deb"}} 200'
    expect "settings after apt install: $(settings)" test "$(settings)" = "root:root 640 root:root 640 "
    for unit in service-a service-b; do
        line=$(ct systemd-analyze security --offline=yes "/usr/lib/systemd/system/$unit.service" 2>/dev/null | grep 'Overall exposure level' || true)
        score=$(printf '%s' "$line" | sed -nE 's/.*: ([0-9.]+) .*/\1/p')
        expect "installed $unit.service: exposure ${score:-?} <= 0.9" awk -v s="${score:-99}" 'BEGIN { exit !(s <= 0.9) }'
    done

    say "15. an edited /etc/default/service-b survives a reinstall and an upgrade"
    ct sh -c 'echo SERVICE_B_UPSTREAM_TIMEOUT=2s >> /etc/default/service-b && chmod 0644 /etc/default/service-b'
    ct sh -c 'cd /lab-deb && DEBIAN_FRONTEND=noninteractive apt install -y -q --reinstall "./$1"' _ "$first" 2>&1 | tail -n 2
    expect "reinstall of $first: the edit is there, service-b restarted with it ($(show service-b StatusText))" \
        sh -c '[ "$(nsenter -t "$1" -a grep -c "^SERVICE_B_UPSTREAM_TIMEOUT=2s$" /etc/default/service-b)" = 1 ] &&
            case "$2" in *"deadline 2s"*) ;; *) exit 1 ;; esac' _ "$init_pid" "$(show service-b StatusText)"
    expect "settings: $(settings)" test "$(settings)" = "root:root 640 root:root 640 "
    pids="$(show service-a MainPID) $(show service-b MainPID)"
    ct sh -c 'cd /lab-deb && DEBIAN_FRONTEND=noninteractive apt install -y -q "./$1"' _ "$newer" 2>&1 | tail -n 2
    expect "upgrade to $newer: $(ct dpkg-query -W -f '${Version}' two-service-lab), both restarted ($pids -> $(show service-a MainPID) $(show service-b MainPID))" \
        sh -c '[ "$1" != "$2" ] && [ "${1#* }" != "${2#* }" ] && [ "$3" = "active active" ]' _ \
        "$pids" "$(show service-a MainPID) $(show service-b MainPID)" "$(show service-a ActiveState) $(show service-b ActiveState)"
    expect "the edit is still there" ct grep -q '^SERVICE_B_UPSTREAM_TIMEOUT=2s$' /etc/default/service-b
    expect "curl 200" test "$(ct_code "$B/call-echo?msg=upgraded")" = 200
    expect "settings: $(settings)" test "$(settings)" = "root:root 640 root:root 640 "

    say "16. apt remove stops them and keeps the settings; apt purge removes them"
    ct env DEBIAN_FRONTEND=noninteractive apt remove -y -q two-service-lab 2>&1 | tail -n 2
    expect "stopped and gone: $(show service-a ActiveState)/$(show service-a LoadState) $(show service-b ActiveState)/$(show service-b LoadState), nothing answers" \
        test "$(show service-a ActiveState) $(show service-b ActiveState) $(ct_code $A/health)$(ct_code $B/health)" = "inactive inactive 000000"
    expect "binaries gone" ct sh -c '! test -e /usr/bin/service-a && ! test -e /usr/bin/service-b'
    expect "settings kept, with the edit: $(settings)" \
        sh -c '[ "$1" = "root:root 640 root:root 640 " ] && nsenter -t "$2" -a grep -q "^SERVICE_B_UPSTREAM_TIMEOUT=2s$" /etc/default/service-b' _ "$(settings)" "$init_pid"
    ct env DEBIAN_FRONTEND=noninteractive apt purge -y -q two-service-lab 2>&1 | tail -n 2
    expect "purged: settings gone, dpkg forgot it" \
        ct sh -c '! test -e /etc/default/service-a && ! test -e /etc/default/service-b && ! dpkg-query -W two-service-lab 2>/dev/null'
    stop_container
else
    say "the .deb: SKIPPED (no --debs DIR given)"
    fail "the .deb was not tested (pass --debs DIR, as ./test.sh does)"
fi

say "result"
stop_container
echo "container halted; took $(elapsed_since "$t0")s"
if [ "$failures" -eq 0 ]; then
    echo "test-systemd.sh: all checks passed"
else
    echo "test-systemd.sh: $failures check(s) failed"
    exit 1
fi
