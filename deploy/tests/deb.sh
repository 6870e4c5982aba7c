#!/usr/bin/env bash
# The Debian package under a real systemd: in a copy of this machine's system
# under an in-memory overlay (a network of its own), the .deb is installed,
# reinstalled, upgraded, asked for the balancer it ships (HAProxy in front of
# service-a), removed and purged with apt (checks 14-17), and checked as a
# user of `systemctl` would. Needs root; cleans up after itself,
# pass or fail, and gives up after $TEST_SYSTEMD_TIMEOUT s (1200) whatever
# hangs.
#
#   deploy/tests/deb.sh --debs DIR
#     --debs: two-service-lab_*.deb files (cargo deb -p service-b); the lowest
#             version is installed first, the highest is the upgrade
set -euo pipefail
. "$(dirname "$0")/harness.sh"

dir_options "--debs DIR" debs -- "$@"
[ -n "$debs" ] || { echo "usage: $0 --debs DIR (two-service-lab_*.deb files, as ./test.sh builds them)" >&2; exit 2; }
ls "$debs"/two-service-lab_*.deb >/dev/null 2>&1 || { echo "deb.sh: no two-service-lab_*.deb in $debs" >&2; exit 1; }

harness_start deb.sh haproxy=haproxy
unmask haproxy.service

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
expect "the fault file's folder made: /etc/service-a ($(ct stat -c '%U %a' /etc/service-a 2>&1))" \
    test "$(ct stat -c '%U %a' /etc/service-a)" = "root 755"
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

say "16. asked for, the balancer the .deb ships: two-service-lab-balancer HOST:PORT"
# One replica, which nothing reaches here (this container's network is its
# loopback): HAProxy answers for it, and service-b says why, at once.
out=$(ct two-service-lab-balancer 192.0.2.99:8080 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 3
expect "two-service-lab-balancer exits 0 ($rc); haproxy $(show haproxy ActiveState), $(ct systemctl is-enabled haproxy)" \
    test "$rc $(show haproxy ActiveState) $(ct systemctl is-enabled haproxy)" = "0 active enabled"
reply=$(ct curl -s --max-time 5 -w ' %{http_code} %{time_total}' "$B/call-echo?msg=balanced" || true)
echo "curl through service-b and HAProxy: $reply"
expect "503 no_healthy_upstream, at once (under 0.1 s)" \
    sh -c 'case "$1" in *"\"error\":\"no_healthy_upstream\""*" 503 "*) ;; *) exit 1 ;; esac &&
        awk -v t="${1##* }" "BEGIN { exit !(t < 0.1) }"' _ "$reply"

say "17. apt remove stops them and keeps the settings; apt purge removes them, and the balancer"
ct env DEBIAN_FRONTEND=noninteractive apt remove -y -q two-service-lab 2>&1 | tail -n 2
expect "stopped and gone: $(show service-a ActiveState)/$(show service-a LoadState) $(show service-b ActiveState)/$(show service-b LoadState), nothing answers" \
    test "$(show service-a ActiveState) $(show service-b ActiveState) $(ct_code $A/health)$(ct_code $B/health)" = "inactive inactive 000000"
expect "binaries gone" ct sh -c '! test -e /usr/bin/service-a && ! test -e /usr/bin/service-b'
expect "settings kept, with the edit: $(settings)" \
    sh -c '[ "$1" = "root:root 640 root:root 640 " ] && nsenter -t "$2" -a grep -q "^SERVICE_B_UPSTREAM_TIMEOUT=2s$" /etc/default/service-b' _ "$(settings)" "$init_pid"
ct env DEBIAN_FRONTEND=noninteractive apt purge -y -q two-service-lab 2>&1 | tail -n 2
expect "purged: settings and the fault file's folder gone, dpkg forgot it" \
    ct sh -c '! test -e /etc/default/service-a && ! test -e /etc/default/service-b && ! test -e /etc/service-a && ! dpkg-query -W two-service-lab 2>/dev/null'
expect "purged: the balancer's files gone, haproxy on Debian's configuration alone ($(show haproxy ActiveState), :8090 $(ct_code http://127.0.0.1:8090/))" \
    ct sh -c '! test -e /etc/haproxy/service-a-balancer.cfg && ! test -e /etc/systemd/system/haproxy.service.d/service-a-balancer.conf &&
        ! test -e /etc/systemd/system/service-b.service.d/balancer.conf && systemctl is-active --quiet haproxy &&
        ! curl -s -o /dev/null --max-time 2 http://127.0.0.1:8090/'

harness_finish
