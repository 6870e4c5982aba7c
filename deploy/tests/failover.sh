#!/usr/bin/env bash
# Several service-a replicas behind HAProxy, under a real systemd, with
# failover drills. Four machines, each this machine's own system booted in a
# container (systemd-nspawn, an in-memory overlay of /) with its own host
# name and its own network namespace, joined by a bridge:
#
#     b (192.0.2.1): service-b, HAProxy on 127.0.0.1:8090, Jaeger, the traffic
#       |
#     bridge ---- a1 (192.0.2.11)   service-a on :8080
#            ---- a2 (192.0.2.12)   service-a on :8080
#            ---- a3 (192.0.2.13)   service-a on :8080
#            ---- stack (192.0.2.100): Prometheus on the shipped prometheus.yml
#                 (a network namespace, as the compose stack's container)
#
# installed as docs/SEVERAL-HOSTS.md says (deploy/install.sh --binaries on
# each, --balancer on b). Steady traffic through service-b (bench/traffic.py)
# while: all three are up (each takes 20-45 % of 300 requests); one replica
# freezes (SIGSTOP), is killed (SIGKILL), loses its link; a rolling restart
# drained through HAProxy; all three stopped, then all three frozen. Each
# drill prints the requests sent, the failed ones (goal: 0) and the time
# until HAProxy takes the replica out. Prometheus scrapes HAProxy as the
# stack does, and the replicas dashboard's queries show each replica, and
# each one out of rotation during its drill. Then Jaeger: traces join
# service-b and the replica that answered, each named by its host.name.
# Last, uninstalling on b takes the balancer away.
#
#   deploy/tests/failover.sh [--binaries DIR]
#     --binaries: default target/release (built if missing)
#
# Needs root. Every global name (network namespaces, machines) carries a
# per-run suffix, and nothing uses the host's network: runs never collide.
# Cleans up after itself, pass or fail; gives up after $TEST_SYSTEMD_TIMEOUT s
# (1200). Jaeger and Prometheus come from $LAB_TOOLS
# (observability/build/build.sh, run if unset).
set -euo pipefail
. "$(dirname "$0")/harness.sh"

dir_options "[--binaries DIR]" binaries -- "$@"

harness_start failover.sh ip=iproute2 socat=socat haproxy=haproxy
resolve_binaries "$binaries"
python=/usr/bin/python3 # not a shim: the traffic's timing matters
[ -x "$python" ] || { echo "$me: needs $python" >&2; exit 1; }
LAB_TOOLS=${LAB_TOOLS:-$("$repo/observability/build/build.sh")}
for tool in jaeger prometheus; do
    [ -x "$LAB_TOOLS/$tool" ] || { echo "$me: no $tool in $LAB_TOOLS" >&2; exit 1; }
done

# ---------------------------------------------------------------- the network
id=$(printf '%x%02x' "$$" $((RANDOM % 256))) # this run's suffix
replicas=(a1 a2 a3)
declare -A ip=([b]=192.0.2.1 [a1]=192.0.2.11 [a2]=192.0.2.12 [a3]=192.0.2.13 [stack]=192.0.2.100)
declare -A init=() host=()
netns() { echo "lab-$id-$1"; } # the network namespace of machine $1 (sw: the bridge's)
tools=()
cleanup_more() {
    local pid m
    for pid in "${tools[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${tools[@]}"; do wait "$pid" 2>/dev/null || true; done
    for m in sw stack b "${replicas[@]}"; do ip netns del "$(netns "$m")" 2>/dev/null || true; done
    rm -rf "/etc/netns/$(netns stack)"
}
ip netns add "$(netns sw)"
ip -n "$(netns sw)" link add br0 type bridge
ip -n "$(netns sw)" link set br0 up
for m in b "${replicas[@]}" stack; do
    ip netns add "$(netns "$m")"
    ip link add eth0 netns "$(netns "$m")" type veth peer name "to-$m" netns "$(netns sw)"
    ip -n "$(netns sw)" link set dev "to-$m" master br0 up
    ip -n "$(netns "$m")" addr add "${ip[$m]}/24" dev eth0
    ip -n "$(netns "$m")" link set dev eth0 up
    ip -n "$(netns "$m")" link set dev lo up
done

