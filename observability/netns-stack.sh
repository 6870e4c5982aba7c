#!/usr/bin/env bash
# Runs the observability stack the way compose.yaml wires it, without a
# container engine, and runs a command on its "Docker host":
#
#   observability/netns-stack.sh BIN-DIR COMMAND [ARG...]      (as root)
#
# BIN-DIR holds otelcol-lab, jaeger and prometheus (observability/build/build.sh
# prints it). What compose.yaml says is read from it at run time, never copied:
#
# - A network namespace plays the Docker host ("host"): it holds the compose
#   network's bridge, and COMMAND runs in it. Each of otel-collector, jaeger
#   and prometheus gets a namespace of its own on that bridge, with
#   /etc/netns/NAME/hosts resolving the compose service names, as compose's
#   DNS does.
# - Each service runs its image's program with the compose `command`, as the
#   image's user (otel-collector and jaeger 10001, prometheus nobody), with the
#   compose `volumes` laid out under a directory of its own: the mounted files
#   are copied with their modes (a checkout the image's user cannot read fails
#   here as it fails in Docker), and container paths in the command are
#   rewritten to that directory.
# - compose's `ports` are published on the host namespace's loopback by a
#   userland proxy (socat), as Docker's does: COMMAND finds the collector at
#   localhost:4318, Jaeger at localhost:16686 and Prometheus at localhost:9090,
#   which is where the daemons send by default.
#
# Everything (processes, namespaces, /etc/netns entries, the temp directory)
# is removed on exit, whichever way COMMAND ends. The services' logs are in
# $LAB_STACK_LOGS while COMMAND runs and are shown if COMMAND fails.
set -euo pipefail

