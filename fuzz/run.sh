#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60). Needs cargo-fuzz
# (`cargo install cargo-fuzz --locked`); it builds with the stable toolchain
# and RUSTC_BOOTSTRAP=1 for the sanitizer flags. A crash leaves its input in
# fuzz/artifacts/<target>/: turn it into a regression test, then fix it.
# Seeds in fuzz/seeds/<target>/ (committed) start each run where the
# interesting inputs are; fuzz/corpus/<target>/ keeps what a run found.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "==> fuzz $target for ${seconds}s" >&2
    status=0
    seeds=()
    [ -d "seeds/$target" ] && seeds=("corpus/$target" "seeds/$target")
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" "${seeds[@]}" -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|panicked|SUMMARY|Test unit written' "$log" >&2 || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz $target failed: its input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
