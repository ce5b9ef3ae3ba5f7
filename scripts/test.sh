#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need that
# a Rust machine may lack (Debian's Chromium and ChromeDriver for the browser
# test, Mosquitto for the benchmark harness's side-by-side run), then runs a
# tiny pass of every benchmark scenario and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the tests need Debian's ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A tiny run of every benchmark scenario against the real hub and a
# Mosquitto of its own: checks that the harness works; it measures nothing.
cargo build --quiet --locked -p bench --bins
./target/debug/bench all --quick >/dev/null
echo "benchmark harness: every scenario ran"

cargo test --workspace --locked
