# Shared set-up for the README's commands: root, system packages, Rust.
# Sourced, not run.

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $1 needs root (it builds network namespaces): run it with sudo" >&2
    exit 1
  fi
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

# What the lab and the tests use: ip/bridge, nsenter/setpriv, ping, tcpdump,
# serf for the membership baseline, nftables for loss injection, iperf3 for
# the overlay benchmark, dig, dnsperf and dnsmasq for DNS, dockerd and a
# static busybox (the lab's only image) for the Docker plugin, podman (with
# its CNI plugins) for mesh-cni, DejaVu for the benchmark plots.
LAB_PACKAGES=(iproute2 util-linux iputils-ping tcpdump bash serf nftables iperf3 bind9-dnsutils dnsperf dnsmasq-base
  docker.io busybox-static podman fonts-dejavu-core curl python3-prometheus-client)
