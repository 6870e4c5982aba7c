#!/usr/bin/env bash
# Puts HAProxy (Debian's haproxy package) between service-b and several
# service-a replicas on this host, or takes it away again. Idempotent: run it
# again with another list of replicas to change them.
#
#   sudo two-service-lab-balancer [NAME=]HOST:PORT...   balance over these replicas
#   sudo two-service-lab-balancer --remove              service-b calls SERVICE_A_URL directly again
#   --metrics-on ADDR:PORT   HAProxy's numbers (:8404, loopback) also there, for a
#                            Prometheus elsewhere: 172.17.0.1:8404 is Docker's bridge
#                            on this VM, where the compose stack scrapes it
#                            (bound even before Docker has made that address)
#
# (From a checkout: sudo deploy/balancer.sh ...; deploy/install.sh --balancer
# runs it. The .deb installs it as /usr/sbin/two-service-lab-balancer.)
# NAME is how HAProxy's numbers name the replica; by default HOST. Give each
# replica its host name (what its telemetry reports as host.name), so that
# HAProxy's numbers and Jaeger name it alike.
#
# What goes where:
#   /etc/haproxy/service-a-balancer.cfg            the balancer (from the shipped
#                                                  one, with your replicas; the
#                                                  file it replaces is kept as .old)
#   /etc/systemd/system/haproxy.service.d/service-a-balancer.conf
#                                                  HAProxy loads it after haproxy.cfg
#   /etc/systemd/system/service-b.service.d/balancer.conf
#                                                  SERVICE_A_URL=http://127.0.0.1:8090
set -Eeuo pipefail

me=two-service-lab-balancer
say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { say "$*"; exit 1; }
trap 'say "failed (exit $?): $BASH_COMMAND"' ERR

usage() { sed -n '2,/^set -/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
here=$(cd "$(dirname "$0")" && pwd)
# The shipped files: beside this script in a checkout, or under
# share/two-service-lab/haproxy next to the sbin/ it is installed in.
shipped=""
for dir in "$here/haproxy" "$here/../share/two-service-lab/haproxy"; do
    [ -f "$dir/service-a-balancer.cfg" ] && { shipped=$(cd "$dir" && pwd); break; }
done

config=/etc/haproxy/service-a-balancer.cfg
haproxy_dropin=/etc/systemd/system/haproxy.service.d/service-a-balancer.conf
service_b_dropin=/etc/systemd/system/service-b.service.d/balancer.conf

remove=no
replicas=()
metrics_on=""
while [ $# -gt 0 ]; do
    case "$1" in
        --remove) remove=yes ;;
        --metrics-on)
            metrics_on=${2:?--metrics-on needs ADDR:PORT}
            [[ "$metrics_on" =~ ^[0-9.]+:[0-9]+$ ]] || die "--metrics-on $metrics_on: expected an IPv4 ADDR:PORT such as 172.17.0.1:8404"
            shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) replicas+=("$1") ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
command -v systemctl >/dev/null || die "systemctl not found: this needs systemd"

# Restarts service-b if it runs, so that it reads its SERVICE_A_URL again.
restart_service_b() {
    if systemctl is-active --quiet service-b.service; then
        say "restarting service-b"
        systemctl restart service-b.service || die "systemctl restart service-b failed; see: journalctl -u service-b -n 20"
    fi
}

if [ "$remove" = yes ]; then
    [ "${#replicas[@]}" -eq 0 ] || die "--remove takes no replicas"
    rm -f "$haproxy_dropin" "$service_b_dropin"
    rmdir --ignore-fail-on-non-empty "$(dirname "$haproxy_dropin")" "$(dirname "$service_b_dropin")" 2>/dev/null || true
    [ -f "$config" ] && mv -f "$config" "$config.old" && say "moved $config to $config.old"
    systemctl daemon-reload
    if systemctl is-active --quiet haproxy.service; then
        systemctl restart haproxy.service || die "systemctl restart haproxy failed; see: journalctl -u haproxy -n 20"
    fi
    restart_service_b
    say "removed: service-b calls SERVICE_A_URL from /etc/default/service-b (or its default) directly"
    exit 0
fi

