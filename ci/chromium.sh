#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium, idempotently.
# The browser tests (tests/web) drive it through Playwright's Python package by
# executable_path: no browser is ever downloaded at test time (no `playwright install`).
#   - /usr/bin/chromium present -> exit 0
#   - else, as root             -> apt-get install Debian's chromium
#   - else (not root)           -> say how to install it, exit 1
set -euo pipefail

BIN=/usr/bin/chromium

if [ -x "$BIN" ]; then
    echo "chromium.sh: $("$BIN" --version 2>/dev/null || echo chromium) at $BIN"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium.sh: $BIN missing, and installing it needs root;" >&2
    echo "chromium.sh: run 'sudo apt-get install chromium' (or 'sudo bash ci/chromium.sh')." >&2
    exit 1
fi

echo "chromium.sh: installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi

if [ ! -x "$BIN" ]; then
    echo "chromium.sh: $BIN still missing after installing chromium" >&2
    exit 1
fi
echo "chromium.sh: $("$BIN" --version 2>/dev/null || echo chromium) installed at $BIN"
