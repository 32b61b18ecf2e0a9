//! The agent's configuration: a TOML file whose keys are the flags' names
//! (with `_` for `-`), overridden by the flags themselves; its defaults, and
//! the one fixed address the data plane and the names share ([`HOST_DNS`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The UDP port agents talk to each other on, unless configured.
pub(crate) const DEFAULT_PORT: u16 = 7950;
/// Where the agent keeps its identity and what it owns.
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/mesh";
/// The control socket clients talk to.
pub(crate) const DEFAULT_SOCKET: &str = "/run/mesh/mesh.sock";
/// VXLAN's IANA port.
pub(crate) const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Where Docker looks for plugin sockets.
pub(crate) const DEFAULT_DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The kernel's TUN device.
pub(crate) const DEFAULT_TUN_DEVICE: &str = "/dev/net/tun";
/// The Docker engine's API socket.
pub(crate) const DEFAULT_DOCKER_SOCKET: &str = "/run/docker.sock";
/// The address this host's resolver answers on for everyone on the host
/// (Docker's resolver forwards there, through the bridge of each network
/// that holds it): link-local, so it is never routed off the host.
pub(crate) const HOST_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);

/// Which WireGuard carries encrypted networks (`wireguard` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WireguardMode {
    /// The kernel's if it has one, else the agent's over a TUN device.
    #[default]
    Auto,
    /// The kernel's only.
    Kernel,
    /// The agent's only (over a TUN device).
    Userspace,
    /// None: this host carries no encrypted network.
    Off,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// For people reading a terminal or the journal.
    #[default]
    Human,
    /// One JSON object a line, for log pipelines.
    Json,
}

/// Everything the agent can be configured with. Each field is optional so
/// that the file and the flags can be layered; [`Config::resolve`] applies
/// the defaults.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) name: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) socket: Option<PathBuf>,
    pub(crate) advertise: Option<String>,
    pub(crate) bind: Option<SocketAddr>,
    #[serde(default)]
    pub(crate) join: Vec<String>,
    pub(crate) token: Option<String>,
    pub(crate) leave_on_terminate: Option<bool>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) log_level: Option<String>,
    pub(crate) vxlan_port: Option<u16>,
    pub(crate) netns_prefix: Option<String>,
    #[serde(default)]
    pub(crate) upstream_dns: Vec<String>,
    pub(crate) docker_plugin_dir: Option<PathBuf>,
    pub(crate) docker_socket: Option<PathBuf>,
    pub(crate) cert_lifetime_secs: Option<u64>,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) bootstrap: Option<PathBuf>,
    pub(crate) wireguard: Option<WireguardMode>,
    pub(crate) wireguard_port: Option<u16>,
    pub(crate) tun_device: Option<PathBuf>,
    pub(crate) encrypt_networks: Option<bool>,
}

