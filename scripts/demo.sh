#!/usr/bin/env bash
# The demo: a 3-host lab on this machine, a real agent on each, `mesh init`
# and `mesh join`, what every host sees, then everything torn down.
# Needs root (re-runs itself through sudo when there is one); installs only
# what the demo runs, and builds only its two binaries, with the `quick`
# profile (Cargo.toml: quick to build, not to run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
need_root "the demo" "$@"
ensure_packages "${DEMO_PACKAGES[@]}" gcc
ensure_rust

echo "== building mesh and mesh-lab (the quick profile): about a minute on 2 cores the first time, seconds after"
cargo build --profile quick --locked --bin mesh --bin mesh-lab
exec target/quick/mesh-lab demo
