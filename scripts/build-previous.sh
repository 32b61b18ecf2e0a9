#!/usr/bin/env bash
# Builds the `mesh` of the previous release (scenarios/previous-release: a
# commit of this repository's history) into target/previous/mesh, for the
# scenario that runs it beside this build and upgrades it in place.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
ensure_rust
. <(grep -E '^(version|commit)=' scenarios/previous-release)
out=target/previous
if [ -x "$out/mesh" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
  echo "== previous release $version already built"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch -q --unshallow || true
fi
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "error: commit $commit (release $version) is not in this clone's history: clone with history" >&2
  exit 1
}
echo "== building the previous release $version ($commit)"
rm -rf "$out/src"
mkdir -p "$out/src"
git archive "$commit" | tar -x -C "$out/src"
cargo build --locked --bin mesh --manifest-path "$out/src/Cargo.toml" --target-dir "$out/target"
cp "$out/target/debug/mesh" "$out/mesh"
echo "$commit" > "$out/commit"
rm -rf "$out/src"