# ---------------------------------------------------------------- the machines
# This machine's own system under an in-memory overlay, as a VM would run
# Debian with haproxy installed; each with its own host name (/etc/hostname,
# which systemd sets over nspawn's) and network namespace. haproxy.service,
# which this machine may enable, stays unmasked: b runs it.
unmask haproxy.service
for m in "${replicas[@]}" b; do
    host[$m]="$m-$id"
    echo "${host[$m]}" > "$work/hostname-$m"
    boot "$m" --host-overlay --network-namespace-path="/run/netns/$(netns "$m")" \
        --bind-ro="$work/hostname-$m:/etc/hostname" --bind-ro="$repo:/lab" --bind-ro="$binaries:/lab-bin"
    init[$m]=$init_pid
done
on() { local m=$1; shift; nsenter -t "${init[$m]}" -a timeout 60 "$@"; } # on MACHINE COMMAND...
show_on() { on "$1" systemctl show -p "$3" --value "$2"; }              # show_on MACHINE UNIT PROPERTY

# Jaeger, on b's network (as the stack would run beside service-b): OTLP on
# :4318 for every machine, its API on :16686.
cat > "$work/jaeger.yaml" <<'EOF'
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
extensions:
  jaeger_query:
    storage:
      traces: memstore
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 0.0.0.0:4318
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
ip netns exec "$(netns b)" "$LAB_TOOLS/jaeger" --config "$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 &
tools+=($!)
# Prometheus on the shipped prometheus.yml, in a namespace of its own as in
# its compose container, where host.docker.internal is the service-b host
# (compose's extra_hosts; `ip netns exec` mounts /etc/netns/NAME/hosts).
mkdir -p "/etc/netns/$(netns stack)" "$work/prometheus"
printf '127.0.0.1 localhost\n%s host.docker.internal\n' "${ip[b]}" > "/etc/netns/$(netns stack)/hosts"
cp "$repo/observability/prometheus/prometheus.yml" "$repo/observability/prometheus/rules.yml" "$work/prometheus/"
ip netns exec "$(netns stack)" "$LAB_TOOLS/prometheus" --config.file="$work/prometheus/prometheus.yml" \
    --storage.tsdb.path="$work/prometheus/data" --web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
tools+=($!)

# ---------------------------------------------------------------- install
say "install: service-a on a1, a2, a3; service-b and HAProxy on b (docs/SEVERAL-HOSTS.md)"
t=$(date +%s.%N)
for m in "${replicas[@]}"; do
    on "$m" /lab/deploy/install.sh --binaries /lab-bin --no-start 2>&1 | tail -n 1
    # As the doc says: listen on the machine's address, let b in, send
    # telemetry to the stack on b; service-b is not needed here.
    on "$m" sh -ec '
        printf "SERVICE_A_LISTEN=%s:8080\nOTEL_EXPORTER_OTLP_ENDPOINT=http://%s:4318\n" "$1" "$2" >> /etc/default/service-a
        mkdir -p /etc/systemd/system/service-a.service.d
        printf "[Service]\nIPAddressAllow=192.0.2.0/24\n" > /etc/systemd/system/service-a.service.d/network.conf
        systemctl daemon-reload
        systemctl disable --quiet service-b
        systemctl start service-a' _ "${ip[$m]}" "${ip[b]}"
