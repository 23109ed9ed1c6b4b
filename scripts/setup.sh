#!/usr/bin/env bash
# Install what the suite needs on a fresh Debian 12 machine: uv, RabbitMQ and Redis (the
# suite starts private servers of its own, so the packaged services are left stopped),
# bubblewrap, chromium (the console's browser test) and the locked Python environment. Safe to run again. Run it as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=yes; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Install packages without letting them start system services: with no init system they would
# linger, and the suite wants nothing on the default ports. policy-rc.d exit code 101 means
# "action forbidden" to invoke-rc.d.
apt_install_no_services() {
    local created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    local status=0
    apt_install "$@" || status=$?
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    return "$status"
}

# --- uv ----------------------------------------------------------------------------------
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
else
    say "installing uv with pip"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        say "python3 has no pip: installing python3-pip"
        apt_install python3-pip
    fi
    # Debian's own python3 is "externally managed"; uv is a standalone tool, so allow it.
    python3 -m pip install --quiet --root-user-action=ignore uv 2>/dev/null \
        || python3 -m pip install --quiet --root-user-action=ignore --break-system-packages uv
    # A pyenv shim or ~/.local/bin may not be on PATH yet; the module always works.
    if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python3 -m uv); fi
fi
say "uv: $("${UV[@]}" --version)"

# --- RabbitMQ and Redis ------------------------------------------------------------------
have_servers() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v redis-server >/dev/null 2>&1
}

if have_servers; then
    say "rabbitmq-server and redis-server already installed"
else
    say "installing rabbitmq-server and redis-server with apt-get"
    apt_install_no_services rabbitmq-server redis-server
    have_servers || { say "error: the packages installed but the servers are missing"; exit 1; }

    # Belt and braces, in case a service started anyway (e.g. under systemd).
    say "making sure the packaged services are stopped"
    invoke-rc.d rabbitmq-server stop >/dev/null 2>&1 || true
    invoke-rc.d redis-server stop >/dev/null 2>&1 || true
    # A system node leaves epmd running on the default port 4369; private nodes use their own.
    env -u ERL_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
fi
say "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')," \
    "redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"

# --- bubblewrap (session sandboxes) -------------------------------------------------------
# Sandboxed tools run under Debian's bwrap.
if command -v bwrap >/dev/null 2>&1; then
    say "bubblewrap already installed"
else
    say "installing bubblewrap with apt-get"
    apt_install_no_services bubblewrap
    command -v bwrap >/dev/null 2>&1 || { say "error: bubblewrap installed but bwrap is missing"; exit 1; }
fi
say "bubblewrap $(bwrap --version | sed 's/^bubblewrap //')"

# --- Chromium, Xvfb, xdotool, a window manager (browser and gui sandboxes) ------------------
# Browser sandboxes drive Debian's chromium through Playwright's Python API pointed at
# /usr/bin/chromium: Playwright's own browser download (`playwright install`) is never used.
# Gui sandboxes run a virtual display (Xvfb), a minimal window manager and xdotool for input;
# the gui test opens a Tk window (python3-tk gives Debian's Python its tkinter).
desktop_packages=(chromium xvfb xdotool matchbox-window-manager x11-utils fonts-dejavu-core
    python3-tk)
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=()
for package in "${desktop_packages[@]}"; do installed "$package" || missing+=("$package"); done
if [ "${#missing[@]}" -eq 0 ]; then
    say "chromium, Xvfb, xdotool and matchbox-window-manager already installed"
else
    say "installing ${missing[*]} with apt-get"
    apt_install_no_services "${missing[@]}"
    command -v chromium >/dev/null 2>&1 || { say "error: chromium installed but missing"; exit 1; }
fi
say "$(chromium --version 2>/dev/null | head -1), Xvfb $(dpkg-query -W -f='${Version}' xvfb)"

# --- Python environment ------------------------------------------------------------------
say "syncing the Python environment (uv sync --frozen --all-groups)"
"${UV[@]}" sync --frozen --all-groups --quiet
say "done"
