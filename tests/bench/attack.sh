#!/usr/bin/env bash
# What idle attacker sockets cost a release hub with its default limits: 10,000 sockets
# opened from one address, then from 40 loopback addresses (127.0.0.10-49), none sending a
# byte. Prints how many the hub held, its RSS while they are held and after its first-byte
# timeout, and whether an agent's poll from another address was answered meanwhile.
# Usage: tests/bench/attack.sh [SOCKETS]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-attack-bench.XXXXXX)
trap 'kill "$hub_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
n=${1:-10000}

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
  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}
EOT
SKIFF_LOG=warn "$bin/skiff-hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
hub_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
agent_token=$(SKIFF_HUB_URL="http://127.0.0.1:$port" SKIFF_HUB_ADMIN_TOKEN=$token "$bin/skiff-hub" cluster add edge-1 2>/dev/null | tail -1)
ulimit -n 65535 2>/dev/null || true
rss() { awk '/VmRSS/ {print $2}' "/proc/$hub_pid/status"; }
echo "hub RSS before: $(rss) KiB"

python3 - "$port" "$n" "$hub_pid" "$agent_token" <<'PY'
import socket, sys, time, urllib.request
port, n, pid, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
def open_count(socks):
    """Sockets the hub still holds open (a closed one reads EOF or an error)."""
    held = 0
    for s in socks:
        s.setblocking(False)
        try:
            held += s.recv(1) != b""
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    return held
def attack(sources):
    socks, t0 = [], time.time()
    for i in range(n):
        s = socket.socket()
        s.bind((sources[i % len(sources)], 0))
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    time.sleep(1)
    return socks, open_count(socks), time.time() - t0
def poll():
    s = socket.socket(); s.bind(("127.0.0.200", 0)); s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /v1/clusters/edge-1/desired HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n".encode())
    answer = s.recv(64).split(b"\r\n")[0].decode(); s.close(); return answer
for label, sources in [("one address", ["127.0.0.1"]), ("40 addresses", [f"127.0.0.{i}" for i in range(10, 50)])]:
    socks, held, took = attack(sources)
    print(f"{label}: {n} sockets opened in {took:.1f}s, {held} held by the hub, hub RSS {rss()} KiB, agent poll: {poll()}")
    time.sleep(11)
    still = open_count(socks)
    for s in socks:
        s.close()
    print(f"{label}: after the 10s first-byte timeout {still} still open, hub RSS {rss()} KiB")
PY