[ "${#replicas[@]}" -gt 0 ] || { usage >&2; exit 2; }
[ -n "$shipped" ] || die "the shipped HAProxy files are not beside $0 (haproxy/ or ../share/two-service-lab/haproxy/)"
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || die "HAProxy is not installed: sudo apt install haproxy, then run this again"
[ -f /lib/systemd/system/haproxy.service ] || [ -f /usr/lib/systemd/system/haproxy.service ] ||
    die "no haproxy.service: this expects Debian's (or Ubuntu's) haproxy package"

# The server lines, checked: NAME is what HAProxy accepts in a server name.
servers=""
declare -A seen=()
for replica in "${replicas[@]}"; do
    name=${replica%%=*} address=${replica#*=}
    [ "$name" != "$replica" ] || name=${address%:*}
    [[ "$address" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] ||
        die "$replica: expected HOST:PORT or NAME=HOST:PORT (e.g. 10.0.0.11:8080)"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "$replica: a name may hold letters, digits, '.', '_' and '-'"
    [ -z "${seen[$name]:-}" ] || die "$name is given twice"
    seen[$name]=1
    servers+="    server $name $address"$'\n'
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The shipped file, its example server lines replaced by the replicas.
awk -v servers="$servers" -v metrics="$metrics_on" '
    /^    server / { if (!done) printf "%s", servers; done = 1; next }
    /^    bind 127\.0\.0\.1:8404$/ && metrics != "" { print; print "    bind " metrics " transparent"; next }
    { print }' "$shipped/service-a-balancer.cfg" > "$work/config"
grep -q '^    server ' "$work/config" || die "$shipped/service-a-balancer.cfg has no server line to replace"
[ -z "$metrics_on" ] || grep -q "^    bind $metrics_on transparent\$" "$work/config" ||
    die "$shipped/service-a-balancer.cfg has no 'bind 127.0.0.1:8404' line to add --metrics-on to"
debian_config=/etc/haproxy/haproxy.cfg
if ! out=$("$haproxy" -c -q -f "$debian_config" -f "$work/config" 2>&1); then
    printf '%s\n' "$out" >&2
    die "HAProxy refuses this configuration (with $debian_config); nothing was changed"
fi

changed=no
# Copies $1 to $2 unless identical (the replaced file kept as $2.old).
place() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 0
    fi
    [ -f "$2" ] && cp -p "$2" "$2.old" && say "your previous $2 is $2.old"
    install -D -m 0644 "$1" "$2.new"
    mv -f "$2.new" "$2"
    say "installed $2"
    changed=yes
}
place "$work/config" "$config"
config_changed=$changed
changed=no
place "$shipped/haproxy.service.conf" "$haproxy_dropin"
dropin_changed=$changed
changed=no
place "$shipped/service-b.service.conf" "$service_b_dropin"
service_b_changed=$changed
systemctl daemon-reload

if grep -Eq '^[[:space:]]*SERVICE_A_URL=' /etc/default/service-b 2>/dev/null; then
    say "warning: /etc/default/service-b sets SERVICE_A_URL, which wins over the balancer's; comment it out to go through HAProxy"
fi
systemctl enable --quiet haproxy.service
if ! systemctl is-active --quiet haproxy.service; then
    systemctl start haproxy.service || die "systemctl start haproxy failed; see: journalctl -u haproxy -n 20"
    say "started haproxy"
elif [ "$dropin_changed" = yes ]; then
    # A reload re-runs HAProxy's first command line: a new one needs a restart.
    systemctl restart haproxy.service || die "systemctl restart haproxy failed; see: journalctl -u haproxy -n 20"
    say "restarted haproxy"
elif [ "$config_changed" = yes ]; then
    # A reload keeps the connections that are open; the new replicas apply to the next calls.
    systemctl reload haproxy.service || die "systemctl reload haproxy failed; see: journalctl -u haproxy -n 20"
    say "reloaded haproxy"
fi
[ "$service_b_changed" = no ] || restart_service_b
say "service-b -> http://127.0.0.1:8090 (HAProxy) -> ${replicas[*]}"
say "replicas up or down: curl -s http://127.0.0.1:8404/metrics | grep '^haproxy_server_status{.*state=\"UP\"}'"
