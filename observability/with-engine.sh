#!/usr/bin/env bash
# Runs a command against a Docker Engine of its own, with the stack's images
# built and Docker Compose installed, the way a user's machine runs
# `docker compose up` of observability/compose.yaml:
#
#   observability/with-engine.sh [--netns] BIN-DIR COMMAND [ARG...]   (as root)
#
# BIN-DIR is what observability/build/build.sh prints (it holds the stack's
# programs and docker-compose). Needs Debian's docker.io (Engine 20.10 and
# its client); test.sh installs it.
#
# - dockerd starts with a data root, exec root, socket, pid file and daemon
#   configuration of its own, in a temporary directory, and leaves the
#   machine's firewall and forwarding alone (--iptables=false,
#   --ip-forward=false: containers reach each other on their compose
#   network, and the host reaches published ports through Docker's userland
#   proxy, on 127.0.0.1 as compose.yaml publishes them). No default bridge:
#   compose makes its own network.
# - Compose is a CLI plugin in a private DOCKER_CONFIG
#   ($DOCKER_CONFIG/cli-plugins/docker-compose), Docker's documented per-user
#   plugin folder: `docker compose` works for COMMAND only, and nothing of a
#   user's own ~/.docker or the system's plugin folders is read or changed.
# - build.sh --images builds the collector's, Jaeger's and Prometheus's
#   images from BIN-DIR, tagged as compose.yaml pins them. Nothing is pulled
#   (there is no registry to pull from): `up` runs with --pull never.
# - COMMAND runs with DOCKER_HOST and DOCKER_CONFIG set, and `docker` the
#   engine's own client (first on PATH).
#
# On exit, whichever way COMMAND ends: every container and volume goes, the
# engine stops, and everything it made is removed (its directory, its
# mounts, the network interfaces and run-time directories it created). The
# stack's fixed ports (4317, 4318, 9090, 16686, 3000 on 127.0.0.1) must be
# free: two runs at once would collide there, so the second refuses to start.
#
# --netns: the engine and COMMAND run in a network namespace of their own
# (its own loopback, where the stack's ports are published), so that a
# second stack runs beside one on the host's ports; the namespace goes at
# the end.
set -euo pipefail

