#!/usr/bin/env bash
# Installs service-a and service-b as systemd units on this machine, or
# removes them. Idempotent: run it again to upgrade; it never overwrites a
# settings file you edited.
#
#   sudo deploy/install.sh                      build (release), install, enable, start
#   sudo deploy/install.sh --binaries DIR       install the binaries in DIR instead of building
#   sudo deploy/install.sh --socket-activation  with service-a.socket and service-b.socket
#                                               (run without it to go back: one mode is enabled)
#   sudo deploy/install.sh --no-start           install and enable, but start nothing
#   sudo deploy/install.sh --balancer A,B,C     ... and service-b calls service-a through HAProxy
#                                               balancing over the replicas A, B, C ([NAME=]HOST:PORT;
#                                               needs Debian's haproxy; see two-service-lab-balancer --help)
#   sudo deploy/install.sh --uninstall          stop, disable and remove units and binaries
#   sudo deploy/install.sh --uninstall --purge  ... and /etc/default/service-{a,b} too
#
# The build runs as the user who called sudo (or who owns the checkout),
# with that user's Rust toolchain: their login PATH, then ~/.cargo/bin
# (where rustup puts it). Nothing is built as root in their tree.
#
# What goes where:
#   /usr/local/bin/service-{a,b}                  the daemons
#   /etc/systemd/system/service-{a,b}.{service,socket}
#   /etc/default/service-{a,b}                    settings: created once, then yours;
#                                                 root:root 0640 (they may hold an API key)
#   /usr/local/sbin/two-service-lab-balancer      puts HAProxy in front of several service-a's
#   /usr/local/share/two-service-lab/haproxy/     ... with these files (docs/SEVERAL-HOSTS.md)
set -Eeuo pipefail # -E: the ERR trap below reports failures in functions too

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
daemons=(service-a service-b)
bin_dir=/usr/local/bin
balancer_cmd=/usr/local/sbin/two-service-lab-balancer
balancer_files=/usr/local/share/two-service-lab/haproxy
unit_dir=/etc/systemd/system
default_dir=/etc/default
fault_dir=/etc/service-a

binaries=""
socket_activation=no
start=yes
mode=install
purge=no
balancer=()

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# Whatever else fails says what it was.
trap 'say "failed (exit $?): $BASH_COMMAND"' ERR

while [ $# -gt 0 ]; do
    case "$1" in
        --binaries) binaries=${2:?--binaries needs a directory}; shift ;;
        --socket-activation) socket_activation=yes ;;
        --no-start) start=no ;;
        --balancer)
            IFS=, read -r -a balancer <<<"${2:?--balancer needs the replicas: HOST:PORT,HOST:PORT,...}"
            shift ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=yes ;;
        -h|--help) sed -n '2,/^set -/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [ "${#balancer[@]}" -gt 0 ] && { [ "$start" = no ] || [ "$mode" != install ]; }; then
    die "--balancer starts HAProxy and service-b: not with --no-start or --uninstall"
fi
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
command -v systemctl >/dev/null || die "systemctl not found: this needs systemd"

units_of() { # the unit files of one daemon that this script manages
    echo "$1.service" "$1.socket"
}

uninstall() {
    local units=()
    # The balancer first: its drop-in names service-b.service.
    if [ -x "$balancer_cmd" ] && [ -f /etc/systemd/system/service-b.service.d/balancer.conf ]; then
        "$balancer_cmd" --remove
    fi
    rm -f "$balancer_cmd"
    rm -rf "$balancer_files"
    rmdir --ignore-fail-on-non-empty "$(dirname "$balancer_files")" 2>/dev/null || true
    for d in "${daemons[@]}"; do
        for u in $(units_of "$d"); do units+=("$u"); done
    done
    say "stopping and disabling ${units[*]}"
    local loaded=()
    for u in "${units[@]}"; do
        [ "$(systemctl show -p LoadState --value "$u")" = loaded ] && loaded+=("$u")
    done
    if [ "${#loaded[@]}" -gt 0 ]; then
        systemctl disable --quiet --now "${loaded[@]}" || die "systemctl disable --now ${loaded[*]} failed"
    fi
    for d in "${daemons[@]}"; do
        for u in $(units_of "$d"); do rm -f "$unit_dir/$u"; done
        rm -f "$bin_dir/$d"
        if [ "$purge" = yes ]; then
            rm -f "$default_dir/$d"
            [ "$d" = service-a ] && rm -rf "$fault_dir"
        elif [ -f "$default_dir/$d" ]; then
            say "kept $default_dir/$d (remove it with --uninstall --purge)"
        fi
    done
    systemctl daemon-reload
    systemctl reset-failed "${units[@]}" 2>/dev/null || true
    say "uninstalled"
}

