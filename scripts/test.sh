#!/usr/bin/env bash
# Runs every test: unit tests, and the multi-host scenario tests with the
# real `mesh` binary in network namespaces, then builds the Debian package
# and checks it in an empty root. Needs root (re-runs itself through sudo
# when there is one); installs what it needs. Prints how long each part took.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
need_root "the test suite" "$@"
ensure_packages "${LAB_PACKAGES[@]}" gcc
ensure_rust

# The previous release first: it builds into the same target directory with
# the same profile, so it shares the dependencies this build compiles, and
# this build then puts its own `mesh` back in target/debug.
phase "building the previous release (for the upgrade scenario)"
scripts/build-previous.sh
phase "building (debug)"
cargo build --bins --locked
phase "preparing the VM with Debian's stock kernel (scripts/kernel-vm.sh)"
scripts/kernel-vm.sh prepare
phase "testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
phase "packaging (the quick profile: the check is about the package, not speed)"
ensure_packages systemd
scripts/package.sh --quick --out target/package
scripts/check-package.sh target/package/mesh_*.deb
phase done
