#!/usr/bin/env bash
# Agent footprint and apply speed, side by side with kubectl in the same run:
# stripped binary size, idle RSS after applying the example repo, peak RSS and wall time
# applying a 1,000-object bundle to the Kubernetes API test server, versus
# `kubectl apply --server-side` of the same objects against a fresh instance of the server;
# peak RSS applying a bundle at the format's caps, and the running agent's idle RSS after it.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-agent-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

ms() { date +%s%3N; }
server() { # name -> starts a test server, writes $work/$1.kubeconfig
  "$bin/skiff-kube-testserver" --listen 127.0.0.1:0 --kubeconfig "$work/$1.kubeconfig" >/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -f "$work/$1.kubeconfig" ] && break; sleep 0.05; done
}
rss() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
# idle PID SECONDS: samples the agent's memory every second; prints the median (idle) and
# the most (a drift check running) of its VmRSS, split into private (anonymous) pages and
# file pages (the binary's code and the shared C library, reclaimable).
idle() {
  local anon=() file=()
  for _ in $(seq "$2"); do anon+=("$(rss "$1" RssAnon)"); file+=("$(rss "$1" RssFile)"); sleep 1; done
  local a f
  a=$(printf '%s\n' "${anon[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)], v[NR]}')
  f=$(printf '%s\n' "${file[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  set -- $a
  awk -v a="$1" -v m="$2" -v f="$f" 'BEGIN {printf "%.1f MiB = %.1f MiB private + %.1f MiB file pages (binary, libc); at most (a drift check running) %.1f MiB private", (a+f)/1024, a/1024, f/1024, m/1024}'
}

# 1,000 objects: Deployments, Services and ConfigMaps across 10 namespaces.
python3 - "$work/objects" <<'PY'
import os, sys
root = sys.argv[1]; os.makedirs(root)
with open(f"{root}/namespaces.yaml", "w") as f:
    for n in range(10):
        f.write(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-{n}}}\n")
for i in range(990):
    ns = f"bench-{i % 10}"
    kind = i % 3
    with open(f"{root}/obj-{i:04d}.yaml", "w") as f:
        if kind == 0:
            f.write(f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: app-{i}, namespace: {ns}, labels: {{app: app-{i}}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: app-{i}}}}}
  template:
    metadata: {{labels: {{app: app-{i}}}}}
    spec:
      containers:
      - name: main
        image: registry.example.com/app-{i}:1.{i % 7}
        ports: [{{containerPort: 8080}}]
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
        env: [{{name: MODE, value: "edge"}}, {{name: INDEX, value: "{i}"}}]
