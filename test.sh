#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, and the whole test
# suite (unit, handler-level, and real processes on real sockets).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked

step "all tests passed"
