#!/usr/bin/env bash
# Checks a mesh .deb as an image builder uses it: installs it into a clean
# root (dpkg --root, no chroot: the maintainer scripts see DPKG_ROOT and do
# nothing), checks what it holds, has `systemd-analyze verify` check its
# unit in that root (with the host's systemd targets standing in for the
# systemd package), then purges it and checks nothing is left.
#
#   sudo scripts/check-package.sh target/package/mesh_VERSION_ARCH.deb
set -euo pipefail
deb=$(realpath "$1")
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
fail() { echo "package check failed: $*" >&2; exit 1; }
# Nothing here may touch the host: its /dev/null is checked afterwards (a
# manual run of these steps once left it mode 0644, not reproduced since).
host_null=$(stat -c '%F %a' /dev/null)

mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status"
dpkg --root="$root" --force-script-chrootless -i "$deb" >/dev/null
dpkg --root="$root" -s mesh | grep -q '^Status: install ok installed' || fail "dpkg does not list mesh as installed"

bin="$root/usr/bin/mesh"
linked=$(ldd "$bin" 2>&1 || true)
echo "$linked" | grep -Eq "statically linked|not a dynamic executable" || fail "mesh needs shared libraries: $linked"
"$bin" --version | grep -q '^mesh ' || fail "mesh --version"
size=$(du -h "$bin" | cut -f1)
CNI_COMMAND=VERSION "$root/usr/lib/cni/mesh-cni" </dev/null | grep -q '"supportedVersions"' || fail "mesh-cni VERSION"
zcat "$root/usr/share/man/man1/mesh.1.gz" | grep -q '^\.TH mesh 1' || fail "no man page"
grep -q 'complete -F _mesh' "$root/usr/share/bash-completion/completions/mesh" || fail "no bash completion"
[ -s "$root/usr/share/zsh/vendor-completions/_mesh" ] || fail "no zsh completion"
[ "$(stat -c %a "$root/etc/mesh/mesh.toml")" = 600 ] || fail "the config is not owner-only"
grep -qx /etc/mesh/mesh.toml "$root/var/lib/dpkg/info/mesh.conffiles" || fail "the config is not a conffile"

units="$root/lib/systemd/system"
cp -n /lib/systemd/system/*.target "$units/"
verified=$(systemd-analyze verify --man=no --root="$root" mesh.service 2>&1) || fail "systemd-analyze verify: $verified"
[ -z "$verified" ] || fail "systemd-analyze verify objects: $verified"
rm -f "$units"/*.target

dpkg --root="$root" --force-script-chrootless -P mesh >/dev/null
[ "$(stat -c '%F %a' /dev/null)" = "$host_null" ] || fail "the host's /dev/null changed: $(stat -c '%F %a' /dev/null)"
left=$(cd "$root" && find . -path ./var/lib/dpkg -prune -o ! -type d -print)
[ -z "$left" ] || fail "left after purge: $left"
echo "== $(basename "$deb"): installs into a clean root, static ($size), unit verified, purged clean"
