#!/usr/bin/env bash
# Runs one command inside a qemu VM booted with Debian's stock kernel (which
# has WireGuard, IPsec ESP, IPVS and netem as modules; this machine's kernel
# lacks them), seeing this machine's own root filesystem read-only (so ip,
# nft, wg, tcpdump and the test binaries under target/ run unchanged), with
# a fresh tmpfs on /tmp and /run, and the current directory shared
# read-write at the same path. Exits with the command's exit code. Software
# emulation (TCG): no KVM needed; test behaviour there, never speed.
#
#   scripts/kernel-vm.sh prepare        # once: the packages, and the kernel unpacked into $KVM_ROOT
#   scripts/kernel-vm.sh [--mem MIB] [--cpus N] -- COMMAND...
#
# `prepare` installs qemu and what the initramfs needs, and fetches the
# exact kernel package that linux-image-amd64 names (a wildcard would
# fetch every kernel), unpacked with dpkg -x (no hooks, nothing installed
# on the host) into /var/cache/mesh-kernel/root. After
# ../shared/recipes/kernel-vm.sh (checked there: boot in 17-19 s on 2 cores).
set -euo pipefail

ROOT=${KVM_ROOT:-/var/cache/mesh-kernel/root}         # where the package was unpacked (dpkg -x)

if [ "${1:-}" = prepare ]; then
  here=$(dirname "$0")
  . "$here/common.sh"
  need_root "preparing the kernel VM" "$@"
  ensure_packages "${VM_PACKAGES[@]}"
  if ls "$ROOT"/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "== Debian's kernel: $(basename "$(ls -d "$ROOT"/lib/modules/* | head -1)") already in $ROOT"
    exit 0
  fi
  package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$package" ] || { echo "kernel-vm: apt knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
  echo "== fetching $package (about 70 MB) into $(dirname "$ROOT")"
  mkdir -p "$(dirname "$ROOT")"
  cache=$(cd "$(dirname "$ROOT")" && pwd)
  (cd /tmp && apt-get download -q "$package" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  deb=$(ls /tmp/"$package"_*.deb)
  rm -rf "$ROOT.new"
  dpkg -x "$deb" "$ROOT.new"
  depmod -b "$ROOT.new" "${package#linux-image-}"   # the package ships no modules.dep
  mv "$ROOT.new" "$ROOT"
  rm -f "$deb"
  echo "== $package unpacked into $cache"
  exit 0
fi

kernel=${KVM_KERNEL:-}; modules=${KVM_MODULES:-}; mem=2048; cpus=2
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --modules) modules=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 prepare | [--kernel VMLINUZ] [--modules DIR] [--mem MIB] [--cpus N] -- COMMAND..." >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "kernel-vm: no command given" >&2; exit 2; }
[ -n "$kernel" ] || kernel=$(ls "$ROOT"/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$modules" ] || modules=$(ls -d "$ROOT"/lib/modules/* 2>/dev/null | head -1)
[ -f "$kernel" ] && [ -d "$modules" ] || { echo "kernel-vm: no kernel at '$kernel' or modules at '$modules': run scripts/kernel-vm.sh prepare" >&2; exit 2; }
version=$(basename "$modules")
for tool in qemu-system-x86_64 busybox cpio modprobe; do
  command -v $tool >/dev/null || { echo "kernel-vm: needs $tool (scripts/kernel-vm.sh prepare installs it)" >&2; exit 2; }
done
modules=$(realpath "$modules"); work=$(pwd)

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ir=$tmp/ir; mkdir -p $ir/bin $ir/proc $ir/sys $ir/dev $ir/mods $ir/newroot $ir/lower $ir/upper
cp "$(command -v busybox)" $ir/bin/busybox
# Only what mounting 9p needs goes into the initramfs; the rest is loaded from the shared tree.
base=$(dirname "$(dirname "$(dirname "$modules")")")   # the root the tree was unpacked into
n=0
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$base" -S "$version" --show-depends $m | awk '/^insmod/{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  n=$((n+1)); cp "$ko" $ir/mods/$(printf %02d $n)-$(basename "$ko")
done
{ printf 'cd %q || exit 125\n' "$work"; printf 'exec'; printf ' %q' "$@"; echo; } > $ir/cmd.sh   # quoted as given
cat > $ir/init <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for ko in /mods/*.ko; do insmod \$ko || echo "kernel-vm: insmod \$ko failed"; done
# this machine's root, read-only, under a tmpfs overlay: the guest may write anywhere, nothing reaches the host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /lower || { echo "KERNEL_VM_EXIT=125"; poweroff -f; }
mount -t tmpfs upper /upper; mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w root /newroot || { echo "KERNEL_VM_EXIT=125"; poweroff -f; }
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm; mount -t devpts pts /newroot/dev/pts; mount -t tmpfs shm /newroot/dev/shm
# /dev/net/tun before its module, as Debian's kmod-static-nodes makes it: opening it loads tun
mkdir -p /newroot/dev/net; mknod /newroot/dev/net/tun c 10 200
mount -t tmpfs tmp /newroot/tmp; mount -t tmpfs run /newroot/run; mkdir -p /newroot/run/netns /newroot/run/lock
mkdir -p /newroot/lib/modules/$version
mount -t 9p -o trans=virtio,version=9p2000.L,ro modules /newroot/lib/modules/$version
# the current directory, read-write, at its own path (the only place the guest writes to the host)
mkdir -p /newroot$work; mount -t 9p -o trans=virtio,version=9p2000.L,rw work /newroot$work
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
# the kernel loads modules on demand (ip link add ... type veth) with the modprobe of the
# namespace it started in: point it at the guest root's own modprobe
printf '#!/bin/busybox sh\nexec chroot /newroot /sbin/modprobe "\$@"\n' > /bin/vm-modprobe; chmod +x /bin/vm-modprobe
echo /bin/vm-modprobe > /proc/sys/kernel/modprobe
ip link set lo up
cp /cmd.sh /newroot/tmp/.kernel-vm-cmd.sh
chroot /newroot /bin/bash /tmp/.kernel-vm-cmd.sh
echo "KERNEL_VM_EXIT=\$?"
poweroff -f
EOF
chmod +x $ir/init
(cd $ir && find . | cpio -o -H newc 2>/dev/null | gzip -1 > $tmp/initrd.gz)

set +e
qemu-system-x86_64 -accel tcg -cpu max -m "$mem" -smp "$cpus" -nographic -no-reboot -nic none \
  -kernel "$kernel" -initrd $tmp/initrd.gz -append "console=ttyS0 quiet panic=-1 loglevel=3" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$modules",mount_tag=modules,security_model=none,readonly=on \
  -virtfs local,path="$work",mount_tag=work,security_model=none \
  < /dev/null 2>&1 | tr -d '\r' | tee $tmp/console | grep -av 'KERNEL_VM_EXIT='
code=$(sed -n 's/.*KERNEL_VM_EXIT=\([0-9]*\).*/\1/p' $tmp/console | tail -1)
[ -n "$code" ] || { echo "kernel-vm: the VM ended without an exit code (see its console above)" >&2; exit 124; }
exit "$code"
