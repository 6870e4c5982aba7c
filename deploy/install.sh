#!/usr/bin/env bash
# Installs service-a and service-b as systemd units on this machine, or
# removes them. Idempotent: run it again to upgrade; it never overwrites a
# settings file you edited.
#
#   sudo deploy/install.sh                      build (release), install, enable, start
#   sudo deploy/install.sh --binaries DIR       install the binaries in DIR instead of building
#   sudo deploy/install.sh --socket-activation  also enable service-a.socket and service-b.socket
#   sudo deploy/install.sh --no-start           install and enable, but start nothing
#   sudo deploy/install.sh --uninstall          stop, disable and remove units and binaries
#   sudo deploy/install.sh --uninstall --purge  ... and /etc/default/service-{a,b} too
#
# What goes where:
#   /usr/local/bin/service-{a,b}                  the daemons
#   /etc/systemd/system/service-{a,b}.{service,socket}
#   /etc/default/service-{a,b}                    settings (created once, then yours)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
daemons=(service-a service-b)
bin_dir=/usr/local/bin
unit_dir=/etc/systemd/system
default_dir=/etc/default

binaries=""
socket_activation=no
start=yes
mode=install
purge=no

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binaries) binaries=${2:?--binaries needs a directory}; shift ;;
        --socket-activation) socket_activation=yes ;;
        --no-start) start=no ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=yes ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
command -v systemctl >/dev/null || die "systemctl not found: this needs systemd"

units_of() { # the unit files of one daemon that this script manages
    echo "$1.service" "$1.socket"
}

uninstall() {
    local units=()
    for d in "${daemons[@]}"; do
        for u in $(units_of "$d"); do units+=("$u"); done
    done
    say "stopping and disabling ${units[*]}"
    systemctl disable --now "${units[@]}" 2>/dev/null || true
    for d in "${daemons[@]}"; do
        for u in $(units_of "$d"); do rm -f "$unit_dir/$u"; done
        rm -f "$bin_dir/$d"
        if [ "$purge" = yes ]; then
            rm -f "$default_dir/$d"
        elif [ -f "$default_dir/$d" ]; then
            say "kept $default_dir/$d (remove it with --uninstall --purge)"
        fi
    done
    systemctl daemon-reload
    systemctl reset-failed "${units[@]}" 2>/dev/null || true
    say "uninstalled"
}

# KEY=value lines of an EnvironmentFile, as systemd reads them (comments and
# blank lines skipped, one pair of surrounding quotes removed).
env_file_vars() {
    local line key value
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#"${line%%[![:space:]]*}"}
        case "$line" in ''|'#'*|';'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        case "$value" in
            \"*\") value=${value:1:${#value}-2} ;;
            \'*\') value=${value:1:${#value}-2} ;;
        esac
        printf '%s=%s\n' "$key" "$value"
    done < "$1"
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
    if [ -z "$binaries" ]; then
        command -v cargo >/dev/null || die "cargo not found: install Rust, or pass --binaries DIR"
        say "building release binaries"
        # Build as the user who called sudo, so target/ stays theirs.
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            sudo -u "$SUDO_USER" -H cargo build --release --locked --bins --manifest-path "$repo/Cargo.toml"
        else
            cargo build --release --locked --bins --manifest-path "$repo/Cargo.toml"
        fi
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
            place "$here/default-$d" "$default_dir/$d" 0644 || true
        fi
        [ "$touched" = yes ] && changed+=("$d")
    done
    systemctl daemon-reload

    # Check the settings now, with the installed binary and only the
    # variables systemd will pass, so a bad file is reported here and not as
    # a unit that fails to start.
    for d in "${daemons[@]}"; do
        mapfile -t vars < <(env_file_vars "$default_dir/$d")
        env -i "${vars[@]}" "$bin_dir/$d" --check-config >/dev/null ||
            die "$default_dir/$d has a bad setting (see the line above); fix it and run again"
    done

    local enable=(service-a.service service-b.service)
    if [ "$socket_activation" = yes ]; then
        enable+=(service-a.socket service-b.socket)
    fi
    systemctl enable "${enable[@]}" >/dev/null 2>&1
    say "enabled ${enable[*]}"
    [ "$start" = yes ] || { say "not started (--no-start)"; return; }

    if [ "$socket_activation" = yes ]; then
        # The socket must exist before the service that inherits it starts.
        for d in "${daemons[@]}"; do
            if systemctl is-active --quiet "$d.service" && ! systemctl is-active --quiet "$d.socket"; then
                systemctl stop "$d.service"
            fi
        done
        systemctl start service-a.socket service-b.socket
    fi
    # An upgrade restarts what changed; anything else is started if it is not running.
    for d in "${changed[@]}"; do
        if systemctl is-active --quiet "$d.service"; then
            say "restarting $d (new binary or unit)"
            systemctl restart "$d.service"
        fi
    done
    systemctl start service-a.service service-b.service
    say "running: $(systemctl is-active service-a.service) / $(systemctl is-active service-b.service)"
    say "try: curl 'http://127.0.0.1:8081/call-echo?msg=hello'"
}

case "$mode" in
    install) install_all ;;
    uninstall) uninstall ;;
esac
