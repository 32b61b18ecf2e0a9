#!/usr/bin/env bash
# Builds the `mesh` of the previous release (scenarios/previous-release: a
# commit of this repository's history) into target/previous/mesh, for the
# scenario that runs it beside this build and upgrades it in place. It builds
# in this build's target directory with the same (debug) profile, so the
# dependencies the two releases share are compiled once; this build's own
# target/debug/mesh is put back afterwards.
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
# Its profiles are replaced by this workspace's (the [profile.*] sections
# end both manifests), so the dependencies it shares with this build are
# the same artifacts, not compiled again.
manifest="$out/src/Cargo.toml"
{ sed '/^\[profile\./,$d' "$manifest"; sed -n '/^\[profile\./,$p' Cargo.toml; } > "$manifest.new"
mv "$manifest.new" "$manifest"
current=target/debug/mesh
saved=target/mesh.current
[ -e "$current" ] && cp -p "$current" "$saved"
# Whatever happens, target/debug/mesh is this build's again (or absent).
trap 'if [ -e "$saved" ]; then mv -f "$saved" "$current"; else rm -f "$current"; fi' EXIT
cargo build --locked --bin mesh --manifest-path "$manifest" --target-dir target
cp "$current" "$out/mesh"
echo "$commit" > "$out/commit"
rm -rf "$out/src" "$out/target"
