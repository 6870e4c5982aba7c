#!/usr/bin/env bash
# Builds the observability stack's programs from their Go modules, at the
# releases that observability/compose.yaml pins for its images:
#
#   otelcol-lab          the OpenTelemetry Collector (core + contrib modules),
#                        with the components listed in otelcol/components.go
#   jaeger               Jaeger v2 (cmd/jaeger; its UI is a placeholder when
#                        built from the module, its HTTP API is complete)
#   prometheus, promtool Prometheus 3 (without its web UI assets and its
#                        service-discovery plugins: everything arrives by push)
#
#   observability/build/build.sh [DIR]
#       DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/two-service-lab/stack
#
# Prints the absolute path of DIR/bin on stdout and nothing else (progress on
# stderr). Each module here (otelcol/, jaeger/, prometheus/) pins its program
# and every dependency in its go.mod/go.sum; this script first checks that
# those versions are the releases compose.yaml's image tags name, so the
# images users run and the binaries the tests run cannot drift apart. A rerun
# with nothing changed only checks and prints (Go's module and build caches
# make a rebuild after a change quick too).
set -euo pipefail

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

here=$(cd "$(dirname "$0")" && pwd -P)
compose="$here/../compose.yaml"
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/two-service-lab/stack}
mkdir -p "$dir/bin"
dir=$(cd "$dir" && pwd -P)
# Go's own install location, where a login shell's PATH may not reach.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "go not found (Go 1.26 or later)"

# --- The pins: compose.yaml's image tags, and what each go.mod builds. ---
image_tag() { # image_tag IMAGE: the tag compose.yaml gives IMAGE
    sed -nE "s@^[[:space:]]*image:[[:space:]]*$1:([^[:space:]]+)[[:space:]]*\$@\1@p" "$compose" | head -n1
}
module_version() { # module_version DIR MODULE: the version DIR/go.mod requires
    awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$here/$1/go.mod"
}
collector=$(image_tag otel/opentelemetry-collector-contrib)
jaeger=$(image_tag jaegertracing/jaeger)
prometheus=$(image_tag prom/prometheus)
[ -n "$collector" ] && [ -n "$jaeger" ] && [ -n "$prometheus" ] ||
    die "compose.yaml lacks a pinned image for the collector, jaeger or prometheus"

# The collector's modules carry the release's number: core v0.X.Y (stable
# core modules have their own v1 line) and contrib v0.X.Y.
want="v$collector"
for m in go.opentelemetry.io/collector/otelcol \
    github.com/open-telemetry/opentelemetry-collector-contrib/connector/spanmetricsconnector; do
    got=$(module_version otelcol "$m")
    [ "$got" = "$want" ] || die "compose.yaml pins the collector $collector, otelcol/go.mod has $m $got"
done
for m in $(awk '$1 ~ /^(go\.opentelemetry\.io\/collector|github\.com\/open-telemetry\/opentelemetry-collector-contrib)\// && $2 ~ /^v0\./ { print $1 "@" $2 }' "$here/otelcol/go.mod"); do
    [ "${m#*@}" = "$want" ] || die "otelcol/go.mod mixes collector releases: $m, not $want"
done
# Jaeger tags each release twice, v1.(63+N).M and v2.N.M on one commit, and
# only the v1 tag is a Go module version.
IFS=. read -r jmaj jmin jpatch <<<"$jaeger"
[ "$jmaj" = 2 ] || die "compose.yaml pins jaeger $jaeger, not a Jaeger v2 release"
want="v1.$((63 + jmin)).$jpatch"
got=$(module_version jaeger github.com/jaegertracing/jaeger)
[ "$got" = "$want" ] || die "compose.yaml pins jaeger $jaeger (module $want), jaeger/go.mod has $got"
# Prometheus 3.N.M is module v0.3NN.M.
IFS=. read -r pmaj pmin ppatch <<<"${prometheus#v}"
[ "$pmaj" = 3 ] || die "compose.yaml pins prometheus $prometheus, not a Prometheus 3 release"
want=$(printf 'v0.3%02d.%s' "$pmin" "$ppatch")
got=$(module_version prometheus github.com/prometheus/prometheus)
[ "$got" = "$want" ] || die "compose.yaml pins prometheus $prometheus (module $want), prometheus/go.mod has $got"

# --- Build what changed. ---
export GOFLAGS=-buildvcs=false
# What a build depends on: the module files, our sources, the go build
# arguments, the Go release.
stamp_of() { # stamp_of MODULE-DIR GO-BUILD-ARGS...
    local mod=$1
    shift
    (cd "$here" && cat "$mod"/go.mod "$mod"/go.sum "$mod"/*.go 2>/dev/null; echo "$@"; go version) |
        sha256sum | cut -d' ' -f1
}
build() { # build MODULE-DIR OUTPUT... -- GO-BUILD-ARGS...
    local mod=$1 stamp outputs=() fresh=1
    shift
    while [ "$1" != -- ]; do outputs+=("$1"); shift; done
    shift
    stamp=$(stamp_of "$mod" "$@")
    for o in "${outputs[@]}"; do [ -x "$dir/bin/$o" ] || fresh=; done
    if [ -n "$fresh" ] && [ "$(cat "$dir/$mod.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    say "building ${outputs[*]} ($mod/go.mod)"
    local start=$SECONDS
    (cd "$here/$mod" && go build -trimpath -o "$dir/bin/" "$@") || die "go build in $mod failed"
    echo "$stamp" >"$dir/$mod.stamp"
    say "built ${outputs[*]} in $((SECONDS - start)) s"
}
build otelcol otelcol-lab -- -ldflags "-X main.version=$collector" .
# remove_all_sd: Prometheus's own build tag that leaves out the
# service-discovery plugins (cloud SDKs); static and file discovery stay.
build prometheus prometheus promtool -- -tags remove_all_sd \
    -ldflags "-X github.com/prometheus/common/version.Version=${prometheus#v}" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
build jaeger jaeger -- github.com/jaegertracing/jaeger/cmd/jaeger

"$dir/bin/otelcol-lab" --version >/dev/null && "$dir/bin/jaeger" version >/dev/null 2>&1 &&
    "$dir/bin/prometheus" --version >/dev/null && "$dir/bin/promtool" --version >/dev/null ||
    die "a built program does not run"
say "ready in $dir/bin: otelcol-lab $collector, jaeger $jaeger, prometheus $prometheus"
echo "$dir/bin"