impl Config {
    /// Reads a TOML config file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("bad config file {}", path.display()))
    }

    /// Parses TOML config text.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Layers `flags` over `self`: every value set by a flag wins.
    pub(crate) fn overlay(self, flags: Self) -> Self {
        Self {
            name: flags.name.or(self.name),
            data_dir: flags.data_dir.or(self.data_dir),
            socket: flags.socket.or(self.socket),
            advertise: flags.advertise.or(self.advertise),
            bind: flags.bind.or(self.bind),
            join: if flags.join.is_empty() { self.join } else { flags.join },
            token: flags.token.or(self.token),
            leave_on_terminate: flags.leave_on_terminate.or(self.leave_on_terminate),
            log_format: flags.log_format.or(self.log_format),
            log_level: flags.log_level.or(self.log_level),
            vxlan_port: flags.vxlan_port.or(self.vxlan_port),
            netns_prefix: flags.netns_prefix.or(self.netns_prefix),
            upstream_dns: if flags.upstream_dns.is_empty() { self.upstream_dns } else { flags.upstream_dns },
            docker_plugin_dir: flags.docker_plugin_dir.or(self.docker_plugin_dir),
            docker_socket: flags.docker_socket.or(self.docker_socket),
            cert_lifetime_secs: flags.cert_lifetime_secs.or(self.cert_lifetime_secs),
            metrics_addr: flags.metrics_addr.or(self.metrics_addr),
            bootstrap: flags.bootstrap.or(self.bootstrap),
            wireguard: flags.wireguard.or(self.wireguard),
            wireguard_port: flags.wireguard_port.or(self.wireguard_port),
            tun_device: flags.tun_device.or(self.tun_device),
            encrypt_networks: flags.encrypt_networks.or(self.encrypt_networks),
        }
    }

    /// Applies defaults and checks what can be checked without the network.
    pub(crate) fn resolve(self) -> anyhow::Result<Settings> {
        let bind = self.bind.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT));
        let advertise = match self.advertise.as_deref() {
            None => None,
            Some(text) => {
                Some(parse_addr(text, bind.port()).with_context(|| format!("bad advertise address {text:?}"))?)
            }
        };
        if advertise.is_some_and(|a| a.ip().is_unspecified()) {
            bail!("the advertise address must be one peers can reach, not {}", bind.ip());
        }
        let token = match self.token {
            Some(text) => Some(text.parse().context("bad join token")?),
            None => None,
        };
        if !self.join.is_empty() && token.is_none() && self.bootstrap.is_none() {
            bail!("--join needs --token (print one with `mesh token` on a member) or --bootstrap");
        }
        let name = match self.name {
            Some(name) => name,
            None => host_name()?,
        };
        if name.is_empty()
            || name.len() > 63
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("bad node name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'");
        }
        if let Some(prefix) = self.netns_prefix.as_deref().filter(|p| p.contains('/') || p.len() > 64) {
            bail!("bad netns prefix {prefix:?}: at most 64 characters, no '/'");
        }
        let cert_lifetime = match self.cert_lifetime_secs {
            Some(secs) if secs < MIN_CERT_LIFETIME_SECS => {
                bail!("cert_lifetime_secs {secs} is too short: at least {MIN_CERT_LIFETIME_SECS}")
            }
            Some(secs) => std::time::Duration::from_secs(secs),
            None => mesh_membership::pki::NODE_CERT_LIFETIME,
        };
        let upstream_dns = if self.upstream_dns.is_empty() {
            host_nameservers(RESOLV_CONF)
        } else {
            let parsed: anyhow::Result<Vec<SocketAddr>> = self
                .upstream_dns
                .iter()
                .map(|text| parse_addr(text, 53).with_context(|| format!("bad upstream DNS server {text:?}")))
                .collect();
            parsed?
        };
        Ok(Settings {
            name,
            data_dir: self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            socket: self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            advertise,
            bind,
            join: self.join,
            token,
            leave_on_terminate: self.leave_on_terminate.unwrap_or(false),
            log_format: self.log_format.unwrap_or_default(),
            log_level: self.log_level.unwrap_or_else(|| "info".into()),
            vxlan_port: self.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT),
            netns_prefix: self.netns_prefix.unwrap_or_default(),
            upstream_dns,
            docker_plugin_dir: match self.docker_plugin_dir {
                Some(dir) if dir.as_os_str().is_empty() => None,
                Some(dir) => Some(dir),
                None => Some(DEFAULT_DOCKER_PLUGIN_DIR.into()),
            },
            docker_socket: self.docker_socket.unwrap_or_else(|| DEFAULT_DOCKER_SOCKET.into()),
            cert_lifetime,
            metrics_addr: self.metrics_addr,
            bootstrap: self.bootstrap,
            encrypt_networks: self.encrypt_networks.unwrap_or(false),
            encryption: EncryptionSettings {
                mode: self.wireguard.unwrap_or_default(),
                port: match self.wireguard_port {
                    Some(0) => bail!("wireguard_port 0 is no port"),
                    Some(port) => port,
                    None => mesh_netdev::wireguard::DEFAULT_PORT,
                },
                tun_device: self.tun_device.unwrap_or_else(|| DEFAULT_TUN_DEVICE.into()),
            },
        })
    }
}

