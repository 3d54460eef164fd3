#!/usr/bin/env bash
# skiff quickstart: from this repository alone, make a fleet Git repo out of
# deploy/examples/, generate a signing key, build a signed bundle from a commit, inspect it,
# and verify and extract it as an agent would. Needs cargo and git; no cluster.
#
# Usage: deploy/quickstart.sh [WORKDIR]   (default: a new temporary folder)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t skiff-quickstart.XXXXXX)}
mkdir -p "$work"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building skiff-hub and skiff-agent (release)"
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p skiff-hub -p skiff-agent
hub="$root/target/release/skiff-hub"
agent="$root/target/release/skiff-agent"

say "Making a fleet repository from deploy/examples in $work/fleet"
rm -rf "$work/fleet"
git init --quiet --initial-branch=main "$work/fleet"
cp -R "$root/deploy/examples/apps" "$work/fleet/"
git -C "$work/fleet" add --all
git -C "$work/fleet" -c user.name=skiff -c user.email=skiff@localhost commit --quiet -m "example fleet"
git -C "$work/fleet" log --oneline -1

say "Generating a signing key pair in $work/keys"
if [ ! -f "$work/keys/signing.pem" ]; then
  "$hub" keygen --out "$work/keys"
fi

say "Building a signed bundle from main:apps for channel 'demo'"
digest=$("$hub" bundle build --repo "$work/fleet" --rev main --path apps --channel demo \
  --generation 1 --namespace demo --key "$work/keys/signing.pem" --out "$work/out")

say "Inspecting it (structure only, no trust)"
"$hub" bundle inspect "$work/out/$digest.tar.gz"

say "Verifying it with the public key, as an agent does, and extracting it"
rm -rf "$work/extracted"
"$agent" bundle verify --key "$work/keys/signing.pub.pem" --extract "$work/extracted" \
  "$work/out/$digest.tar.gz" "$work/out/$digest.dsse.json"
find "$work/extracted" -type f | sort

cat <<EOT

Done. Everything is in $work. Things to try:
  - Tamper with the bundle and watch verification refuse it:
      printf x | dd of=$work/out/$digest.tar.gz bs=1 seek=100 conv=notrunc status=none
      $agent bundle verify --key $work/keys/signing.pub.pem $work/out/$digest.tar.gz $work/out/$digest.dsse.json
  - Commit a change in $work/fleet and build generation 2; the same commit always gives
    the same bundle bytes (compare the digests).
EOT
