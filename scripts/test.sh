#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need that
# a Rust machine lacks (Debian's Chromium and ChromeDriver, for the browser
# test), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the browser test needs Debian's chromium and chromium-driver; run: sudo apt-get install chromium chromium-driver" >&2
        exit 1
    fi
    echo "== installing chromium and chromium-driver"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

cargo test --workspace --locked
