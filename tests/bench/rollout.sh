#!/usr/bin/env bash
# Rollout figures: one release hub on loopback following a small Git repo, a channel with a
# four-step plan (1%, 10%, 50%, the rest; no soak, so step changes are measured bare), and
# skiff-fleet-sim playing N agents that report each generation they are given as applied
# and Healthy (2% never online, 0.5% failing). Three commits roll out one after another.
# Prints hub CPU and RSS (before and while they run), and the time from the last report of a
# step to the next step's first cluster receiving its new assignment.
# Usage: tests/bench/rollout.sh [CLUSTERS]   (default: 10000)
set -euo pipefail
clusters=${1:-10000}
source "$(dirname "$0")/hub-setup.sh"
cat > "$work/plan.yaml" <<EOT
steps:
  - {name: canary, share: "1%", max_failures: "5%", max_offline: "10%"}
  - {name: early, share: "10%", max_failures: "5%", max_offline: "10%"}
  - {name: half, share: "50%", max_failures: "5%", max_offline: "10%"}
  - {name: rest, max_failures: "5%", max_offline: "10%"}
EOT
start_hub "  - name: demo
    repo: fleet
    branch: main
    path: apps
    targets: {labels: {fleet: sim}}
    rollout:
$(sed 's/^/      /' "$work/plan.yaml")"

echo "== rollouts across $clusters clusters"
"$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --hub-pid "$hub_pid" \
  --clusters "$clusters" --mode rollout --repo "$work/fleet" --plan "$work/plan.yaml" \
  --rollouts 3 --duration 600 --wait 60