say() { printf 'netns-stack: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ $# -ge 2 ] || die "usage: $0 BIN-DIR COMMAND [ARG...]"
bin=$(cd "$1" && pwd -P) || die "no directory $1"
shift
here=$(cd "$(dirname "$0")" && pwd -P)
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
for tool in ip socat setpriv curl /usr/bin/python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
/usr/bin/python3 -c 'import yaml' 2>/dev/null || die "python3-yaml not found"

# The programs the images run, and the users they run as (each image's
# Dockerfile: USER 10001, USER nobody).
declare -A program=([otel/opentelemetry-collector-contrib]=otelcol-lab [jaegertracing/jaeger]=jaeger [prom/prometheus]=prometheus)
declare -A image_user=([otel/opentelemetry-collector-contrib]=10001 [jaegertracing/jaeger]=10001 [prom/prometheus]=65534)
services=(prometheus jaeger otel-collector) # dependencies first, as depends_on orders them

id=lab$$
host_ns=$id-host
subnet=10.213.0
tmp=$(mktemp -d)
chmod 0755 "$tmp" # the services' users must reach their directories
export LAB_STACK_LOGS=$tmp/logs
mkdir -p "$LAB_STACK_LOGS" "$tmp/bin"
# The programs, where the services' users can reach them (BIN-DIR may be
# under root's home): a hard link, or a copy across file systems.
for exe in otelcol-lab jaeger prometheus; do
    [ -x "$bin/$exe" ] || die "no $exe in $bin"
    ln -f "$bin/$exe" "$tmp/bin/$exe" 2>/dev/null || cp "$bin/$exe" "$tmp/bin/$exe"
done
bin=$tmp/bin
pids=()
namespaces=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid ns
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$status" -ne 0 ]; then
        for f in "$LAB_STACK_LOGS"/*.log; do
            [ -s "$f" ] || continue
            say "last lines of $(basename "$f"):"
            tail -n 30 "$f" | sed 's/^/    /' >&2
        done
    fi
    for ns in "${namespaces[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    rmdir /etc/netns 2>/dev/null || true # only if no one else uses it
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- What compose.yaml says, as shell lines: one service per line. ---
# NAME<TAB>IMAGE<TAB>USER (- for the image's)<TAB>COMMAND (JSON)<TAB>VOLUMES (JSON)<TAB>PORTS (JSON)
/usr/bin/python3 - "$here/compose.yaml" "${services[@]}" >"$tmp/services.tsv" <<'PY'
import json, sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
for name in sys.argv[2:]:
    s = compose["services"][name]
    image, _, _tag = s["image"].rpartition(":")
    volumes = []
    for v in s.get("volumes", []):
        source, target, *_ = v.split(":")
        volumes.append([source, target])
    ports = []
    for p in s.get("ports", []):
        host_ip, published, target = str(p).split(":")
        ports.append([host_ip, published, target])
    print("\t".join([name, image, str(s.get("user", "-")), json.dumps(s.get("command", [])),
                     json.dumps(volumes), json.dumps(ports)]))
PY

# --- The network: a bridge in the host namespace, a namespace per service. ---
ip netns add "$host_ns"
namespaces+=("$host_ns")
ip -n "$host_ns" link set lo up
ip -n "$host_ns" link add br0 type bridge
ip -n "$host_ns" addr add "$subnet.1/24" dev br0
ip -n "$host_ns" link set br0 up
hosts="127.0.0.1 localhost"$'\n'
n=1
for name in "${services[@]}"; do
    n=$((n + 1))
    hosts+="$subnet.$n $name"$'\n'
done
n=1
for name in "${services[@]}"; do
    n=$((n + 1))
    ns=$id-$name
    ip netns add "$ns"
    namespaces+=("$ns")
    mkdir -p "/etc/netns/$ns"
    printf '%s' "$hosts" >"/etc/netns/$ns/hosts"
    ip -n "$ns" link set lo up
    ip link add "$id-v$n" netns "$host_ns" type veth peer name eth0 netns "$ns"
    ip -n "$host_ns" link set "$id-v$n" master br0 up
    ip -n "$ns" addr add "$subnet.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$subnet.1"
done

# --- The services, and their published ports. ---
n=1
while IFS=$'\t' read -r name image user command volumes ports; do
    n=$((n + 1))
    exe=${program[$image]:-}
    [ -n "$exe" ] || die "compose.yaml: $name runs $image, which this script does not know"
    [ "$user" != - ] || user=${image_user[$image]}
    root=$tmp/$name
    mkdir -p "$root"
    # Bind mounts: a copy with the checkout's modes (cp -p); named volumes: an
    # empty directory the image's user owns (Docker seeds it from the image).
    /usr/bin/python3 - "$here" "$root" "$user" "$volumes" <<'PY'
import json, os, shutil, sys
here, root, user, volumes = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
for source, target in volumes:
    dest = root + target
    if source.startswith((".", "/")):
        src = os.path.join(here, source)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dest, copy_function=shutil.copy2)
        else:
            shutil.copy2(src, dest)
    else:
        os.makedirs(dest, mode=0o755, exist_ok=True)
        os.chown(dest, user, user)
PY
    # The command, with each container path of a volume moved under $root.
    mapfile -t args < <(/usr/bin/python3 - "$root" "$command" "$volumes" <<'PY'
import json, sys
root, command, volumes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
targets = sorted((t for _, t in volumes), key=len, reverse=True)
for arg in command:
    flag, eq, value = arg.partition("=")
    for t in targets:
        if eq and (value == t or value.startswith(t + "/")):
            arg = flag + "=" + root + value
            break
    print(arg)
PY
)
    say "$name: $exe ${args[*]} (as uid $user)"
    # Prometheus's image works in /prometheus; the others in /.
    ip netns exec "$id-$name" setpriv --reuid="$user" --regid="$user" --clear-groups \
        env -C "$root" "$bin/$exe" "${args[@]}" >"$LAB_STACK_LOGS/$name.log" 2>&1 &
    pids+=($!)
    while read -r host_ip published target; do
        ip netns exec "$host_ns" socat "TCP-LISTEN:$published,bind=$host_ip,reuseaddr,fork" \
            "TCP:$subnet.$n:$target" >>"$LAB_STACK_LOGS/publish.log" 2>&1 &
        pids+=($!)
    done < <(/usr/bin/python3 -c 'import json,sys; [print(*p) for p in json.loads(sys.argv[1])]' "$ports")
done <"$tmp/services.tsv"

# --- Ready when each answers through its published port. ---
ready() { ip netns exec "$host_ns" curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }
deadline=$((SECONDS + 60))
for url in http://127.0.0.1:9090/-/ready http://127.0.0.1:16686/api/services; do
    until ready "$url"; do
        [ $SECONDS -lt $deadline ] || die "$url did not answer within 60 s"
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a service exited (see its log below)"; done
        sleep 0.2
    done
done
# The collector has no health endpoint in this configuration: its OTLP/HTTP
# receiver answers 405 to a GET once it listens.
until ip netns exec "$host_ns" curl -sS -o /dev/null --max-time 2 http://127.0.0.1:4318/v1/traces 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the collector did not listen on 4318 within 60 s"
    sleep 0.2
done
say "stack up (logs in $LAB_STACK_LOGS); running: $*"
ip netns exec "$host_ns" "$@"