# Runs "$1 --check-config" with the environment the unit $2 gives it: its
# EnvironmentFile= and Environment= settings (drop-ins included), read by
# systemd itself, so the check sees exactly what the daemon will see.
check_config() {
    local bin=$1 unit=$2 props=() file
    while IFS= read -r file; do
        [ -n "$file" ] || continue
        case "$file" in
            *' (ignore_errors=yes)') props+=(-p "EnvironmentFile=-${file% (ignore_errors=yes)}") ;;
            *) props+=(-p "EnvironmentFile=${file% (ignore_errors=no)}") ;;
        esac
    done < <(systemctl show -p EnvironmentFiles --value "$unit")
    local env
    env=$(systemctl show -p Environment --value "$unit")
    [ -z "$env" ] || props+=(-p "Environment=$env")
    systemd-run --quiet --wait --pipe --collect --service-type=exec -p DynamicUser=yes \
        "${props[@]}" "$bin" --check-config >/dev/null </dev/null
}

# The owner of a settings file is root, and only root and its group read it
# (it may hold OTEL_EXPORTER_OTLP_HEADERS with an API key). Modes are only
# ever tightened; the content is never touched.
secure_settings() {
    local f=$1 before
    before=$(stat -c '%U:%G %a' "$f")
    chown 0:0 "$f"
    chmod u-x,g-wx,o-rwx "$f"
    [ "$before" = "$(stat -c '%U:%G %a' "$f")" ] ||
        say "$f was $before, now $(stat -c '%U:%G %a' "$f")"
}

# Builds the release binaries as $1 with $1's own toolchain, into the
# checkout's target/; prints nothing but what cargo says.
build_as() {
    local user=$1 home
    home=$(getent passwd "$user" | cut -d: -f6)
    [ -n "$home" ] || die "cannot build: no home directory for user $user"
    # A login shell reads the user's profile (rustup's ~/.cargo/env among
    # others); ~/.cargo/bin is added in case the profile does not.
    # shellcheck disable=SC2016 # expanded by the user's shell
    local probe='PATH="$PATH:$HOME/.cargo/bin"; command -v cargo'
    local cargo
    if ! cargo=$(runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
        PATH=/usr/local/bin:/usr/bin:/bin bash -lc "$probe" </dev/null 2>/dev/null); then
        die "no Rust toolchain for $user: cargo is neither on $user's login PATH nor in $home/.cargo/bin.
  Install one as $user (not with sudo): see https://rustup.rs, then run this again.
  Or install the binaries built elsewhere: sudo $0 --binaries DIR (or the .deb; see docs/OPERATIONS.md)."
    fi
    cargo=${cargo##*$'\n'} # the last line: a profile may print too
    say "building release binaries as $user with $cargo"
    # shellcheck disable=SC2016 # expanded by the user's shell
    runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
        PATH=/usr/local/bin:/usr/bin:/bin bash -lc 'PATH="$PATH:$HOME/.cargo/bin"; cd "$1" &&
            exec cargo build --release --locked --bins --target-dir "$1/target"' _ "$repo" </dev/null ||
        die "cargo build failed (as $user, in $repo); the lines above say why"
}

# Copies $1 to $2 with mode $3 unless identical; returns 0 if it changed.
place() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 1
    fi
    install -D -m "$3" "$1" "$2.new"
    mv -f "$2.new" "$2"
    say "installed $2"
}