/// The configuration after defaults: what the daemon runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) socket: PathBuf,
    /// `None`: found from the host's addresses at start.
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) bind: SocketAddr,
    pub(crate) join: Vec<String>,
    pub(crate) token: Option<mesh_membership::pki::JoinToken>,
    pub(crate) leave_on_terminate: bool,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
    /// VXLAN's UDP port.
    pub(crate) vxlan_port: u16,
    /// Prepended to the names of the namespaces sandboxes get (for several
    /// agents on one machine, as in the lab).
    pub(crate) netns_prefix: String,
    /// Where names mesh does not hold are resolved.
    pub(crate) upstream_dns: Vec<SocketAddr>,
    /// Where the Docker plugin socket goes; `None`: no Docker plugin.
    pub(crate) docker_plugin_dir: Option<PathBuf>,
    /// The Docker engine the plugin asks for names.
    pub(crate) docker_socket: PathBuf,
    /// How long the node certificates this node issues are valid.
    pub(crate) cert_lifetime: std::time::Duration,
    /// Where Prometheus scrapes `/metrics`; `None`: not served.
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// A cluster bundle to become a member with, if in no cluster yet.
    pub(crate) bootstrap: Option<PathBuf>,
    /// Whether a cluster this node founds (`mesh init`) encrypts every
    /// network.
    pub(crate) encrypt_networks: bool,
    /// How this host carries encrypted networks.
    pub(crate) encryption: EncryptionSettings,
}

/// How this host carries encrypted networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncryptionSettings {
    /// Which WireGuard.
    pub(crate) mode: WireguardMode,
    /// WireGuard's UDP port (announced in the member record).
    pub(crate) port: u16,
    /// The TUN device the agent's WireGuard opens.
    pub(crate) tun_device: PathBuf,
}

/// The shortest certificate lifetime accepted: renewal happens when a third
/// is left, and must have time to.
const MIN_CERT_LIFETIME_SECS: u64 = 15;

/// The host's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` lines of the resolv.conf at `path` (none if it cannot
/// be read: forwarded names then fail with SERVFAIL, and the log says why).
fn host_nameservers(path: &str) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        tracing::warn!(path, "cannot read the host's resolvers: names mesh does not hold will not resolve");
        return Vec::new();
    };
    nameservers(&text)
}

/// The addresses of the `nameserver` lines of resolv.conf `text`.
fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses `IP` or `IP:PORT`, taking `default_port` when none is given.
pub(crate) fn parse_addr(text: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text.parse().context("expected IP or IP:PORT")?;
    Ok(SocketAddr::new(ip, default_port))
}

