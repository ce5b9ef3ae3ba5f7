#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need that
# a Rust machine may lack (Debian's Chromium and ChromeDriver for the browser
# tests, NSS's certutil to make Chromium trust the test CA, Mosquitto for the benchmark harness's side-by-side run, nginx for the
# reverse-proxy and load-balancer tests, nats-server for the cluster tests,
# Prometheus Alertmanager for alert delivery (each starts its own), OpenSSL's
# command for the self-signed certificate a new user makes, the sqlite3
# command that people query the database with, schemathesis
# from PyPI for the OpenAPI test), then runs a tiny pass of every benchmark
# scenario and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/bin/certutil ] || missing+=(libnss3-tools)
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/sbin/nats-server ] || missing+=(nats-server)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
[ -x /usr/bin/openssl ] || missing+=(openssl)
[ -x /usr/bin/script ] || missing+=(bsdutils)
[ -x /usr/bin/sqlite3 ] || missing+=(sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the tests need Debian's ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# schemathesis, pinned with everything it pulls in, in a virtual environment
# of its own (named after the pins, so a change of pins makes a new one).
requirements=tests/schemathesis/requirements.txt
venv="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-hub/schemathesis-$(sha256sum "$requirements" | cut -c1-12)"
if ! [ -x "$venv/bin/st" ]; then
    echo "== installing schemathesis into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
fi
export SCHEMATHESIS="$venv/bin/st"

# A tiny run of every benchmark scenario against the real hub and a
# Mosquitto of its own: checks that the harness works; it measures nothing.
cargo build --quiet --locked -p bench --bins
./target/debug/bench all --quick >/dev/null
./target/debug/bench ingest --quick --tls >/dev/null
./target/debug/bench ingest --quick --alert-rules 10 >/dev/null
./target/debug/bench fanout --quick --tls >/dev/null
echo "benchmark harness: every scenario ran, and ingest and fan-out over TLS"

cargo test --workspace --locked
