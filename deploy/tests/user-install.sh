#!/usr/bin/env bash
# Installing from a checkout, as users do, under a real systemd: boots this
# machine's whole system under a writable in-memory overlay (its users, sudo,
# apt and dpkg database; nothing persists; a network of its own) and checks
# (9-13): a user with sudo and a rustup toolchain runs `sudo deploy/install.sh`
# in their checkout; again, nothing restarts; switching modes; a user
# without a toolchain is told what to do; two hosts (network namespaces).
# Needs root and this machine's rustup toolchain (it builds as the user, from
# this machine's release build of the dependencies when target/release has
# one); cleans up after itself, pass or fail, and gives up after
# $TEST_SYSTEMD_TIMEOUT s (1200) whatever hangs.
#
#   deploy/tests/user-install.sh
set -euo pipefail
. "$(dirname "$0")/harness.sh"

dir_options "" -- "$@"
harness_start user-install.sh sudo=sudo ip=iproute2

# This machine's whole system under a writable in-memory overlay (its users,
# sudo, apt and dpkg database; nothing persists): a VM where a user with
# sudo installs from a checkout.
say "9. a user with sudo and a rustup toolchain in ~/.cargo/bin: sudo deploy/install.sh"
boot users --host-overlay --private-network
# Its own network (loopback only): nothing here needs the host's ports.
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
    { echo "user-install.sh: no rustup toolchain found (cargo on PATH, or ~${SUDO_USER:-root}/.cargo/bin)" >&2; exit 1; }
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

harness_finish