fn host_name() -> anyhow::Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("cannot read the host name; pass --name")?;
    Ok(name.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_parse_and_flags_win() -> anyhow::Result<()> {
        let file = Config::parse(
            r#"
            name = "edge-1"
            bind = "0.0.0.0:8000"
            advertise = "198.18.0.1"
            join = ["198.18.0.2"]
            token = "mesh1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            leave_on_terminate = true
            log_format = "json"
            "#,
        )?;
        let flags = Config { name: Some("edge-2".into()), ..Config::default() };
        let settings = file.overlay(flags).resolve()?;
        assert_eq!(settings.name, "edge-2");
        assert_eq!(settings.bind.port(), 8000);
        assert_eq!(settings.advertise, Some("198.18.0.1:8000".parse()?));
        assert_eq!(settings.join, ["198.18.0.2"]);
        assert!(settings.leave_on_terminate);
        assert_eq!(settings.log_format, LogFormat::Json);
        Ok(())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() -> anyhow::Result<()> {
        let settings = Config { name: Some("h".into()), ..Config::default() }.resolve()?;
        assert_eq!(settings.bind, SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!settings.leave_on_terminate);
        assert_eq!(settings.advertise, None);
        Ok(())
    }

    #[test]
    fn upstreams_come_from_flags_or_resolv_conf() -> anyhow::Result<()> {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53 \nnameserver bogus\n";
        assert_eq!(nameservers(text), [SocketAddr::from(([192, 0, 2, 53], 53)), "[2001:db8::53]:53".parse()?]);
        let flags =
            Config { name: Some("h".into()), upstream_dns: vec!["198.18.0.9:5353".into()], ..Config::default() };
        assert_eq!(flags.resolve()?.upstream_dns, [SocketAddr::from(([198, 18, 0, 9], 5353))]);
        Ok(())
    }

    /// The packaged config file is the reference: uncommented, every key
    /// in it parses, and it names every key there is (the exhaustive
    /// pattern stops compiling when a key is added).
    #[test]
    fn the_reference_config_names_every_key_and_each_parses() -> anyhow::Result<()> {
        let reference = include_str!("../dist/mesh.toml");
        let uncommented: String = reference
            .lines()
            .filter_map(|line| line.strip_prefix("# ").filter(|rest| rest.contains(" = ")))
            .map(|line| format!("{line}\n"))
            .collect();
        let Config {
            name,
            data_dir,
            socket,
            advertise,
            bind,
            join,
            token,
            leave_on_terminate,
            log_format,
            log_level,
            vxlan_port,
            netns_prefix,
            upstream_dns,
            docker_plugin_dir,
            docker_socket,
            cert_lifetime_secs,
            metrics_addr,
            bootstrap,
            wireguard,
            wireguard_port,
            tun_device,
            encrypt_networks,
        } = Config::parse(&uncommented)?;
        let set = [
            name.is_some(),
            data_dir.is_some(),
            socket.is_some(),
            advertise.is_some(),
            bind.is_some(),
            !join.is_empty(),
            token.is_some(),
            leave_on_terminate.is_some(),
            log_format.is_some(),
            log_level.is_some(),
            vxlan_port.is_some(),
            netns_prefix.is_some(),
            !upstream_dns.is_empty(),
            docker_plugin_dir.is_some(),
            docker_socket.is_some(),
            cert_lifetime_secs.is_some(),
            metrics_addr.is_some(),
            bootstrap.is_some(),
            wireguard.is_some(),
            wireguard_port.is_some(),
            tun_device.is_some(),
            encrypt_networks.is_some(),
        ];
        assert!(set.iter().all(|s| *s), "a key is missing from dist/mesh.toml: {set:?}");
        let mut resolved = Config::parse(&uncommented)?;
        resolved.bootstrap = None;
        resolved.resolve()?;
        Ok(())
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let err = |text: &str| Config::parse(text).and_then(Config::resolve).err().map(|e| format!("{e:#}"));
        assert!(err("name = \"a\"\nupstream_dns = [\"x\"]").is_some_and(|e| e.contains("upstream DNS")));
        assert!(err("nmae = \"x\"").is_some_and(|e| e.contains("unknown field")));
        assert!(err("bind = \"nowhere\"").is_some_and(|e| e.contains("bind")));
        assert!(err("name = \"a b\"").is_some_and(|e| e.contains("bad node name")));
        assert!(err("name = \"a\"\nadvertise = \"0.0.0.0\"").is_some_and(|e| e.contains("advertise")));
        assert!(err("name = \"a\"\nadvertise = \"banana\"").is_some_and(|e| e.contains("advertise")));
        assert!(err("name = \"a\"\njoin = [\"198.18.0.1\"]").is_some_and(|e| e.contains("--token")));
        assert!(err("name = \"a\"\ntoken = \"mesh1.x.y\"").is_some_and(|e| e.contains("token")));
        assert!(err("leave_on_terminate = \"yes\"").is_some());
    }
}
