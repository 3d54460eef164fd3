#!/usr/bin/env bash
# Bundle build and verify+extract figures, side by side with git archive | gzip and
# sha256sum + tar xzf, from a release build. Extra arguments go to the benchmark
# (--files N, --runs N).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --workspace --quiet
exec target/release/skiff-bench-bundle "$@"
