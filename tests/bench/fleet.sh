#!/usr/bin/env bash
# Fleet load figures: one release hub on loopback following a small Git repo, and
# skiff-fleet-sim playing 1,000 and 10,000 agents (unchanged ETag polls; held long-polls,
# with one commit landing mid-run). Prints requests/s, latency, hub RSS and CPU.
# Usage: tests/bench/fleet.sh [CLUSTERS...]   (default: 1000 10000)
set -euo pipefail
counts=("${@:-1000 10000}")
source "$(dirname "$0")/hub-setup.sh"
start_hub "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {labels: {fleet: sim}}}"

sim() { "$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --hub-pid "$hub_pid" --tokens "$work/tokens.json" "$@"; }
commit_later() {
  sleep "$1"
  echo "# change $RANDOM" >> "$work/fleet/apps/web/configmap.yaml"
  git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qam change
  curl -sf -X POST -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/admin/channels/demo/refresh" >/dev/null
}

for n in "${counts[@]}"; do
  for count in $n; do
    echo "== $count clusters"
    sim --clusters "$count" --mode etag --duration 15 --workers 128
    commit_later 12 &
    committer=$!
    sim --clusters "$count" --mode longpoll --duration 25 --wait 60
    wait "$committer"
  done
done
