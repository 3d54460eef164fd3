#!/usr/bin/env bash
# The agent's wait for a new CRD, before and after it asked discovery instead of reading the
# CRD, side by side with kubectl in one run: a 1.4 MB YAML CRD, one object of its kind, a
# ConfigMap and a Deployment in one bundle, against the Kubernetes API test server with new
# CRDs taking DELAY to be Established (as a real cluster's controllers take a moment).
#   before:  c55dc61^  the CRD read whole every 250 ms until Established
#   then:    e21fddb   the CRD read whole, pauses doubling from 100 ms to 2 s
#   now:     this tree discovery of the CRD's group/version every 100 ms (then 1 s)
#   kubectl: apply --server-side the CRD, kubectl wait --for condition=established, apply the rest
# The earlier agents are built once from their commits into target/bench-revs/.
# Usage: tests/bench/crd.sh [DELAY]   (default 1s)
set -euo pipefail
cd "$(dirname "$0")/../.."
delay=${1:-1s}
root=$PWD
cargo build --release --locked --workspace --quiet
bin=$root/target/release
work=$(mktemp -d -t skiff-crd-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; git -C "$root" worktree prune' EXIT

agent_at() { # commit -> path of that commit's skiff-agent (built once)
  local out=$root/target/bench-revs/$1
  if [ ! -x "$out/release/skiff-agent" ]; then
    git worktree add --detach -f "$work/src-$1" "$1" >/dev/null 2>&1
    (cd "$work/src-$1" && CARGO_TARGET_DIR=$out cargo build --release --locked -p skiff-agent --quiet)
    git worktree remove --force "$work/src-$1"
  fi
  echo "$out/release/skiff-agent"
}
before=$(agent_at "$(git rev-parse --short c55dc61^)")
then_=$(agent_at e21fddb)

python3 - "$work/objects" <<'PY'
import os, sys
root = sys.argv[1]; os.makedirs(root)
words = "the quick brown fox jumps over the lazy dog while the agent waits for a definition "
props = []
n = 0
body = ""
while len(body) < 1_400_000:
    props.append(f"                p{n:05}:\n                  type: string\n                  description: \"field {n}: {words * 2}\"\n")
    body += props[-1]; n += 1
with open(f"{root}/crd.yaml", "w") as f:
    f.write("""apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gizmos.bench.skiff.dev}
spec:
  group: bench.skiff.dev
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
""" + body)
with open(f"{root}/rest.yaml", "w") as f:
    f.write("""apiVersion: v1
kind: Namespace
metadata: {name: crd-bench}
---
apiVersion: bench.skiff.dev/v1
kind: Gizmo
metadata: {name: one, namespace: crd-bench}
spec: {p00001: "a", p00002: "b"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: crd-bench}
data: {mode: edge}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: crd-bench}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx:1.27}]
""")
PY
"$bin/skiff-hub" keygen --out "$work/keys" >/dev/null 2>&1
"$bin/skiff-hub" bundle build --dir "$work/objects" --channel crdbench --generation 1 --key "$work/keys/signing.pem" --out "$work/bundle" >/dev/null 2>&1
b=$(ls "$work"/bundle/*.tar.gz); e=${b%.tar.gz}.dsse.json

ms() { date +%s%3N; }
server() { # name -> a fresh test server; writes $work/$1.kubeconfig
  "$bin/skiff-kube-testserver" --listen 127.0.0.1:0 --kubeconfig "$work/$1.kubeconfig" --crd-establish-delay "$delay" >/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -f "$work/$1.kubeconfig" ] && break; sleep 0.05; done
}
served() { # name -> "requests bytes" served so far
  curl -sf "$(awk '/server:/ {print $2}' "$work/$1.kubeconfig")/debug/requests" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["requests"], d["bytes"])'
}
row() { printf "%-44s %8s ms %9s %12s\n" "$@"; }

echo "CRD $(stat -c %s "$work/objects/crd.yaml" | awk '{printf "%.2f MB", $1/1e6}') of YAML + 4 objects; new CRDs Established after $delay"
row "" "wall" "requests" "bytes served"
for who in before then now; do
  case $who in before) agent=$before ;; then) agent=$then_ ;; now) agent=$bin/skiff-agent ;; esac
  server "$who"
  cat > "$work/$who.yaml" <<EOT
cluster: bench
trusted_keys: [$work/keys/signing.pub.pem]
data_dir: $work/$who-data
target: kube
kubeconfig: $work/$who.kubeconfig
channels: {crdbench: {}}
EOT
  t0=$(ms)
  "$agent" import --config "$work/$who.yaml" "$b" "$e" >/dev/null 2>"$work/$who.log" || { echo "$who failed:"; cat "$work/$who.log"; exit 1; }
  t1=$(ms)
  read -r n bytes < <(served "$who")
  row "skiff-agent import ($who)" $((t1 - t0)) "$n" "$bytes"
done
server kubectl
k() { kubectl --kubeconfig "$work/kubectl.kubeconfig" "$@" >/dev/null; }
t0=$(ms)
k apply --server-side -f "$work/objects/crd.yaml"
k wait --for condition=established --timeout=60s crd/gizmos.bench.skiff.dev
k apply --server-side -f "$work/objects/rest.yaml"
t1=$(ms)
read -r n bytes < <(served kubectl)
row "kubectl apply, wait, apply" $((t1 - t0)) "$n" "$bytes"
