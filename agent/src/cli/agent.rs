//! `mesh agent`: flags, layered over the config file, then the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::Args;

use crate::config::{Config, LogFormat, WireguardMode};

/// Flags of `mesh agent`; each has a config-file key of the same name.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Where the node keeps its identity and credentials [default: /var/lib/mesh].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The control socket [default: /run/mesh/mesh.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The address peers reach this node at, IP or IP:PORT; also its VTEP
    /// address [default: the bind address, or the host's main IPv4 address].
    #[arg(long)]
    advertise: Option<String>,
    /// UDP address to listen on for peers [default: 0.0.0.0:7950].
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// A member to join through at start-up (repeatable): each is retried
    /// with backoff until it has answered once.
    #[arg(long)]
    join: Vec<String>,
    /// The join token for --join.
    #[arg(long)]
    token: Option<String>,
    /// Leave the cluster on SIGTERM (for hosts being retired) instead of
    /// just stopping.
    #[arg(long)]
    leave_on_terminate: bool,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log level or tracing filter, e.g. `debug` or `info,mesh_membership=debug`.
    #[arg(long)]
    log_level: Option<String>,
    /// UDP port of the VXLAN tunnels [default: 4789].
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// Prefix of the namespaces sandboxes get, for several agents on one
    /// machine [default: none: `mesh sandbox create web` makes netns `web`].
    #[arg(long)]
    netns_prefix: Option<String>,
    /// A resolver for names mesh does not hold (repeatable) [default: the
    /// nameservers of /etc/resolv.conf].
    #[arg(long = "upstream-dns", value_name = "IP[:PORT]")]
    upstream_dns: Vec<String>,
    /// Where to put the Docker plugin socket `mesh.sock`; an empty value
    /// turns the plugin off [default: /run/docker/plugins].
    #[arg(long, value_name = "DIR", value_parser = OsStringValueParser::new().map(PathBuf::from))]
    docker_plugin_dir: Option<PathBuf>,
    /// The Docker engine's API socket, which the plugin asks for network
    /// and container names [default: /run/docker.sock].
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
    /// How long the node certificates this node issues (to itself, and to
    /// nodes that enrol through it) are valid; renewed when a third is left
    /// [default: one year].
    #[arg(long, value_name = "SECONDS")]
    cert_lifetime_secs: Option<u64>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics [default: not served].
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// A cluster bundle (`mesh bootstrap`): in no cluster yet, the agent
    /// becomes a member of the bundle's by itself, then joins --join peers.
    #[arg(long, value_name = "FILE")]
    bootstrap: Option<PathBuf>,
    /// Which WireGuard carries encrypted networks: the kernel's, else the
    /// agent's over a TUN device (`auto`), only one of them, or none (`off`)
    /// [default: auto].
    #[arg(long, value_enum)]
    wireguard: Option<WireguardMode>,
    /// WireGuard's UDP port [default: 51820].
    #[arg(long, value_name = "PORT")]
    wireguard_port: Option<u16>,
    /// The TUN device the agent's WireGuard opens [default: /dev/net/tun].
    #[arg(long, value_name = "PATH")]
    tun_device: Option<PathBuf>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub(crate) fn run(args: AgentArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let flags = Config {
        name: args.name,
        data_dir: args.data_dir,
        socket: args.socket,
        advertise: args.advertise,
        bind: args.bind,
        join: args.join,
        token: args.token,
        leave_on_terminate: args.leave_on_terminate.then_some(true),
        log_format: args.log_format,
        log_level: args.log_level,
        vxlan_port: args.vxlan_port,
        netns_prefix: args.netns_prefix,
        upstream_dns: args.upstream_dns,
        docker_plugin_dir: args.docker_plugin_dir,
        docker_socket: args.docker_socket,
        cert_lifetime_secs: args.cert_lifetime_secs,
        metrics_addr: args.metrics_addr,
        bootstrap: args.bootstrap,
        wireguard: args.wireguard,
        wireguard_port: args.wireguard_port,
        tun_device: args.tun_device,
        encrypt_networks: None,
    };
    let settings = file.overlay(flags).resolve()?;
    super::logging::init(settings.log_format, &settings.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(crate::daemon::run(settings))
}
