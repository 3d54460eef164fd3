#!/usr/bin/env bash
# Fleet load figures: one release hub on loopback following a small Git repo, and
# skiff-fleet-sim playing 1,000 and 10,000 agents (unchanged ETag polls; held long-polls,
# with one commit landing mid-run). Prints requests/s, latency, hub RSS and CPU.
# Usage: tests/bench/fleet.sh [CLUSTERS...]   (default: 1000 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-fleet-bench.XXXXXX)
trap 'kill "$hub_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

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
# Every simulated agent comes from 127.0.0.1: no per-address cap here.
limits: {max_connections_per_address: 0}
EOT
SKIFF_LOG=warn "$bin/skiff-hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
hub_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
ulimit -n 65535 2>/dev/null || true

sim() { "$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --hub-pid "$hub_pid" --tokens "$work/tokens.json" "$@"; }
commit_later() {
  sleep "$1"
  echo "# change $RANDOM" >> "$work/fleet/apps/web/configmap.yaml"
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qam change
  curl -sf -X POST -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/admin/channels/demo/refresh" >/dev/null
}

for n in "${@:-1000 10000}"; do
  for count in $n; do
    echo "== $count clusters"
    sim --clusters "$count" --mode etag --duration 15 --workers 128
    commit_later 12 &
    committer=$!
    sim --clusters "$count" --mode longpoll --duration 25 --wait 60
    wait "$committer"
  done
done
