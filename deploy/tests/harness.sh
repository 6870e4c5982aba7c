# The harness of the systemd tests in this folder (sourced, not run): boots
# this machine's own systemd in containers (systemd-nspawn), runs commands in
# them, and counts checks. The facts it relies on were seen on Debian 12
# (systemd 252); the comments below say which and why.
#
#   . "$(dirname "$0")/harness.sh"
#   harness_start NAME [PACKAGE-FOR-COMMAND...]   root check, tools, temp dir, traps, time limit
#   boot LABEL [--host-overlay] NSPAWN-OPTION...   a container; sets nspawn_pid and init_pid
#   ct COMMAND...                                  in the current container (60 s bound)
#   expect DESCRIPTION COMMAND...                  PASS or FAIL, counted
#   harness_finish                                 the result; exit 1 if a check failed
#
# Every container is halted on exit, pass or fail, and the whole run gives up
# after $TEST_SYSTEMD_TIMEOUT seconds (1200 by default) whatever hangs.
# shellcheck shell=bash

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
limit=${TEST_SYSTEMD_TIMEOUT:-1200} # seconds for the whole run
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost # curl straight to the daemons

# dir_options USAGE NAME... -- ARG...: parses the script's arguments, each
# an option --NAME DIR that sets the variable NAME to DIR's absolute path
# (empty when not given); anything else prints USAGE and exits 2.
dir_options() {
    local usage=$1 names=() name dir
    shift
    while [ "$1" != -- ]; do names+=("$1"); printf -v "$1" '%s' ""; shift; done
    shift
    while [ $# -gt 0 ]; do
        name=${1#--}
        [ "$name" != "$1" ] && [[ " ${names[*]} " == *" $name "* ]] ||
            { echo "usage: $0${usage:+ $usage}" >&2; exit 2; }
        dir=$(cd "${2:?$1 needs a directory}" && pwd) || exit 2
        printf -v "$name" '%s' "$dir"
        shift 2
    done
}

# harness_start NAME [TOOL=PACKAGE...]: NAME prefixes messages; each
# TOOL=PACKAGE is installed if TOOL is missing (beyond what every test needs).
harness_start() {
    me=$1
    shift
    [ "$(id -u)" -eq 0 ] || { echo "$me: needs root (systemd-nspawn)" >&2; exit 1; }
    local missing=() pair
    for pair in systemd-nspawn=systemd-container nsenter=util-linux curl=curl pgrep=procps "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "$me: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
    fi

    t0=$(date +%s.%N)
    work=$(mktemp -d)
    machine="lab-e2e-$$-$RANDOM"
    main_pid=$$
    nspawn_pid=""
    guard_pid=""
    failures=0
    trap cleanup EXIT
    trap interrupted TERM INT
    guard </dev/null >/dev/null 2>&1 &
    guard_pid=$!

    # Units the host enables are masked in the containers: with the host's own
    # /etc (an overlay of it) they would start there too, on the shared
    # network (a database, timers that run apt).
    masks=()
    local link
    for link in /etc/systemd/system/*.wants/* /etc/systemd/system/*.requires/*; do
        [ -L "$link" ] || [ -e "$link" ] || continue
        masks+=("systemd.mask=${link##*/}")
    done
    echo 'disable *' > "$work/disable.preset"
}

# unmask UNIT...: these units start in the containers even if this machine
# enables them (haproxy.service, which a test sets up there itself).
unmask() {
    local keep=() m u
    for m in "${masks[@]}"; do
        for u in "$@"; do [ "$m" != "systemd.mask=$u" ] || continue 2; done
        keep+=("$m")
    done
    masks=("${keep[@]}")
}

# resolve_binaries DIR-OR-EMPTY: sets $binaries to a directory holding both
# daemons; empty means target/release, built if missing.
resolve_binaries() {
    binaries=$1
    if [ -z "$binaries" ]; then
        binaries="$repo/target/release"
        [ -x "$binaries/service-a" ] && [ -x "$binaries/service-b" ] ||
            cargo build --release --locked --bins --manifest-path "$repo/Cargo.toml"
    fi
    local d
    for d in service-a service-b; do
        [ -x "$binaries/$d" ] || { echo "$me: $binaries/$d: no such executable" >&2; exit 1; }
    done
}

# A container sharing the host's network tests whatever listens on the
# daemons' ports: nothing else may.
require_free_ports() {
    local port
    for port in "$@"; do
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            echo "$me: something already listens on 127.0.0.1:$port; stop it first" >&2
            exit 1
        fi
    done
}

# Halts the container nspawn runs as PID $1 (SIGTERM; SIGKILL after 15 s).
halt_container() {
    if kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$1" 2>/dev/null; then
            echo "$me: container did not halt in 15 s; SIGKILL" >&2
            kill -KILL "$1" 2>/dev/null || true
        fi
    fi
    wait "$1" 2>/dev/null || true
    sed -i "/^$1\$/d" "$work/nspawn.pid" # (its pid may be reused: forget it)
}
# Halts the container booted last.
stop_container() {
    [ -n "$nspawn_pid" ] || return 0
    halt_container "$nspawn_pid"
    nspawn_pid=""
}
# Halts every container booted, at once.
stop_all_containers() {
    local pid
    for pid in $(cat "$work/nspawn.pid" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $(cat "$work/nspawn.pid" 2>/dev/null); do halt_container "$pid"; done
    nspawn_pid=""
}
cleanup() {
    local rc=$? job
    trap - EXIT TERM INT
    stop_all_containers
    [ "$(type -t cleanup_more)" != function ] || cleanup_more
    local cg
    for cg in $(cat "$work/cgroups" 2>/dev/null); do # empty by now: depth first
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    [ -n "$guard_pid" ] && kill -TERM "$guard_pid" 2>/dev/null || true
    for job in $(jobs -p); do # request loops in the background, if interrupted
        pkill -TERM -P "$job" 2>/dev/null || true
        kill -TERM "$job" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
    exit "$rc"
}
interrupted() {
    if [ -e "$work/timed-out" ]; then
        echo "$me: FAIL: timed out after $limit s (raise TEST_SYSTEMD_TIMEOUT if this machine is slow)" >&2
    else
        echo "$me: interrupted" >&2
    fi
    exit 143
}

# The bound on the whole run: after $limit s, halt the container (which ends
# every command running in it) and stop the script, whose trap cleans up.
guard() {
    local s=""
    trap '[ -n "$s" ] && kill "$s" 2>/dev/null && wait "$s"; exit 0' TERM
    sleep "$limit" & s=$!
    wait "$s" || exit 0
    : > "$work/timed-out"
    # shellcheck disable=SC2046 # one pid a line
    [ -s "$work/nspawn.pid" ] && kill -TERM $(cat "$work/nspawn.pid") 2>/dev/null
    kill -TERM "$main_pid" 2>/dev/null
    exit 0
}

say() { printf '\n--- %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
expect() { # expect DESCRIPTION COMMAND...: PASS if the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
elapsed_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'; }
contains() { case "$1" in *"$2"*) return 0 ;; *) return 1 ;; esac; }

# own_cgroup NAME: makes a cgroup NAME beside this process's own in each
# hierarchy systemd uses (cgroup2, and name=systemd where the host has
# cgroup v1); prints their cgroup.procs files. Removed on exit.
own_cgroup() {
    local mnt type opts rel
    while read -r _ mnt type opts _; do
        case "$type" in
            cgroup2) rel=$(sed -n 's/^0:://p' /proc/self/cgroup) ;;
            cgroup) case ",$opts," in
                        *,name=systemd,*) rel=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup) ;;
                        *) continue ;;
                    esac ;;
            *) continue ;;
        esac
        mkdir -p "$mnt${rel%/}/$1"
        echo "$mnt${rel%/}/$1" >> "$work/cgroups"
        echo "$mnt${rel%/}/$1/cgroup.procs"
    done < /proc/self/mounts
}

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
        # which nspawn filters out by default. user-install.sh check 13 tests it.
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        set -- --system-call-filter=bpf "$@"
        mkdir -p "$dir" "$work/rw-$label"
        # shellcheck disable=SC2016 # expanded by that sh
        launcher=(unshare -m --propagation private sh -c '
            mount -t tmpfs lab-rw "$1" && mkdir "$1/upper" "$1/work" &&
            mount -t overlay lab-root -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$2" &&
            shift 2 && exec "$@"' _ "$work/rw-$label" "$dir")
    fi
    # A cgroup of its own: nspawn puts the container under the cgroup it
    # runs in, and containers in the same one (booted side by side, or by
    # another run at the same time) would share its "payload" cgroup, their
    # systemds each managing, and killing, the others' units.
    local procs
    procs=$(own_cgroup "$machine-$label")
    # shellcheck disable=SC2016 # expanded by that sh
    launcher=(sh -c 'for f in $1; do echo $$ > "$f"; done; shift; exec "$@"' _ "$procs" "${launcher[@]}")
    t=$(date +%s.%N)
    "${launcher[@]}" systemd-nspawn -D "$dir" --register=no --keep-unit -M "$machine-$label" "$@" "${preset[@]}" \
        --console=pipe -b systemd.condition-first-boot=false "${masks[@]}" \
        </dev/null >"$work/boot-$label.log" 2>&1 &
    nspawn_pid=$!
    unset SYSTEMD_NSPAWN_UNIFIED_HIERARCHY
    echo "$nspawn_pid" >> "$work/nspawn.pid"
    init_pid=""
    for _ in $(seq 300); do
        kill -0 "$nspawn_pid" 2>/dev/null || break
        init_pid=$(find_init | head -n1 || true)
        [ -n "$init_pid" ] && [ -S "/proc/$init_pid/root/run/systemd/private" ] && break
        sleep 0.1
    done
    if [ -z "$init_pid" ] || [ ! -S "/proc/$init_pid/root/run/systemd/private" ]; then
        cat "$work/boot-$label.log"
        echo "$me: the container did not boot" >&2
        exit 1
    fi
    state=$(ct systemctl is-system-running --wait || true)
    echo "container $machine-$label booted in $(elapsed_since "$t")s (init pid $init_pid, state: $state)"
    case "$state" in
        running|degraded) ;;
        *) ct systemctl --failed --no-pager || true; echo "$me: system state $state" >&2; exit 1 ;;
    esac
    # A unit that stops cleanly and that nothing references is unloaded at
    # once, and `systemctl show` then reports Result=success even if it never
    # ran. This started target references every unit under test, so they stay
    # loaded.
    ct sh -c 'mkdir -p /run/systemd/system && cat > /run/systemd/system/lab-keep.target' <<'EOF'
[Unit]
Description=keeps the units under test loaded (deploy/tests)
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

# What a user of systemctl and curl reads.
show() { ct systemctl show -p "$2" --value "$1"; }
# shellcheck disable=SC2034 # used by the scripts that source this
B=http://127.0.0.1:8081 A=http://127.0.0.1:8080
# From inside the container (its own network, or the host's).
ct_code() { ct curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" || true; }
settings() { ct stat -c '%U:%G %a' /etc/default/service-a /etc/default/service-b | tr '\n' ' '; }
modes() { # is-enabled of both services and sockets, then whether the sockets are active
    echo "$(ct systemctl is-enabled service-a.service service-b.service service-a.socket service-b.socket 2>/dev/null | tr '\n' ' ')$(show service-a.socket ActiveState) $(show service-b.socket ActiveState)"
}

harness_finish() {
    say "result"
    stop_container
    echo "container halted; took $(elapsed_since "$t0")s"
    if [ "$failures" -eq 0 ]; then
        echo "$me: all checks passed"
    else
        echo "$me: $failures check(s) failed"
        exit 1
    fi
}
