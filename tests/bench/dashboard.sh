#!/usr/bin/env bash
# Dashboard page speed: one release hub on loopback with N clusters (default 10,000,
# registered and polling through skiff-fleet-sim), then skiff-bench-dashboard times the fleet
# page as the hub serves it and as headless Chromium shows it.
# Needs chromium and chromedriver (Debian: chromium, chromium-driver).
# Usage: tests/bench/dashboard.sh [CLUSTERS]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-dashboard-bench.XXXXXX)
trap 'kill "$hub_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
clusters=${1:-10000}

git init -q -b main "$work/fleet"
cp -R deploy/examples/apps "$work/fleet/"
git -C "$work/fleet" add -A
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm init
"$bin/skiff-hub" keygen --out "$work/keys" >/dev/null 2>&1
token=bench-admin-token-0123456789abcdef
echo "$token" > "$work/admin.token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/hub.yaml" <<EOT
listen: 127.0.0.1:$port
data_dir: $work/data
signing_key: $work/keys/signing.pem
admin_token_file: $work/admin.token
repos:
  - {name: fleet, url: "$work/fleet", poll: 1h}
channels:
  - {name: demo, repo: fleet, branch: main, path: apps, targets: {labels: {fleet: sim}}}
limits: {max_connections_per_address: 0}
EOT
SKIFF_LOG=warn "$bin/skiff-hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
hub_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
ulimit -n 65535 2>/dev/null || true
echo "== dashboard with $clusters clusters"
"$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --clusters "$clusters" \
  --mode etag --duration 3 --workers 32 >/dev/null
"$bin/skiff-bench-dashboard" --hub "http://127.0.0.1:$port" --token "$token" --runs 20