""")
        elif kind == 1:
            f.write(f"apiVersion: v1\nkind: Service\nmetadata: {{name: app-{i}, namespace: {ns}}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n")
        else:
            data = "\n".join(f"  key{k}: \"value {k} of {i}\"" for k in range(20))
            f.write(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg-{i}, namespace: {ns}}}\ndata:\n{data}\n")
PY
"$bin/skiff-hub" keygen --out "$work/keys" >/dev/null 2>&1
"$bin/skiff-hub" bundle build --dir "$work/objects" --channel bench --generation 1 --key "$work/keys/signing.pem" --out "$work/big" >/dev/null 2>&1
"$bin/skiff-hub" bundle build --dir deploy/examples/apps --channel demo --generation 1 --key "$work/keys/signing.pem" --out "$work/small" >/dev/null 2>&1

agent_config() { # name kubeconfig import_dir
  cat > "$work/$1.yaml" <<EOT
cluster: bench
trusted_keys: [$work/keys/signing.pub.pem]
data_dir: $work/$1-data
target: kube
kubeconfig: $2
import_dir: $3
channels: {bench: {}, demo: {}}   # no hub, no assignment: the channels this site runs
EOT
}

echo "binary (stripped): skiff-agent $(stat -c %s "$bin/skiff-agent" | awk '{printf "%.1f MiB", $1/1048576}'), kubectl $(stat -L -c %s "$(command -v kubectl)" | awk '{printf "%.1f MiB", $1/1048576}')"

# Idle RSS after applying the example repo, with the agent running as a service.
server idle
agent_config idle "$work/idle.kubeconfig" "$work/small"
SKIFF_LOG=warn "$bin/skiff-agent" run --config "$work/idle.yaml" 2>"$work/idle.log" &
agent_pid=$!; pids+=($agent_pid)
for _ in $(seq 200); do grep -q '"ok": true' "$work/idle-data/status.json" 2>/dev/null && break; sleep 0.05; done
echo "agent idle RSS after applying the example repo (median of 10 s): $(idle $agent_pid 10)"
kill "$agent_pid"

# 1,000 objects: skiff-agent import vs kubectl apply --server-side, each on a fresh server.
server skiff
agent_config big "$work/skiff.kubeconfig" "$work/none"
b=$(ls "$work"/big/*.tar.gz); e=${b%.tar.gz}.dsse.json
t0=$(ms)
${AGENT_ENV:-} /usr/bin/time -f "%M" -o "$work/agent.maxrss" "$bin/skiff-agent" import --config "$work/big.yaml" "$b" "$e" >/dev/null 2>"$work/import.log"
t1=$(ms)
server kubectl
t2=$(ms)
/usr/bin/time -f "%M" -o "$work/kubectl.maxrss" kubectl --kubeconfig "$work/kubectl.kubeconfig" apply --server-side -f "$work/objects/namespaces.yaml" >/dev/null
/usr/bin/time -f "%M" -a -o "$work/kubectl.maxrss" kubectl --kubeconfig "$work/kubectl.kubeconfig" apply --server-side -f "$work/objects" >/dev/null
t3=$(ms)
printf "%-46s %10s %12s\n" "apply 1,000 objects to the API test server" "wall" "peak RSS"
printf "%-46s %8s ms %9s MiB\n" "skiff-agent import (verify+apply+inventory)" $((t1-t0)) "$(awk '{printf "%.1f", $1/1024}' "$work/agent.maxrss")"
printf "%-46s %8s ms %9s MiB\n" "kubectl apply --server-side" $((t3-t2)) "$(sort -n "$work/kubectl.maxrss" | tail -1 | awk '{printf "%.1f", $1/1024}')"
printf "ratio (kubectl / skiff): %.1fx\n" "$(echo "scale=2; ($t3-$t2)/($t1-$t0)" | bc)"

# Drift check of the same 1,000 objects (dry-run apply + GET each), nothing drifted.
url=$(awk '/server:/ {print $2}' "$work/skiff.kubeconfig")
r0=$(curl -sf "$url/debug/requests" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
t6=$(ms)
"$bin/skiff-agent" check --config "$work/big.yaml" --no-heal >"$work/check.out" 2>/dev/null
t7=$(ms)
r1=$(curl -sf "$url/debug/requests" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
echo "one-shot skiff-agent check of 1,000 objects (a fresh process remembers nothing: every object compared): $((t7-t6)) ms, $((r1-r0)) API requests ($(head -1 "$work/check.out"))"

# A bundle at the format's caps (64 MiB of manifests in 8,000 ConfigMaps: the costliest
# shape to parse), kube target: peak RSS against the shipped memory limit (deploy/).
python3 - "$work/caps" <<'PY'
import os, sys
root = sys.argv[1]; os.makedirs(root)
files_n = 8000; per_file = (64 * 1024 * 1024 - 4096) // files_n
with open(f"{root}/00-ns.yaml", "w") as f:
    f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: caps}\n")
for i in range(files_n):
    body = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: caps}}\ndata:\n"
    k = 0
    while len(body) + 40 < per_file:
        body += f"  key-{k:05}: value-{i:05}-{k:05}-abcdefgh\n"; k += 1
    with open(f"{root}/cm-{i:05}.yaml", "w") as f:
        f.write(body)
PY
"$bin/skiff-hub" bundle build --dir "$work/caps" --channel caps --generation 1 --key "$work/keys/signing.pem" --out "$work/capsb" >/dev/null 2>&1
server caps
agent_config capsa "$work/caps.kubeconfig" "$work/none"
sed -i 's/channels: {bench: {}, demo: {}}/channels: {caps: {}}/' "$work/capsa.yaml"
b=$(ls "$work"/capsb/*.tar.gz); e=${b%.tar.gz}.dsse.json
t8=$(ms)
/usr/bin/time -f "%M" -o "$work/caps.maxrss" "$bin/skiff-agent" import --config "$work/capsa.yaml" "$b" "$e" >/dev/null 2>"$work/caps.log"
t9=$(ms)
limit=$(grep -A3 'limits:' deploy/kubernetes/agent/base/deployment.yaml | grep -o 'memory: [0-9]*Mi' | grep -o '[0-9]*')
echo "bundle at the caps (64 MiB, 8,000 objects), kube target: $((t9-t8)) ms, peak RSS $(awk '{printf "%.0f", $1/1024}' "$work/caps.maxrss") MiB (shipped limits: ${limit:-?} MiB in the Deployment, $(grep -o 'MemoryMax=.*' deploy/systemd/skiff-agent.service) in the unit)"

# The same bundle taken by a running agent from its import folder: idle RSS once it has
# applied it, sampled over 45 s (drift_interval 20s: two drift checks run meanwhile).
server capsidle
agent_config capsrun "$work/capsidle.kubeconfig" "$work/capsb"
sed -i 's/channels: {bench: {}, demo: {}}/channels: {caps: {}}\ndrift_interval: 20s/' "$work/capsrun.yaml"
SKIFF_LOG=warn "$bin/skiff-agent" run --config "$work/capsrun.yaml" 2>"$work/capsrun.log" &
agent_pid=$!; pids+=($agent_pid)
for _ in $(seq 1200); do grep -q '"ok": true' "$work/capsrun-data/status.json" 2>/dev/null && break; sleep 0.1; done
sleep 5 # the apply's last writes (inventory, status)
echo "agent idle RSS after the caps bundle (median of 45 s, two drift checks): $(idle $agent_pid 45); peak $(rss $agent_pid VmHWM | awk '{printf "%.0f MiB", $1/1024}')"
kill "$agent_pid"
