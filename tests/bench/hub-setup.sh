# Sourced by the hub benchmarks: builds release binaries, makes a work folder with a fleet
# repository (deploy/examples/apps), signing keys and an admin token, and defines
# `start_hub CHANNELS_YAML`, which writes hub.yaml (with that `channels:` block and no
# per-address connection cap: every simulated agent comes from 127.0.0.1) and starts the hub.
# Sets: bin, work, token, port, hub_pid (after start_hub). The caller's EXIT trap cleans up.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release
work=$(mktemp -d -t skiff-bench.XXXXXX)
trap 'kill "${hub_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
git init -q -b main "$work/fleet"
cp -R deploy/examples/apps "$work/fleet/"
git -C "$work/fleet" add -A
git -C "$work/fleet" -c user.name=bench -c user.email=bench@localhost commit -qm init
"$bin/skiff-hub" keygen --out "$work/keys" >/dev/null 2>&1
token=bench-admin-token-0123456789abcdef
echo "$token" > "$work/admin.token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_hub() {
  cat > "$work/hub.yaml" <<EOT
listen: 127.0.0.1:$port
data_dir: $work/data
signing_key: $work/keys/signing.pem
admin_token_file: $work/admin.token
repos:
  - {name: fleet, url: "$work/fleet", poll: 1h}
channels:
$1
limits: {max_connections_per_address: 0}
EOT
  SKIFF_LOG=warn "$bin/skiff-hub" serve --config "$work/hub.yaml" 2>"$work/hub.log" &
  hub_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  ulimit -n 65535 2>/dev/null || true
}
