#!/usr/bin/env bash
# The docs' walkthroughs that need systemd, run as written
# (testkit/docs-test.py): boots this machine's whole system under a writable
# in-memory overlay (its users, sudo, toolchain and this checkout at its own
# path; nothing persists), as a VM a user logs into, and runs the blocks of
# the phase there, in a root shell, with sudo and systemctl as shown. Needs
# root; cleans up after itself, pass or fail.
#
#   deploy/tests/docs.sh vm
#       The README's install and "break service-a" sections and the
#       operations guide. A network of its own (its own 127.0.0.1): nothing
#       else may need to be free. The docs' `sudo deploy/install.sh` builds
#       as the checkout's owner: with target/release up to date (./run.sh
#       built it), cargo has nothing to do.
#   deploy/tests/docs.sh stack [--binaries DIR]
#       The walkthroughs in Jaeger: the units installed from DIR
#       (target/debug by default) as the README's install section leaves
#       them, then the blocks, against the observability stack that runs on
#       this machine's 127.0.0.1 (test.sh runs this under
#       observability/with-engine.sh, after service-b/tests/stack.rs, on its
#       stack). The host's network: 8080 and 8081 must be free.
#
# DOCS_TEST_ARGS: more options for testkit/docs-test.py (--show, --only FILE).
set -euo pipefail
. "$(dirname "$0")/harness.sh"

phase=${1:-}
shift || true
dir_options "vm | stack [--binaries DIR]" binaries -- "$@"
harness_start docs.sh sudo=sudo python3=python3

case "$phase" in
    vm)
        say "the docs on a machine with systemd (testkit/docs-test.py --phase vm)"
        boot vm --host-overlay --private-network
        ;;
    stack)
        say "the docs with the observability stack (testkit/docs-test.py --phase stack)"
        [ -n "$binaries" ] || binaries=$repo/target/debug
        resolve_binaries "$binaries"
        require_free_ports 8080 8081
        for port in 4318 16686; do
            timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null ||
                { echo "docs.sh: nothing listens on 127.0.0.1:$port: is the stack up?" >&2; exit 1; }
        done
        boot stack --host-overlay
        # Where the README's sections before it leave the machine: the units
        # installed (install.sh makes /etc/service-a for the fault file).
        ct "$repo/deploy/install.sh" --binaries "$binaries" >"$work/install.log" 2>&1 ||
            { cat "$work/install.log"; echo "docs.sh: install.sh failed" >&2; exit 1; }
        ;;
    *)
        echo "usage: $0 vm | stack [--binaries DIR]" >&2
        exit 2
        ;;
esac
python3 "$repo/testkit/docs-test.py" --phase "$phase" --nsenter "$init_pid" ${DOCS_TEST_ARGS:-} ||
    fail "the docs' $phase walkthroughs (the lines above say which block)"
harness_finish
