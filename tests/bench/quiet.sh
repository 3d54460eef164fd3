#!/usr/bin/env bash
# What the agent costs the API server, in one run against the Kubernetes API test server:
# requests and time of a drift check of 1,000 unchanged objects in 3 kinds and after 10 of
# them were edited (the listing check, and comparing every object as before), and the time
# to apply the same objects with the agent's applier, with `kubectl apply --server-side`,
# and as a raw load of the same PATCHes, 32 at a time (the server's capacity).
# Then tests/bench/agent.sh: apply time vs kubectl, peak RSS applying a bundle at the
# format's caps and the running agent's idle RSS after it: every figure of the quiet agent
# in one run.
# Usage: tests/bench/quiet.sh [OBJECTS]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
for run in 1 2 3; do
  echo "== run $run"
  target/release/skiff-bench-drift "${1:-1000}"
done
tests/bench/agent.sh
