#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, and the whole test
# suite (unit, handler-level, and real processes on real sockets).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*" >&2; }

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

# curl and pgrep drive the daemons in the shell tests below; Go builds the
# observability stack; python3-yaml reads its YAML files; Debian's docker.io
# (Engine 20.10, containerd, runc) runs it, with Compose built here, and
# Debian 12's docker-compose (1.29) runs it once more as that release's users
# do; the images take CA certificates and mime.types from the host; iproute2
# sees what the engine adds to the network; npm fetches the pinned Grafana
# release's packages (its dashboard schema and Prometheus options) for the
# static checks; python3 and valgrind (callgrind) count instructions per
# request; strace shows the order in which a daemon starts (its signal
# handlers come first).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
command -v ip >/dev/null || missing+=(iproute2)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ -r /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
[ -r /etc/mime.types ] || missing+=(media-types)
command -v npm >/dev/null || missing+=(npm)
/usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
command -v python3 >/dev/null || missing+=(python3)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v strace >/dev/null || missing+=(strace)
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { $sudo apt-get update -qq &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

step "cargo fmt --check"
cargo fmt --all -- --check
# fuzz/ is a workspace of its own (it builds with sanitizers): checked by name.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings

# The collector, Jaeger and Prometheus 3 (+ promtool) from their Go modules,
# at the releases compose.yaml pins, and Docker Compose (cached in ~/.cache
# and Go's caches).
step "build the observability stack (observability/build/build.sh)"
LAB_TOOLS=$(observability/build/build.sh)
export LAB_TOOLS
# -trimpath and static as build.sh builds: vet reuses the compiled dependencies.
step "go vet (observability/build/otelcol)"
(cd observability/build/otelcol && PATH=$PATH:/usr/local/go/bin GOFLAGS=-buildvcs=false CGO_ENABLED=0 go vet -trimpath ./...)

# --include-ignored: the tests that need those tools are ignored by a bare
# `cargo test`; here they run. The stack_ tests need the running stack: next.
step "cargo test --workspace"
cargo test --workspace --locked -- --include-ignored --skip stack_

# The stack as users run it: `docker compose up` of the shipped compose.yaml
# under a Docker Engine of the test's own, the images built from the
# binaries above, the daemons at their telemetry defaults. Two engines at
# once, as their tests mostly wait for exports: on the host's ports, a
# timeout's trace in Jaeger and every rule and panel at the default 60 s
# export (one shared stack: stack.rs), then, on that stack, the docs'
# walkthroughs in Jaeger (the units in a container: deploy/tests/docs.sh
# stack, on the debug binaries); in a network namespace of its own,
# each in a stack of its own (stack_engine.rs), what only the engine shows,
# Debian 12's Compose on the file, a fault on a tenth of service-a's answers
# for a minute (its 5 m rate windows must hold its traffic only), and the
# images against the upstream facts their Dockerfiles cite. The test
# programs run directly: two cargo commands would wait for each other.
step "the observability stack under Docker Engine and Compose (observability/with-engine.sh, twice at once)"
test_program() { # test_program NAME: the path of service-b's test program tests/NAME.rs
    cargo test --locked -p service-b --test "$1" --no-run --message-format=json 2>/dev/null |
        /usr/bin/python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
cargo test --locked -p service-b --test stack --test stack_engine --no-run
own_log=$(mktemp)
$sudo observability/with-engine.sh --netns "$LAB_TOOLS" "$(test_program stack_engine)" \
    --include-ignored --nocapture >"$own_log" 2>&1 &
own=$!
shared_status=0
$sudo observability/with-engine.sh "$LAB_TOOLS" sh -c '"$@" && deploy/tests/docs.sh stack' _ \
    "$(test_program stack)" --include-ignored --nocapture || shared_status=$?
own_status=0
wait "$own" || own_status=$?
step "(the stacks of their own, in a network namespace: observability/with-engine.sh --netns)"
cat "$own_log"
rm -f "$own_log"
if [ "$shared_status" -ne 0 ] || [ "$own_status" -ne 0 ]; then
    echo "the observability stack: failed (shared $shared_status, own $own_status)" >&2
    exit 1
fi

# The daemons in the tests export telemetry to a collector that refuses
# connections; once more with one that accepts and never answers: no answer
# or latency the contract promises may change.
step "contract tests again, with a black-holed OTLP collector"
TESTKIT_OTLP=blackhole cargo test --workspace --locked --test processes --test program --test faults \
    -- --skip ten_thousand

# Fuzzing, bounded: query decoding and the classifier of service-a's answers.
step "fuzz (fuzz/run.sh, ${FUZZ_SECONDS:-30}s per target)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fuzz/run.sh "${FUZZ_SECONDS:-30}"

# The README's run command as a user runs it (builds the release binaries).
step "run.sh (testkit/run-sh-test.sh)"
testkit/run-sh-test.sh

# The docs' walkthroughs with plain processes (the quick start's ./run.sh,
# the API, the settings), as written, in a network and process namespace of
# their own; first the checks that run nothing (every shell block marked,
# the paths and figures the docs cite).
step "the docs with plain processes (testkit/docs-test.py --phase local)"
testkit/docs-test.py --phase local

# Instructions per request under callgrind, on the release binaries run.sh
# built: fails when a figure rises more than 10 % above
# bench/instructions-baseline.json (docs/PERFORMANCE.md).
step "instructions per request against the baseline (bench/bench.py --instructions --check)"
bench/bench.py --instructions --check

# The Debian package, with the README's command (the release binaries are
# there from run.sh, so nothing is compiled again), and the same once more
# as a later revision: the upgrade that deploy/tests/deb.sh installs over it.
step "Debian package (cargo deb -p service-b)"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
rm -rf target/debian target/debian-test
cargo deb -p service-b --locked
mkdir -p target/debian-test
cp target/debian/two-service-lab_*.deb target/debian-test/
# (cargo deb removes older builds from target/debian, hence the copy)
cargo deb -p service-b --locked --no-build --deb-revision 2 -o target/debian-test/

# Real systemd in containers: the units, deploy/install.sh as root and as a
# user with sudo, the .deb through apt.
step "systemd end to end: the units (deploy/tests/units.sh)"
# otlp-sink: the stand-in collector units.sh reads host.name from.
cargo build --locked -p testkit --bin otlp-sink
$sudo deploy/tests/units.sh --binaries target/debug
step "systemd end to end: install from a checkout as users do (deploy/tests/user-install.sh)"
$sudo deploy/tests/user-install.sh
step "systemd end to end: the .deb through apt (deploy/tests/deb.sh)"
$sudo deploy/tests/deb.sh --debs target/debian-test
# The README's install and "break service-a" walkthroughs and the operations
# guide's, as written (sudo, systemctl), on a copy of this machine.
step "the docs on a machine with systemd (deploy/tests/docs.sh vm)"
$sudo deploy/tests/docs.sh vm
# Three service-a machines behind HAProxy on a service-b machine, each its
# own systemd and network: failover drills under steady traffic, their
# figures printed (about 2.5 min).
step "failover drills: three service-a's behind HAProxy (deploy/tests/failover.sh)"
$sudo env LAB_TOOLS="$LAB_TOOLS" deploy/tests/failover.sh --binaries target/debug

step "all tests passed"