install_all() {
    # The .deb installs the same units; two copies of them would shadow each other.
    if dpkg-query -W -f '${db:Status-Status}' two-service-lab 2>/dev/null | grep -qx installed; then
        die "the two-service-lab package is installed: use it (upgrade with a newer .deb), or remove it first (sudo apt remove two-service-lab)"
    fi
    if [ -z "$binaries" ]; then
        # The user who called sudo; else whoever owns the checkout (root only
        # in root's own tree).
        local builder=${SUDO_USER:-}
        [ -n "$builder" ] && [ "$builder" != root ] || builder=$(stat -c %U "$repo")
        build_as "$builder"
        binaries="$repo/target/release"
    fi
    for d in "${daemons[@]}"; do
        [ -x "$binaries/$d" ] || die "$binaries/$d: no such executable"
    done

    changed=()
    for d in "${daemons[@]}"; do
        local touched=no
        place "$binaries/$d" "$bin_dir/$d" 0755 && touched=yes
        for u in $(units_of "$d"); do
            place "$here/$u" "$unit_dir/$u" 0644 && touched=yes
        done
        if [ -f "$default_dir/$d" ]; then
            cmp -s "$here/default-$d" "$default_dir/$d" ||
                say "kept your $default_dir/$d (the shipped one is $here/default-$d)"
        else
            place "$here/default-$d" "$default_dir/$d" 0640 || true
        fi
        secure_settings "$default_dir/$d"
        [ "$touched" = yes ] && changed+=("$d")
    done
    # Where the shipped settings put service-a's fault file
    # (SERVICE_A_FAULT_FILE=/etc/service-a/fault): root's, readable by the
    # unit. The file itself is the admin's to write.
    if [ ! -d "$fault_dir" ]; then
        install -d -m 0755 "$fault_dir" && say "created $fault_dir (service-a's fault file goes there)"
    fi
    # The balancer's command and files: installed always (small), used when asked.
    place "$here/balancer.sh" "$balancer_cmd" 0755 || true
    local f
    for f in service-a-balancer.cfg haproxy.service.conf service-b.service.conf; do
        place "$here/haproxy/$f" "$balancer_files/$f" 0644 || true
    done
    systemctl daemon-reload

    # Check the settings now, with the installed binary and the environment
    # systemd will give it, so a bad file is reported here and not as a unit
    # that fails to start (or a running one that fails to restart).
    for d in "${daemons[@]}"; do
        check_config "$bin_dir/$d" "$d.service" ||
            die "$default_dir/$d has a bad setting (see the line above); fix it and run again"
    done

    # Exactly one mode is enabled: the sockets are enabled with
    # --socket-activation and disabled without it.
    local enable=(service-a.service service-b.service) sockets=(service-a.socket service-b.socket)
    if [ "$socket_activation" = yes ]; then
        enable+=("${sockets[@]}")
    else
        local was_socket=()
        for u in "${sockets[@]}"; do
            if systemctl is-enabled --quiet "$u" || systemctl is-active --quiet "$u"; then
                was_socket+=("$u")
            fi
        done
        if [ "${#was_socket[@]}" -gt 0 ]; then
            systemctl disable --quiet --now "${was_socket[@]}" ||
                die "systemctl disable --now ${was_socket[*]} failed"
            say "disabled and stopped ${was_socket[*]} (no --socket-activation)"
            # A daemon still serving the socket systemd passed it binds its own now.
            for u in "${was_socket[@]}"; do changed+=("${u%.socket}"); done
        fi
    fi
    systemctl enable --quiet "${enable[@]}" || die "systemctl enable ${enable[*]} failed"
    say "enabled ${enable[*]}"
    [ "$start" = yes ] || { say "not started (--no-start)"; return; }

    if [ "$socket_activation" = yes ]; then
        # The socket must exist before the service that inherits it starts.
        for d in "${daemons[@]}"; do
            if systemctl is-active --quiet "$d.service" && ! systemctl is-active --quiet "$d.socket"; then
                systemctl stop "$d.service"
            fi
        done
        systemctl start service-a.socket service-b.socket ||
            die "systemctl start service-a.socket service-b.socket failed (is the port in use? systemctl status service-a.socket service-b.socket)"
    fi
    # An upgrade restarts what changed; anything else is started if it is not running.
    local d
    for d in $(printf '%s\n' "${changed[@]}" | sort -u); do
        if systemctl is-active --quiet "$d.service"; then
            say "restarting $d (new binary or unit, or another mode)"
            systemctl restart "$d.service" ||
                die "systemctl restart $d failed; see: journalctl -u $d -n 20"
        fi
    done
    systemctl start service-a.service service-b.service ||
        die "systemctl start service-a service-b failed; see: systemctl status service-a service-b; journalctl -u service-a -u service-b -n 20"
    say "running: $(systemctl is-active service-a.service) / $(systemctl is-active service-b.service)"
    if [ "${#balancer[@]}" -gt 0 ]; then
        "$balancer_cmd" "${balancer[@]}" || die "$balancer_cmd ${balancer[*]} failed (the lines above say why)"
    fi
    say "try: curl 'http://127.0.0.1:8081/call-echo?msg=hello'"
}

case "$mode" in
    install) install_all ;;
    uninstall) uninstall ;;
esac
