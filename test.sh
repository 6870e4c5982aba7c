#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, and the whole test
# suite (unit, handler-level, and real processes on real sockets).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*" >&2; }

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

# curl and pgrep drive the daemons in the shell tests below; Go builds the
# observability stack; python3-yaml reads its YAML files, socat publishes its
# ports, iproute2 makes its network namespaces; python3 and valgrind
# (callgrind) count instructions per request; strace shows the order in
# which a daemon starts (its signal handlers come first).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
command -v socat >/dev/null || missing+=(socat)
command -v ip >/dev/null || missing+=(iproute2)
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
# at the releases compose.yaml pins (cached in ~/.cache and Go's caches).
step "build the observability stack (observability/build/build.sh)"
LAB_TOOLS=$(observability/build/build.sh)
export LAB_TOOLS
# -trimpath as build.sh builds: vet reuses the compiled dependencies.
step "go vet (observability/build/otelcol)"
(cd observability/build/otelcol && PATH=$PATH:/usr/local/go/bin GOFLAGS=-buildvcs=false go vet -trimpath ./...)

# --include-ignored: the tests that need those tools are ignored by a bare
# `cargo test`; here they run. The stack_ tests need the running stack: next.
step "cargo test --workspace"
cargo test --workspace --locked -- --include-ignored --skip stack_

# The stack on the shipped configuration, in network namespaces wired as
# compose wires it; the daemons at their telemetry defaults (about 5 min:
# metrics are exported every 60 s by default).
step "the observability stack, run for real (observability/netns-stack.sh)"
$sudo observability/netns-stack.sh "$LAB_TOOLS" \
    cargo test --locked -p service-b --test stack -- --include-ignored --nocapture --skip stack_faults
# A fault on a tenth of service-a's answers, the traffic command for a
# minute: degraded share, alert, tail sampling, span metrics, exemplars. A
# stack of its own: its 5 m rate windows must hold its traffic only.
step "the observability stack: faults on purpose (observability/netns-stack.sh)"
$sudo observability/netns-stack.sh "$LAB_TOOLS" \
    cargo test --locked -p service-b --test stack -- --include-ignored --nocapture stack_faults

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

# Instructions per request under callgrind, on the release binaries run.sh
# built: fails when a figure rises more than 10 % above
# bench/instructions-baseline.json (README, Performance).
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
# Three service-a machines behind HAProxy on a service-b machine, each its
# own systemd and network: failover drills under steady traffic, their
# figures printed (about 2.5 min).
step "failover drills: three service-a's behind HAProxy (deploy/tests/failover.sh)"
$sudo env LAB_TOOLS="$LAB_TOOLS" deploy/tests/failover.sh --binaries target/debug

step "all tests passed"
