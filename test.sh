#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, and the whole test
# suite (unit, handler-level, and real processes on real sockets).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*" >&2; }

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

# curl and pgrep drive the daemons in the shell tests below.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { $sudo apt-get update -qq &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fetch Prometheus, promtool, vmagent and docker-compose from Debian trixie"
LAB_TOOLS=$(.ci/fetch-trixie-tools)
export LAB_TOOLS

# --include-ignored: the tests that need those tools are ignored by a bare
# `cargo test`; here they run.
step "cargo test --workspace"
cargo test --workspace --locked -- --include-ignored

# The daemons in the tests export telemetry to a collector that refuses
# connections; once more with one that accepts and never answers: no answer
# or latency the contract promises may change.
step "contract tests again, with a black-holed OTLP collector"
TESTKIT_OTLP=blackhole cargo test --workspace --locked --test processes

# Fuzzing, bounded: query decoding and the classifier of service-a's answers.
step "fuzz (fuzz/run.sh, ${FUZZ_SECONDS:-30}s per target)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fuzz/run.sh "${FUZZ_SECONDS:-30}"

# The README's run command as a user runs it (builds the release binaries).
step "run.sh (testkit/run-sh-test.sh)"
testkit/run-sh-test.sh

# The Debian package, with the README's command (the release binaries are
# there from run.sh, so nothing is compiled again), and the same once more
# as a later revision: the upgrade that test-systemd.sh installs over it.
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
step "systemd end to end (deploy/test-systemd.sh)"
$sudo deploy/test-systemd.sh --binaries target/debug --debs target/debian-test

step "all tests passed"
