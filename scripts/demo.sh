#!/usr/bin/env bash
# The demo: a 3-host lab on this machine, a real agent on each, `mesh init`
# and `mesh join`, what every host sees, then everything torn down.
# Needs root; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
need_root "the demo"
ensure_packages "${LAB_PACKAGES[@]}" gcc
ensure_rust

cargo build --release --bins --locked
exec target/release/mesh-lab demo
