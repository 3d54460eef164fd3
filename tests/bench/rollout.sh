#!/usr/bin/env bash
# Rollout figures: one release hub on loopback following a small Git repo, a channel with a
# four-step plan (1%, 10%, 50%, the rest; no soak, so step changes are measured bare), and
# skiff-fleet-sim playing N agents that report each generation they are given as applied
# and Healthy (2% never online, 0.5% failing). Three commits roll out one after another.
# Prints hub CPU and RSS while they run, and the time from the last report of a step to
# the next step's first cluster receiving its new assignment.
# Usage: tests/bench/rollout.sh [CLUSTERS]   (default: 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-rollout-bench.XXXXXX)
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
cat > "$work/plan.yaml" <<EOT
steps:
  - {name: canary, share: "1%", max_failures: "5%", max_offline: "10%"}
  - {name: early, share: "10%", max_failures: "5%", max_offline: "10%"}
  - {name: half, share: "50%", max_failures: "5%", max_offline: "10%"}
  - {name: rest, max_failures: "5%", max_offline: "10%"}
EOT
cat > "$work/hub.yaml" <<EOT
listen: 127.0.0.1:$port
data_dir: $work/data
signing_key: $work/keys/signing.pem
admin_token_file: $work/admin.token
repos:
  - {name: fleet, url: "$work/fleet", poll: 1h}
channels:
  - name: demo
    repo: fleet
    branch: main
    path: apps
    targets: {labels: {fleet: sim}}
    rollout:
$(sed 's/^/      /' "$work/plan.yaml")
# Every simulated agent comes from 127.0.0.1: no per-address cap here.
limits: {max_connections_per_address: 0}
EOT
SKIFF_LOG=warn "$bin/skiff-hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
hub_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
ulimit -n 65535 2>/dev/null || true

echo "== rollouts across $clusters clusters"
"$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --hub-pid "$hub_pid" \
  --clusters "$clusters" --mode rollout --repo "$work/fleet" --plan "$work/plan.yaml" \
  --rollouts 3 --duration 600 --wait 60