done
balance=()
for m in "${replicas[@]}"; do balance+=("${host[$m]}=${ip[$m]}:8080"); done
out=$(IFS=,; on b /lab/deploy/install.sh --binaries /lab-bin --balancer "${balance[*]}" 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 4
expect "install.sh --balancer on b exits 0 ($rc); installed in $(elapsed_since "$t")s" test "$rc" = 0
for m in "${replicas[@]}"; do
    expect "service-a active on $m, listening on ${ip[$m]}:8080 ($(show_on "$m" service-a StatusText | cut -c1-40))" \
        contains "$(show_on "$m" service-a StatusText)" "serving on ${ip[$m]}:8080"
done
expect "b: haproxy and service-b active, enabled ($(show_on b haproxy ActiveState) $(show_on b service-b ActiveState) $(on b systemctl is-enabled haproxy))" \
    test "$(show_on b haproxy ActiveState) $(show_on b service-b ActiveState) $(on b systemctl is-enabled haproxy)" = "active active enabled"
expect "service-b calls service-a through HAProxy ($(show_on b service-b StatusText | grep -o '[^;]*127.0.0.1:8090[^;]*' || true))" \
    contains "$(show_on b service-b StatusText)" "127.0.0.1:8090"
# The stack scrapes HAProxy on b: its numbers on b's address too, as the
# doc says for a stack on another machine (the command again, with a flag).
out=$(on b two-service-lab-balancer --metrics-on "${ip[b]}:8404" "${balance[@]}" 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 2
expect "two-service-lab-balancer --metrics-on ${ip[b]}:8404: exit $rc, HAProxy reloaded" \
    sh -c '[ "$1" = 0 ] && printf "%s" "$2" | grep -q "reloaded haproxy"' _ "$rc" "$out"

# HAProxy's runtime API on b (Debian's haproxy.cfg opens it).
hap() { on b sh -c 'echo "$1" | socat stdio /run/haproxy/admin.sock' _ "$*"; }
# srv_stat NAME FIELD: one field of `show stat` for replica NAME (a1...).
srv_stat() {
    hap "show stat" | awk -F, -v s="${host[$1]}" -v f="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == f || $i == "# " f) col = i; next }
        $1 == "service_a" && $2 == s { print $col }'
}
# wait_status NAME PATTERN SECONDS: until the replica's status matches (a
# regular expression); prints the seconds it took, or fails.
wait_status() {
    local t0 end s
    t0=$(date +%s.%N) end=$((SECONDS + $3))
    while [ $SECONDS -lt $end ]; do
        s=$(srv_stat "$1" status)
        [[ "$s" =~ $2 ]] && { elapsed_since "$t0"; return 0; }
        sleep 0.05
    done
    echo "never ($s after $3 s)"
    return 1
}
all_up() {
    local m took
    for m in "${replicas[@]}"; do took=$(wait_status "$m" '^UP$' 15) || return 1; done
}
expect "HAProxy: all three replicas UP" all_up

# traffic NAME RATE SECONDS: bench/traffic.py through service-b on b, in the
# background; its JSON summary in $work/NAME.json.
traffic() {
    ip netns exec "$(netns b)" "$python" "$repo/bench/traffic.py" --url http://127.0.0.1:8081 \
        --rate "$2" --duration "$3" --concurrency 16 --timeout 5 --json > "$work/$1.json" &
    traffic_pid=$!
}
# outcome NAME: "SENT FAILED" and a line per kind, from traffic NAME's summary.
outcome() {
    "$python" -c '
import json, sys
s = json.load(open(sys.argv[1]))
failed = sum(r["count"] for r in s["outcomes"] if r["status"] != 200)
print(s["requests"], failed)
for r in s["outcomes"]:
    print("    %4d x %s %s (p50 %s ms, p99 %s ms)" % (r["count"], r["status"], r["kind"], r["p50_ms"], r["p99_ms"]), file=sys.stderr)
' "$work/$1.json"
}
# 2xx answers per replica, as HAProxy counts them.
answers() { local m; for m in "${replicas[@]}"; do srv_stat "$m" hrsp_2xx; done | tr '\n' ' '; }
# Connections HAProxy opened to the replicas, and requests sent on one it reused.
connections() { local m f; for f in connect reuse; do for m in "${replicas[@]}"; do srv_stat "$m" "$f"; done; done | awk '{ s[NR <= 3] += $1 } END { print s[1], s[0] }'; }

# ---------------------------------------------------------------- steady
say "1. all three up: 300 requests spread over the three"
read -r -a before <<<"$(answers)"
read -r opened reused <<<"$(connections)"
traffic steady 50 6
wait "$traffic_pid"
read -r -a after <<<"$(answers)"
read -r opened2 reused2 <<<"$(connections)"
read -r sent failed < <(outcome steady)
expect "steady: $sent requests sent, $failed failed (must be 0)" test "$sent" = 300 -a "$failed" = 0
expect "keep-alive to the replicas: $((opened2 - opened)) connections opened, $((reused2 - reused)) requests on a reused one" \
    test $((reused2 - reused)) -gt $((opened2 - opened))
for i in 0 1 2; do
    got=$((after[i] - before[i]))
    share=$(awk -v g="$got" -v n="$sent" 'BEGIN { printf "%.1f", 100 * g / n }')
    expect "${replicas[i]} answered $got of $sent ($share %, between 20 and 45 %)" \
        awk -v s="$share" 'BEGIN { exit !(s >= 20 && s <= 45) }'
done

# ---------------------------------------------------------------- one breaks
# drill NAME REPLICA BREAK MEND: traffic for 8 s at 40/s; 2 s in, BREAK runs
# (a command line, REPLICA's name in $m); prints the failed requests and the
# time from BREAK until HAProxy takes the replica out; then MEND (":" when
# systemd mends it), and the replica back UP before the next drill.
drill() {
    local name=$1 m=$2 break=$3 mend=$4 broke ejected sent failed back
    traffic "$name" 40 8
    sleep 2
    broke=$(date +%s.%N)
    eval "$break"
    ejected=$(wait_status "$m" '^DOWN' 10) || true
    wait "$traffic_pid"
    read -r sent failed < <(outcome "$name")
    echo "why, as HAProxy logged it: $(on b journalctl -u haproxy -o cat --no-pager --since "@${broke%.*}" |
        grep -m1 "${host[$m]} is DOWN" | sed 's/.*reason: //; s/ [0-9]* active.*//' || true)"
    expect "$name: $sent requests sent, $failed failed (goal 0); HAProxy took $m out ${ejected}s after" \
        test "$failed" = 0
    eval "$mend"
    back=$(wait_status "$m" '^UP$' 20) || true
    expect "$name: $m back UP ${back}s after $( [ "$mend" = : ] && echo "the traffic (systemd restarted it)" || echo "${mend//\"\$m\"/$m}")" \
        test "$(srv_stat "$m" status)" = UP
}
say "2. a1 freezes (systemctl kill -s SIGSTOP service-a)"
drill freeze a1 'on "$m" systemctl kill -s SIGSTOP service-a' 'on "$m" systemctl kill -s SIGCONT service-a'
say "3. a2 is killed (systemctl kill -s SIGKILL service-a; systemd restarts it)"
drill kill a2 'on "$m" systemctl kill -s SIGKILL service-a' ':'
expect "a2: restarted by systemd (NRestarts $(show_on a2 service-a NRestarts))" test "$(show_on a2 service-a NRestarts)" = 1
say "4. a3 loses its link (ip link set eth0 down)"
drill link a3 'ip -n "$(netns "$m")" link set dev eth0 down' 'ip -n "$(netns "$m")" link set dev eth0 up'

# ---------------------------------------------------------------- idle
say "5. idle for 11 s, then traffic: HAProxy's idle connections to the replicas have aged"
# HAProxy keeps idle connections to the replicas; a replica closes one after
# its idle timer, possibly just as HAProxy reuses it: that call goes again.
sleep 11
traffic idle 40 2
wait "$traffic_pid"
read -r sent failed < <(outcome idle)
expect "after 11 s idle: $sent requests sent, $failed failed (must be 0)" test "$failed" = 0

# ---------------------------------------------------------------- rolling
say "6. rolling restart, one replica at a time, each drained through HAProxy first"
rolling() {
    local m
    for m in "${replicas[@]}"; do
        hap "set server service_a/${host[$m]} state drain" >/dev/null
        # In-flight calls finish; none starts there any more.
        for _ in $(seq 40); do [ "$(srv_stat "$m" scur)" = 0 ] && break; sleep 0.05; done
        on "$m" systemctl restart service-a
        hap "set server service_a/${host[$m]} state ready" >/dev/null
        wait_status "$m" '^UP$' 15 >/dev/null || return 1
        echo "$m drained, restarted and UP again at $(elapsed_since "$t")s"
    done
}
pids="$(for m in "${replicas[@]}"; do show_on "$m" service-a MainPID; done | tr '\n' ' ')"
t=$(date +%s.%N)
traffic rolling 40 10
sleep 1
rolling > "$work/rolling.log" 2>&1 && rolled=yes || rolled=no
done_at=$(elapsed_since "$t")
wait "$traffic_pid"
cat "$work/rolling.log"
read -r sent failed < <(outcome rolling)
expect "rolling: all three restarted within the traffic (${done_at}s of 10 s; MainPIDs $pids-> $(for m in "${replicas[@]}"; do show_on "$m" service-a MainPID; done | tr '\n' ' '))" \
    sh -c '[ "$1" = yes ] && awk -v d="$2" "BEGIN { exit !(d < 10) }"' _ "$rolled" "$done_at"
expect "rolling: $sent requests sent, $failed failed (must be 0)" test "$failed" = 0

# ---------------------------------------------------------------- Prometheus
say "7. Prometheus (job haproxy): the replicas dashboard's queries, and each replica out during its drill"
# Every query of observability/grafana/dashboards/service-a-replicas.json
# shows each replica by name; "in rotation" is 1 for each now, and went to
# 0 for a1 and a3, out for 5 s and more in their drills (a2, killed, was
# back within a second or two: a 5 s scrape may not see it).
prometheus_check() {
    ip netns exec "$(netns stack)" "$python" - "$repo/observability/grafana/dashboards/service-a-replicas.json" \
        "${host[a1]}" "${host[a2]}" "${host[a3]}" <<'EOF'
import json, sys, urllib.parse, urllib.request
dashboard, names = sys.argv[1], set(sys.argv[2:])
def query(expr):
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
ok = True
for panel in json.load(open(dashboard))["panels"]:
    for target in panel["targets"]:
        series = query(target["expr"].replace("$__rate_interval", "1m"))
        servers = {s["metric"].get("server") for s in series}
        per_replica = "server" in target["expr"]
        good = bool(series) and (not per_replica or names <= servers)
        ok &= good
        print(f"  panel {panel['title']!r}: {len(series)} series" + (f", replicas {sorted(servers)}" if per_replica else ""))
up = 'haproxy_server_status{proxy="service_a", state="UP"}'
lowest = {s["metric"]["server"]: s["value"][1] for s in query(f"min_over_time({up}[5m])")}
now = {s["metric"]["server"]: s["value"][1] for s in query(up)}
print(f"  in rotation now {dict(sorted(now.items()))}; lowest in 5 min {dict(sorted(lowest.items()))}")
ok &= all(now.get(n) == "1" for n in names)
ok &= all(lowest.get(n) == "0" for n in sys.argv[2:] if n.startswith(("a1-", "a3-")))
sys.exit(0 if ok else 1)
EOF
}
prometheus_check > "$work/prometheus.check" && ok=yes || ok=no
cat "$work/prometheus.check"
expect "Prometheus scraped HAProxy: every panel shows the three replicas; a1 and a3 went out of rotation, all are back" test "$ok" = yes

# ---------------------------------------------------------------- all down
say "8. all three stopped: 503 no_healthy_upstream, at once"
for m in "${replicas[@]}"; do on "$m" systemctl stop service-a; done
reply=$(on b curl -s --max-time 5 -w ' %{http_code} %{time_total}' 'http://127.0.0.1:8081/call-echo?msg=down' || true)
echo "the first call: $reply"
read -r code took <<<"${reply##*\}}"
expect "503 \"error\":\"no_healthy_upstream\", \"http_status\":503, in ${took}s (at once: under 0.1 s)" \
    sh -c '[ "$1" = 503 ] && case "$2" in *\"error\":\"no_healthy_upstream\",\"http_status\":503,*) ;; *) exit 1 ;; esac &&
        awk -v t="$3" "BEGIN { exit !(t < 0.1) }"' _ "$code" "$reply" "$took"
traffic down 40 3
wait "$traffic_pid"
read -r sent failed < <(outcome down)
kinds=$("$python" -c 'import json,sys; print(" ".join(sorted({r["kind"] for r in json.load(open(sys.argv[1]))["outcomes"]})))' "$work/down.json")
expect "then $sent of $sent answered 503 no_healthy_upstream ($kinds), none circuit_open" \
    test "$failed $kinds" = "$sent no_healthy_upstream"

say "9. all three frozen: 503 timeout within the deadline (then the breaker, or no_healthy_upstream at once)"
for m in "${replicas[@]}"; do on "$m" systemctl start service-a; done
all_up
for m in "${replicas[@]}"; do on "$m" systemctl kill -s SIGSTOP service-a; done
traffic frozen 20 5
wait "$traffic_pid"
read -r sent failed < <(outcome frozen)
"$python" - "$work/frozen.json" > "$work/frozen.check" <<'EOF' && ok=yes || ok=no
import json, sys
rows = json.load(open(sys.argv[1]))["outcomes"]
kinds = {r["kind"] for r in rows}
# Each kind within the deadline (1 s) plus the contract's 100 ms: timeout
# while HAProxy still tries them (its own 504, at 2 x 400 ms), then
# circuit_open once service-b's breaker opens, or no_healthy_upstream once
# HAProxy has taken them all out.
late = [r for r in rows if r["p99_ms"] > 1100]
print(f"kinds {sorted(kinds)}, slowest p99 {max(r['p99_ms'] for r in rows)} ms")
sys.exit(0 if kinds <= {"timeout", "no_healthy_upstream", "circuit_open"} and "timeout" in kinds and not late else 1)
EOF
expect "frozen: $sent sent, all 503 ($failed): $(cat "$work/frozen.check")" test "$ok $failed" = "yes $sent"
for m in "${replicas[@]}"; do on "$m" systemctl kill -s SIGCONT service-a; done

# ---------------------------------------------------------------- Jaeger
say "10. Jaeger: a trace joins service-b and the replica that answered, by host.name"
# Spans are exported in batches (every 5 s): poll until they are in, bounded.
# Exit 0: each replica named by host.name; 1: not; 2: the spans are not all in.
jaeger_check() {
    ip netns exec "$(netns b)" curl -s --max-time 10 \
        "http://127.0.0.1:16686/api/traces?service=service-b&operation=GET%20%2Fcall-echo&limit=3000&lookback=1h" |
        "$python" -c '
import json, sys
want = set(sys.argv[1:])
seen, joined, sent_again, both, example = {}, 0, 0, 0, None
for trace in json.load(sys.stdin)["data"]:
    procs = trace["processes"]
    spans = {s["spanID"]: s for s in trace["spans"]}
    tags = lambda x: {t["key"]: t["value"] for t in x}
    children = {}
    for s in trace["spans"]:
        p = procs[s["processID"]]
        if p["serviceName"] != "service-a" or not s["references"]:
            continue
        parent = spans.get(s["references"][0]["spanID"])
        if parent is None or procs[parent["processID"]]["serviceName"] != "service-b":
            continue
        if tags(parent["tags"]).get("span.kind") != "client":
            continue
        joined += 1
        host = tags(p.get("tags", [])).get("host.name", "-")
        seen[host] = seen.get(host, 0) + 1
        children.setdefault(parent["spanID"], []).append((host, s["duration"] // 1000))
    # A call HAProxy sent again: a CLIENT span that waited out a frozen or
    # cut-off replica (400 ms) and got its 200 from one that took a few ms.
    for client, kids in children.items():
        status = tags(spans[client]["tags"]).get("http.response.status_code")
        if 350_000 <= spans[client]["duration"] < 700_000 and status == 200 and any(ms < 100 for _, ms in kids):
            sent_again += 1
            both += len(kids) > 1
            example = example or (spans[client]["duration"] // 1000, kids)
shown = f"e.g. a CLIENT span of {example[0]} ms, its service-a children (host.name, ms) {example[1]}" if example else "none"
print(f"{joined} service-a spans children of a service-b CLIENT span; by host.name: {dict(sorted(seen.items()))}; "
      f"{sent_again} calls sent again (a 200 after 350 to 700 ms, answered in less than 100 ms; {both} of them with a span "
      f"of the replica that did not answer too, made once it could), {shown}")
sys.exit(2 if joined < 1500 or not sent_again else 0 if want <= set(seen) else 1)
' "${host[a1]}" "${host[a2]}" "${host[a3]}"
}
for _ in $(seq 20); do
    jaeger=$(jaeger_check) && rc=0 || rc=$?
    [ "$rc" = 2 ] || break
    sleep 1
done
echo "Jaeger: $jaeger"
expect "Jaeger: a trace joins service-b and the replica that answered; each replica named by its host.name (a1, a2, a3 are ${host[a1]}, ${host[a2]}, ${host[a3]})" \
    test "$rc" = 0

say "11. on b, deploy/install.sh --uninstall takes the balancer away too"
out=$(on b /lab/deploy/install.sh --uninstall 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 3
expect "exit $rc; the balancer's drop-ins and command gone, haproxy on Debian's configuration alone ($(show_on b haproxy ActiveState))" \
    on b sh -c '[ "$1" = 0 ] && ! test -e /etc/systemd/system/haproxy.service.d/service-a-balancer.conf &&
        ! test -e /etc/systemd/system/service-b.service.d/balancer.conf && ! test -e /usr/local/sbin/two-service-lab-balancer &&
        test -e /etc/haproxy/service-a-balancer.cfg.old && systemctl is-active --quiet haproxy &&
        ! curl -s -o /dev/null --max-time 2 http://127.0.0.1:8090/' _ "$rc"

harness_finish