say() { printf 'with-engine: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

netns=
if [ "${1:-}" = --netns ]; then
    netns=lab-engine-$$
    shift
fi
[ $# -ge 2 ] || die "usage: $0 [--netns] BIN-DIR COMMAND [ARG...]"
bin=$(cd "$1" && pwd -P) || die "no directory $1"
shift
here=$(cd "$(dirname "$0")" && pwd -P)
[ "$(id -u)" -eq 0 ] || die "needs root (dockerd)"
dockerd=$(command -v dockerd) || die "dockerd not found (apt-get install docker.io)"
# The client of Debian's docker.io, made for that engine, whatever other
# `docker` comes first on PATH.
client=/usr/bin/docker
[ -x "$client" ] || client=$(command -v docker) || die "no docker client (apt-get install docker.io)"
[ -x "$bin/docker-compose" ] || die "no docker-compose in $bin (observability/build/build.sh builds it)"
if [ -z "$netns" ]; then
    for port in 4317 4318 9090 16686 3000; do
        ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
            die "127.0.0.1:$port is in use: is another stack running?"
    done
fi

# What exists before, so that only what the engine adds is removed.
links_before=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort)
# The run-time folders every dockerd uses whatever its options, and the
# identity dockerd 20.10 writes to /etc/docker/key.json: what of them the
# first of the engines running at once finds missing, the last one removes.
state=/run/lab-engine.d
mkdir -p "$state"
exec 8>"$state/lock"
others() { # others: whether another run's engine is alive (stale marks removed)
    local mark found=1
    for mark in "$state"/*.pid; do
        [ -e "$mark" ] || continue
        if kill -0 "$(basename "$mark" .pid)" 2>/dev/null; then found=0; else rm -f "$mark"; fi
    done
    return $found
}
flock 8
if ! others; then
    : >"$state/created"
    for d in /run/docker /run/containerd /etc/docker/key.json; do
        [ -e "$d" ] || echo "$d" >>"$state/created"
    done
fi
: >"$state/$$.pid"
flock -u 8

tmp=$(mktemp -d /tmp/lab-engine.XXXXXX)
chmod 0711 "$tmp"
mkdir -p "$tmp/data" "$tmp/exec" "$tmp/config/cli-plugins" "$tmp/bin"
ln -s "$bin/docker-compose" "$tmp/config/cli-plugins/docker-compose"
ln -s "$client" "$tmp/bin/docker"
echo '{}' >"$tmp/daemon.json"
export DOCKER_HOST="unix://$tmp/docker.sock" DOCKER_CONFIG="$tmp/config"
export PATH="$tmp/bin:$PATH"
engine=
# in_ns COMMAND...: runs COMMAND in the namespace (if any).
in_ns() {
    # nsenter, not `ip netns exec`: that also remounts /sys, without the
    # cgroup file systems dockerd needs.
    if [ -n "$netns" ]; then nsenter --net="/run/netns/$netns" "$@"; else "$@"; fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$engine" ] && kill -0 "$engine" 2>/dev/null; then
        if [ "$status" -ne 0 ]; then
            say "containers at the end:"
            docker ps -a --format '  {{.Names}} {{.Image}} {{.Status}}' >&2 || true
            for c in $(docker ps -aq 2>/dev/null); do
                say "last lines of $(docker inspect -f '{{.Name}}' "$c"):"
                docker logs --tail 20 "$c" 2>&1 | sed 's/^/    /' >&2 || true
            done
        fi
        local ids
        ids=$(docker ps -aq 2>/dev/null || true)
        [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
        docker volume prune -f >/dev/null 2>&1 || true
        docker network prune -f >/dev/null 2>&1 || true
        kill "$engine" 2>/dev/null || true
        local end=$((SECONDS + 30))
        while kill -0 "$engine" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
        kill -9 "$engine" 2>/dev/null || true
    fi
    # Whatever the engine left: its processes, mounts, interfaces, directories.
    local pid
    for pid in $(pgrep -f -- "$tmp/" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    umount -l "$tmp/data" 2>/dev/null || true
    # The interfaces it added to the host's network. Under --netns they are
    # in the namespace, and go with it: the host's new ones then belong to
    # another engine (test.sh runs one on the host at the same time), and
    # deleting them would cut that engine's stack off its published ports.
    local link
    if [ -z "$netns" ]; then
        for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | comm -13 <(echo "$links_before") -); do
            case $link in br-* | veth* | docker*) ip link del "$link" 2>/dev/null || true ;; esac
        done
    else
        ip netns del "$netns" 2>/dev/null
    fi
    rm -rf "$tmp"
    flock 8
    rm -f "$state/$$.pid"
    if ! others; then
        xargs -r rm -rf <"$state/created"
        rm -rf "$state"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$netns" ]; then
    ip netns add "$netns"
    ip -n "$netns" link set lo up
fi
say "starting dockerd ($("$dockerd" --version))${netns:+ in network namespace $netns}"
start=$SECONDS
in_ns "$dockerd" --data-root "$tmp/data" --exec-root "$tmp/exec" -H "$DOCKER_HOST" \
    --pidfile "$tmp/docker.pid" --config-file "$tmp/daemon.json" \
    --iptables=false --ip-forward=false --bridge=none >"$tmp/dockerd.log" 2>&1 &
engine=$!
until docker version >/dev/null 2>&1; do
    kill -0 "$engine" 2>/dev/null || { tail -n 20 "$tmp/dockerd.log" >&2; die "dockerd exited"; }
    [ $((SECONDS - start)) -lt 60 ] || die "dockerd did not answer within 60 s"
    sleep 0.2
done
say "engine $(docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})') up in $((SECONDS - start)) s; $(docker compose version)"

start=$SECONDS
"$here/build/build.sh" --images "$(dirname "$bin")" >/dev/null
say "images built in $((SECONDS - start)) s"

say "running: $*"
in_ns "$@"
