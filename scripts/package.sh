#!/usr/bin/env bash
# Builds mesh's Debian package: one static binary (musl: no runtime
# dependency beyond the kernel) as `mesh` and, linked, the CNI plugin
# `mesh-cni`; the systemd unit; the reference config as a conffile; the man
# page and shell completions, generated from the command line; the
# cloud-init example.
#
#   sudo scripts/package.sh [--quick] [--out DIR]     # default: release build, target/package
#
# --quick builds with the quick profile (no optimisation): for checking the
# package, not for shipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
need_root "packaging (files in the package are owned by root)" "$@"

profile=release
out=target/package
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) profile=quick ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

ensure_packages musl-tools dpkg gzip
ensure_rust
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

echo "== building a static mesh ($profile)"
cargo build --locked --bin mesh --target "$target" --profile "$profile"
bin="target/$target/$profile/mesh"
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/mesh"
mkdir -p "$stage/usr/lib/cni"
ln -s ../../bin/mesh "$stage/usr/lib/cni/mesh-cni"
install -D -m 0644 agent/dist/mesh.service "$stage/lib/systemd/system/mesh.service"
install -D -m 0600 agent/dist/mesh.toml "$stage/etc/mesh/mesh.toml"
mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/bash-completion/completions" \
  "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$bin" manpage | gzip -9n > "$stage/usr/share/man/man1/mesh.1.gz"
"$bin" completions bash > "$stage/usr/share/bash-completion/completions/mesh"
"$bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_mesh"
"$bin" completions fish > "$stage/usr/share/fish/vendor_completions.d/mesh.fish"
install -D -m 0644 agent/dist/cloud-init.yaml "$stage/usr/share/doc/mesh/examples/cloud-init.yaml"
install -D -m 0644 README.md "$stage/usr/share/doc/mesh/README.md"
install -D -m 0644 SECURITY.md "$stage/usr/share/doc/mesh/SECURITY.md"
cat > "$stage/usr/share/doc/mesh/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mesh

Files: *
License: MIT OR Apache-2.0
COPYRIGHT

mkdir -p "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: mesh
Version: $version
Architecture: $arch
Maintainer: mesh developers <mesh@localhost>
Installed-Size: $size
Section: net
Priority: optional
Recommends: iproute2, nftables
Suggests: docker.io, podman
Homepage: https://github.com/mesh/mesh
Description: overlay network for containers on many hosts, with no central store
 Every host runs one agent; agents find each other by SWIM gossip over
 mutually authenticated QUIC, program the kernel's VXLAN tables from the
 converged state and answer DNS for service names. A Docker network
 driver and a CNI plugin (mesh-cni) are included.
CONTROL
echo /etc/mesh/mesh.toml > "$stage/DEBIAN/conffiles"
# Maintainer scripts: nothing happens in an image being built (DPKG_ROOT)
# or without systemd; otherwise the unit is enabled at install (start it
# with `systemctl start mesh` once /etc/mesh/mesh.toml is set), stopped at
# removal, and forgotten at purge.
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable mesh.service
  systemctl try-restart mesh.service
fi
SCRIPT
cat > "$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now mesh.service || true
fi
SCRIPT
cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
  rm -rf "${DPKG_ROOT:-}/var/lib/mesh"
fi
SCRIPT
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/mesh_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "== built $deb ($(du -h "$deb" | cut -f1))"
