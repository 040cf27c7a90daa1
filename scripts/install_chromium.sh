#!/bin/sh
# Install Debian's Chromium for the browser test (tests/test_browser.py).
# Playwright cannot download its own browsers here, so the test drives /usr/bin/chromium.
#
#  - /usr/bin/chromium present: nothing to do (idempotent, no network).
#  - apt-get available: install it non-interactively (needs root, or sudo without a password).
#  - no apt-get: say so and exit 0; the browser test then skips with the same message
#    (and fails instead of skipping when CI is set).
set -eu

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: apt-get not found; cannot install Chromium." >&2
    echo "  The browser test (tests/test_browser.py) will be skipped (it fails when CI is set)." >&2
    echo "  Install Chromium yourself and set CHROMIUM=/path/to/chromium to run it." >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_chromium.sh: Chromium is missing and installing it needs root (or passwordless sudo):" >&2
        echo "  sudo apt-get install -y --no-install-recommends chromium" >&2
        exit 1
    fi
fi

echo "install_chromium.sh: installing chromium with apt-get (one-time)..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium.sh: apt-get finished but $CHROMIUM is missing." >&2
    exit 1
fi
echo "install_chromium.sh: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed."
