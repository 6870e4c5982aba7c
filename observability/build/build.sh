#!/usr/bin/env bash
# Builds the observability stack's programs from their Go modules, at the
# releases that observability/compose.yaml pins for its images, and Docker
# Compose, which runs that file:
#
#   otelcol-lab          the OpenTelemetry Collector (core + contrib modules),
#                        with the components listed in otelcol/components.go
#   jaeger               Jaeger v2 (cmd/jaeger; its UI is a placeholder when
#                        built from the module, its HTTP API is complete)
#   prometheus, promtool Prometheus 3 (without its web UI assets and its
#                        service-discovery plugins: everything arrives by push)
#   docker-compose       Docker Compose (compose/go.mod), a Docker CLI plugin
#
#   observability/build/build.sh [--images] [DIR]
#       DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/two-service-lab/stack
#   --images: then builds the collector's, Jaeger's and Prometheus's images
#       from those binaries (otelcol/Dockerfile, jaeger/Dockerfile,
#       prometheus/Dockerfile: each one mirrors its upstream image), tagged as
#       compose.yaml pins them, with the engine `docker` reaches (DOCKER_HOST).
#
# Every program is static (CGO_ENABLED=0), as the upstream release builds
# are: the same binaries run on the host in the tests and in FROM scratch
# images.
#
# Prints the absolute path of DIR/bin on stdout and nothing else (progress on
# stderr). Each module here (otelcol/, jaeger/, prometheus/, compose/) pins
# its program and every dependency in its go.mod/go.sum; this script first
# checks that those versions are the releases compose.yaml's image tags name,
# so the images users run and the binaries the tests run cannot drift apart.
# A rerun with nothing changed only checks and prints (Go's module and build
# caches make a rebuild after a change quick too).
set -euo pipefail

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

here=$(cd "$(dirname "$0")" && pwd -P)
compose="$here/../compose.yaml"
images=
if [ "${1:-}" = --images ]; then
    images=1
    shift
fi
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
# Static binaries, as upstream builds its releases: they run in FROM scratch
# images as they run on the host.
export CGO_ENABLED=0
# What a build depends on: the module files, our sources, the go build
# arguments, the Go release.
stamp_of() { # stamp_of MODULE-DIR GO-BUILD-ARGS...
    local mod=$1
    shift
    (cd "$here" && cat "$mod"/go.mod "$mod"/go.sum "$mod"/*.go 2>/dev/null; echo "$@"; go version; echo "CGO_ENABLED=$CGO_ENABLED") |
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
    local start=$SECONDS out="$dir/bin/"
    [ "${#outputs[@]}" -gt 1 ] || out="$dir/bin/${outputs[0]}"
    (cd "$here/$mod" && go build -trimpath -o "$out" "$@") || die "go build in $mod failed"
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
# Compose: only its command, stripped (-s -w: no symbol table nor DWARF, a
# third smaller and quicker to link), its version set as its release build
# sets it.
compose_module=github.com/docker/compose/v5
compose_version=$(module_version compose "$compose_module")
[ -n "$compose_version" ] || die "compose/go.mod does not require $compose_module"
build compose docker-compose -- -ldflags "-s -w -X $compose_module/internal.Version=$compose_version" \
    "$compose_module/cmd"

"$dir/bin/otelcol-lab" --version >/dev/null && "$dir/bin/jaeger" version >/dev/null 2>&1 &&
    "$dir/bin/prometheus" --version >/dev/null && "$dir/bin/promtool" --version >/dev/null &&
    "$dir/bin/docker-compose" version >/dev/null || die "a built program does not run"
say "ready in $dir/bin: otelcol-lab $collector, jaeger $jaeger, prometheus $prometheus, docker-compose $compose_version"

# --- The images, from those binaries. ---
if [ -n "$images" ]; then
    command -v docker >/dev/null || die "--images: docker not found"
    module_dir() { # module_dir MODULE-DIR MODULE: where Go keeps MODULE's source
        (cd "$here/$1" && go list -m -f '{{.Dir}}' "$2")
    }
    for f in /etc/ssl/certs/ca-certificates.crt /etc/mime.types; do
        [ -r "$f" ] || die "--images: no $f (packages ca-certificates, media-types)"
    done
    # The build contexts: a folder of this run's own (two engines may build
    # at once), beside bin/ so that the binaries are hard links.
    contexts=$(mktemp -d "$dir/images.XXXXXX")
    trap 'rm -rf "$contexts"' EXIT
    image() { # image NAME TAG: docker build NAME/Dockerfile on the context $contexts/NAME
        local start=$SECONDS
        docker build -q -t "$2" -f "$here/$1/Dockerfile" "$contexts/$1" >/dev/null ||
            die "docker build of $2 failed"
        say "image $2 built in $((SECONDS - start)) s"
    }
    stage() { # stage NAME: an empty build context for NAME
        mkdir "$contexts/$1"
        echo "$contexts/$1"
    }
    # Each context holds what its Dockerfile copies, with the modes the image
    # has (the legacy builder and BuildKit both keep a file's mode).
    ctx=$(stage otelcol)
    ln -f "$dir/bin/otelcol-lab" "$ctx/otelcol-contrib"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    install -m 0644 "$here/otelcol/image-config.yaml" "$ctx/config.yaml"
    image otelcol "otel/opentelemetry-collector-contrib:$collector"

    ctx=$(stage jaeger)
    ln -f "$dir/bin/jaeger" "$ctx/jaeger-linux"
    cp /etc/ssl/certs/ca-certificates.crt /etc/mime.types "$ctx/"
    install -m 0644 "$(module_dir jaeger github.com/jaegertracing/jaeger)/cmd/jaeger/sampling-strategies.json" "$ctx/"
    install -d -m 1777 "$ctx/tmp-root/tmp"
    image jaeger "jaegertracing/jaeger:$jaeger"

    ctx=$(stage prometheus)
    src=$(module_dir prometheus github.com/prometheus/prometheus)
    ln -f "$dir/bin/prometheus" "$dir/bin/promtool" "$ctx/"
    install -m 0644 "$src/LICENSE" "$src/NOTICE" "$ctx/"
    install -d -m 0755 "$ctx/etc-prometheus"
    install -m 0644 "$src/documentation/examples/prometheus.yml" "$ctx/etc-prometheus/"
    # The data folder as an entry of a tree copied to /, so that it keeps
    # its mode (a folder named as COPY's source is created 0755).
    install -d -m 0775 "$ctx/data-root/prometheus"
    # The base image's accounts (nobody is 65534 there too).
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$ctx/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$ctx/group"
    chmod 0644 "$ctx/passwd" "$ctx/group"
    image prometheus "prom/prometheus:$prometheus"
fi
echo "$dir/bin"
