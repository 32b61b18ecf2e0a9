# Shared set-up for the README's commands: root, system packages, Rust.
# Sourced, not run.

# Runs the calling script as root: as it is when root, else again through
# sudo when there is one, else stops with a clear message. Call it as
# `need_root "WHAT" "$@"` before anything else, from the script itself.
need_root() {
  local what=$1
  shift
  [ "$(id -u)" = 0 ] && return 0
  if command -v sudo >/dev/null; then
    echo "== $what needs root (it builds network namespaces): running it again through sudo"
    exec sudo -E env "PATH=$PATH" bash "$0" "$@"
  fi
  echo "error: $what needs root (it builds network namespaces), and there is no sudo: run it from a root shell" >&2
  exit 1
}

# Installs, with apt-get, every listed package that is not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

# Makes sure cargo is on PATH, installing Rust with rustup if it is missing.
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null; then
    echo "== installing Rust (rustup)"
    ensure_packages curl ca-certificates build-essential
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    . "$HOME/.cargo/env"
  fi
}

# What the demo runs: ip/bridge, nsenter/setpriv, ping, tcpdump, dig, and
# nft (the demo's network has a way out, masqueraded by nftables).
DEMO_PACKAGES=(iproute2 util-linux iputils-ping tcpdump bind9-dnsutils nftables)

# What scripts/kernel-vm.sh needs to boot Debian's stock kernel under qemu,
# and wg, which the kernel WireGuard test reads the device with in the VM.
VM_PACKAGES=(qemu-system-x86 busybox-static cpio kmod wireguard-tools)

# What the tests use beside the demo's: serf for the membership baseline,
# iperf3 for the overlay benchmarks, Nebula, wireguard-go and wg for the
# encrypted one's baselines, dnsperf and dnsmasq for DNS, dockerd and
# a static busybox (the lab's only image) for the Docker plugin, podman (with
# its CNI plugins) for mesh-cni, DejaVu for the benchmark plots, curl and the
# Prometheus client for the metrics, and the VM's.
LAB_PACKAGES=("${DEMO_PACKAGES[@]}" bash serf iperf3 nebula wireguard-go wireguard-tools dnsperf dnsmasq-base
  docker.io busybox-static podman fonts-dejavu-core curl python3-prometheus-client "${VM_PACKAGES[@]}")

# Starts a named phase of a script, printing how long the one before took
# (the README quotes these figures); `phase done` ends the last one.
phase() {
  local now=$SECONDS
  [ -n "${phase_name:-}" ] && echo "== $phase_name: $(((now - phase_start) / 60)) min $(((now - phase_start) % 60)) s"
  phase_name=$1
  phase_start=$now
  [ "$1" = done ] || echo "== $1"
}
