#!/usr/bin/env bash
# Runs every test: unit tests, and the multi-host scenario tests with the
# real `mesh` binary in network namespaces. Needs root; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
need_root "the test suite"
ensure_packages "${LAB_PACKAGES[@]}" gcc
ensure_rust

echo "== building"
cargo build --bins --locked
scripts/build-previous.sh
echo "== testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "== packaging (a debug build: the check is about the package, not speed)"
ensure_packages systemd
scripts/package.sh --debug --out target/package
scripts/check-package.sh target/package/mesh_*.deb
