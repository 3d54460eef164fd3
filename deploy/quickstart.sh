#!/usr/bin/env bash
# skiff quickstart: a working local fleet from this repository alone.
#
# Builds skiff, makes a Git repository out of deploy/examples/, generates a signing key and
# an admin token, starts a hub on loopback following that repository, registers one
# cluster, and starts its agent: with the `dir` target (files under WORKDIR/cluster), or
# the `kube` target when KUBECONFIG names a cluster. Then it tells you what to try.
# Ctrl-C stops everything.
#
# Usage: deploy/quickstart.sh [WORKDIR]     (default: a new temporary folder)
#        KUBECONFIG=~/.kube/config deploy/quickstart.sh   (apply to a real cluster)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t skiff-quickstart.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo
  echo "stopped; everything is still in $work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ -n "${SKIFF_BIN_DIR:-}" ]; then
  # Binaries already built (the tests use their debug build).
  hub="$SKIFF_BIN_DIR/skiff-hub"
  agent="$SKIFF_BIN_DIR/skiff-agent"
else
  say "Building skiff-hub and skiff-agent (release)"
  cargo build --release --locked --manifest-path "$root/Cargo.toml" -p skiff-hub -p skiff-agent
  hub="$root/target/release/skiff-hub"
  agent="$root/target/release/skiff-agent"
fi

say "Making a fleet repository from deploy/examples in $work/fleet"
if [ ! -d "$work/fleet/.git" ]; then
  git init --quiet --initial-branch=main "$work/fleet"
  cp -R "$root/deploy/examples/apps" "$work/fleet/"
  git -C "$work/fleet" add --all
  git -C "$work/fleet" -c user.name=skiff -c user.email=skiff@localhost commit --quiet -m "example fleet"
fi
git -C "$work/fleet" log --oneline -1

say "Keys and tokens"
[ -f "$work/keys/signing.pem" ] || "$hub" keygen --out "$work/keys" >/dev/null
umask 077 # keys and tokens are for this user only
[ -f "$work/admin.token" ] || head -c 24 /dev/urandom | base64 | tr -d '\n' > "$work/admin.token"
echo "signing key $work/keys/signing.pem, admin token $work/admin.token"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/hub.yaml" <<EOF
listen: 127.0.0.1:$port
data_dir: $work/hub-data
signing_key: $work/keys/signing.pem
admin_token_file: $work/admin.token
repos:
  - {name: fleet, url: "$work/fleet", poll: 2s}
channels:
  - {name: demo, repo: fleet, branch: main, path: apps, namespace: demo, targets: {labels: {env: dev}}}
EOF

say "Starting the hub on http://127.0.0.1:$port (log: $work/hub.log)"
SKIFF_LOG=info "$hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
export SKIFF_HUB_URL="http://127.0.0.1:$port" SKIFF_HUB_ADMIN_TOKEN_FILE="$work/admin.token"

say "Registering cluster 'laptop' (label env=dev)"
if [ ! -f "$work/laptop.token" ]; then
  "$hub" cluster add laptop --label env=dev > "$work/laptop.token"
fi

if [ -n "${KUBECONFIG:-}" ]; then
  target="kube"
  extra="kubeconfig: ${KUBECONFIG%%:*}"
  where="the cluster in $KUBECONFIG (namespace demo)"
  drift_try="kubectl -n demo scale deployment web --replicas=5     # or: kubectl -n demo delete configmap web-config"
  left_behind="the demo objects stay in the cluster (delete them with: kubectl delete namespace demo)"
else
  target="dir:$work/cluster"
  extra=""
  where="$work/cluster/demo/"
  drift_try="echo '{}' > $work/cluster/demo/demo/configmap.web-config.yaml"
  left_behind="the files under $work/cluster stay"
fi
cat > "$work/agent.yaml" <<EOF
hub: http://127.0.0.1:$port
cluster: laptop
token_file: $work/laptop.token
trusted_keys: [$work/keys/signing.pub.pem]
data_dir: $work/agent-data
target: $target
long_poll_wait: 30s
drift_interval: 5s
$extra
EOF

say "Starting the agent (target $target; log: $work/agent.log)"
rm -f "$work/agent-data/status.json"
SKIFF_LOG=info "$agent" run --config "$work/agent.yaml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 300); do
  grep -q '"ok": true' "$work/agent-data/status.json" 2>/dev/null && break
  sleep 0.1
done
"$agent" status --data-dir "$work/agent-data" || true
echo
"$hub" status

cat <<EOT

skiff is running: the hub follows $work/fleet (branch main, folder apps), signs each new
commit, and the agent applies it to $where.

Dashboard: http://127.0.0.1:$port/ui (sign in with the admin token in $work/admin.token)

Things to try (in another terminal):
  - Drift: edit or delete an applied object, e.g.
      $drift_try
    within a few seconds the agent notices and puts it back (see $work/agent.log).
  - Roll out: change the fleet and commit, e.g.
      sed -i 's/replicas: 2/replicas: 3/' $work/fleet/apps/web/deployment.yaml
      git -C $work/fleet commit -qam "3 replicas"
    the hub builds generation 2 within its 2s poll; the agent applies it.
  - Status: SKIFF_HUB_URL=$SKIFF_HUB_URL SKIFF_HUB_ADMIN_TOKEN_FILE=$work/admin.token $hub status
            $agent status --data-dir $work/agent-data

Ctrl-C stops the hub and the agent. Left behind in $work (for the next run, which reuses
it): keys, tokens, the fleet repository, the hub's and agent's stores; $left_behind.
EOT
wait
