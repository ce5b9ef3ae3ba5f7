#!/usr/bin/env bash
# The main job on a fresh machine: build the hub and the simulator, start the
# hub on ./telemetry.db, and stream a simulated fleet into it until Ctrl-C.
#
#   DEVICES=100 RATE=5 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

devices=${DEVICES:-20}
rate=${RATE:-5}
listen=${HUB_LISTEN:-127.0.0.1:8080}
key=${HUB_PROVISION_KEY:-demo-fleet-key}
export HUB_DB=${HUB_DB:-./telemetry.db}

cargo build --release --locked --bin hub --bin device-sim

./target/release/hub serve --listen "$listen" --provision-key "$key" &
hub=$!
trap 'kill -TERM "$hub" 2>/dev/null; wait "$hub" 2>/dev/null || true' EXIT

echo "live monitor: http://$listen/   (Ctrl-C stops the devices, then the hub)"
# The simulator retries with backoff until the hub is up, so no wait here.
./target/release/device-sim \
    --hub "ws://$listen" \
    --provision-key "$key" \
    --devices "$devices" \
    --rate "$rate" \
    --metrics temperature,humidity,pressure,vibration,battery
