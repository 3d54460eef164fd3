#!/usr/bin/env bash
# Dashboard page speed: one release hub on loopback with N clusters (default 10,000,
# registered and polling through skiff-fleet-sim), then skiff-bench-dashboard times the fleet
# page as the hub serves it and as headless Chromium shows it.
# Needs chromium and chromedriver (Debian: chromium, chromium-driver).
# Usage: tests/bench/dashboard.sh [CLUSTERS]
set -euo pipefail
clusters=${1:-10000}
source "$(dirname "$0")/hub-setup.sh"
start_hub "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {labels: {fleet: sim}}}"
echo "== dashboard with $clusters clusters"
"$bin/skiff-fleet-sim" --hub "http://127.0.0.1:$port" --admin-token "$token" --clusters "$clusters" \
  --mode etag --duration 3 --workers 32 >/dev/null
"$bin/skiff-bench-dashboard" --hub "http://127.0.0.1:$port" --token "$token" --runs 20
