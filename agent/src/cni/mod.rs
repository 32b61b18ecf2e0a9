//! `mesh-cni`: mesh's CNI plugin, for podman, containerd, Kubernetes and
//! Nomad. It is the `mesh` binary run under the name `mesh-cni` (copy or
//! link it into the runtime's CNI bin dir). Each command asks the local
//! agent, as `mesh sandbox create --netns` does:
//!
//! - `ADD` attaches the container's namespace to the mesh network under
//!   the container's name (with its aliases), and returns the interface,
//!   its address and mesh's resolver. ADD of what exists returns it again.
//! - `DEL` removes it; DEL of what does not exist succeeds.
//! - `CHECK` checks that the sandbox exists and that its interface is in
//!   the namespace with its address (and in the `prevResult`).
//! - `VERSION` lists the configuration versions spoken: 0.4.0 and 1.0.0.
//!
//! Configuration: `{"cniVersion", "name", "type": "mesh-cni", "network":
//! MESH_NETWORK, "socket": AGENT_SOCKET, "aliases": [...]}`, plus the
//! runtime's `aliases` capability. Errors are CNI's JSON on stdout.

pub(crate) mod conf;
mod error;
pub(crate) mod result;

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use conf::{Env, NetConf, SUPPORTED};
use error::{CniError, Code};
use result::Attached;

use crate::api::{self, NetworkBody, SandboxBody, SandboxCreateBody};
use crate::control::client::Client;

/// The name the binary answers to as a CNI plugin.
pub(crate) const NAME: &str = "mesh-cni";
/// The version a result or error is written in when the configuration
/// cannot say.
const LATEST: &str = "1.0.0";

/// Runs one CNI command from the environment and stdin.
pub(crate) fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_owned());
    let outcome = match read {
        Ok(_) => Env::read(|key| std::env::var(key).ok()).and_then(|env| run(&env, &stdin)),
        Err(e) => Err(CniError::new(Code::Io, "cannot read the network configuration", e.to_string())),
    };
    let mut stdout = std::io::stdout();
    match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(stdout, "{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(stdout, "{}", error.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// Runs `env`'s command; returns what to print, if anything.
fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED })));
    }
    if !["ADD", "DEL", "CHECK"].contains(&env.command.as_str()) {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("unknown CNI_COMMAND {:?}", env.command),
            "mesh-cni runs ADD, DEL, CHECK and VERSION",
        ));
    }
    let conf = NetConf::parse(stdin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::Io, "cannot start", e.to_string()))?;
    runtime.block_on(async {
        let agent = Agent::reach(&conf.socket())?;
        match env.command.as_str() {
            "ADD" => add(&agent, env, &conf).await.map(Some),
            "DEL" => del(&agent, env).await.map(|()| None),
            _ => check(&agent, env, &conf).await.map(|()| None),
        }
    })
}

/// ADD: attaches the container, or finds it attached already.
async fn add(agent: &Agent, env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    if !netns.exists() {
        return Err(CniError::new(
            Code::UnknownContainer,
            "the container's namespace does not exist",
            netns.display().to_string(),
        ));
    }
    let network = agent.network(&conf.network).await?;
    let name = env.sandbox_name();
    let sandbox = match agent.sandbox(&name).await? {
        Some(existing) if existing.netns.as_deref() == Some(&*netns.to_string_lossy()) => existing,
        Some(_) => {
            return Err(CniError::new(
                Code::Refused,
                format!("a sandbox named {name} already exists on this host"),
                "another container has this name: remove it first",
            ))
        }
        None => {
            let body = SandboxCreateBody {
                name: name.clone(),
                networks: vec![conf.network.clone()],
                aliases: conf.all_aliases(),
                ip: None,
                netns: Some(netns.to_string_lossy().into_owned()),
                interface: Some(env.ifname.clone()),
                publish: Vec::new(),
            };
            agent.client.post(api::SANDBOXES, &body).await.map_err(refused)?
        }
    };
    let attached = attached(&sandbox, &network, &env.ifname)?;
    result::result(&conf.cni_version, &attached, conf.prev_result.as_ref())
}

/// DEL: removes the container's sandbox if it is this container's.
async fn del(agent: &Agent, env: &Env) -> Result<(), CniError> {
    let name = env.sandbox_name();
    let Some(sandbox) = agent.sandbox(&name).await? else { return Ok(()) };
    let ours = env.netns.as_ref().is_none_or(|netns| sandbox.netns.as_deref() == Some(&*netns.to_string_lossy()));
    if !ours {
        return Ok(());
    }
    let path = api::path_of(api::SANDBOX, &crate::unix_http::percent_encode(&name));
    match agent.client.delete::<api::Done>(&path).await {
        Ok(_) => Ok(()),
        Err(error) if error.to_string().contains("no sandbox named") => Ok(()),
        Err(error) => Err(refused(error)),
    }
}

/// CHECK: the sandbox exists, its interface is in the namespace with its
/// address, and `prevResult` has it.
async fn check(agent: &Agent, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let name = env.sandbox_name();
    let netns = env.netns.clone().unwrap_or_default();
    let sandbox =
        agent.sandbox(&name).await?.filter(|s| s.netns.as_deref() == Some(&*netns.to_string_lossy())).ok_or_else(
            || CniError::new(Code::UnknownContainer, format!("no sandbox {name} in {}", netns.display()), ""),
        )?;
    let network = agent.network(&conf.network).await?;
    let attached = attached(&sandbox, &network, &env.ifname)?;
    let found = interface_addresses(&netns, &env.ifname)?;
    if !found.contains(&attached.address) {
        return Err(CniError::new(
            Code::Refused,
            format!("interface {} in {} does not have {}", env.ifname, netns.display(), attached.address),
            format!("it has {found:?}"),
        ));
    }
    if let Some(previous) = &conf.prev_result {
        let ips = previous.get("ips").and_then(Value::as_array).cloned().unwrap_or_default();
        if !ips.iter().any(|ip| ip.get("address").and_then(Value::as_str) == Some(&attached.address)) {
            return Err(CniError::new(Code::Refused, "prevResult lacks mesh's address", attached.address));
        }
    }
    Ok(())
}

/// The interface `ifname` of `sandbox` on `network`.
fn attached(sandbox: &SandboxBody, network: &NetworkBody, ifname: &str) -> Result<Attached, CniError> {
    let endpoint = sandbox.endpoints.iter().find(|e| e.network == network.name).ok_or_else(|| {
        CniError::new(Code::Refused, format!("sandbox {} is not on network {}", sandbox.name, network.name), "")
    })?;
    let prefix = network.subnet.as_deref().and_then(|s| s.split_once('/')).map(|(_, p)| p).unwrap_or("32");
    let ip = endpoint.endpoint.ip.as_deref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            format!("network {} gives no addresses", network.name),
            "use an overlay network",
        )
    })?;
    Ok(Attached {
        interface: endpoint.interface.clone().unwrap_or_else(|| ifname.to_owned()),
        mac: endpoint.endpoint.mac.clone(),
        address: format!("{ip}/{prefix}"),
        sandbox: sandbox.netns.clone().unwrap_or_default(),
        gateway: network.gateway.clone().filter(|_| !network.internal),
    })
}

/// The IPv4 addresses (`IP/PREFIX`) of interface `ifname` in `netns`.
fn interface_addresses(netns: &Path, ifname: &str) -> Result<Vec<String>, CniError> {
    let wanted = ifname.to_owned();
    let found = mesh_netdev::netns::netlink_in(netns, move |handle| async move {
        let Some(link) = mesh_netdev::kernel::links(&handle).await?.remove(&wanted) else { return Ok(None) };
        let addresses = mesh_netdev::kernel::addresses_of(&handle, link.index).await?;
        Ok(Some(addresses.into_iter().map(|(ip, prefix)| format!("{ip}/{prefix}")).collect::<Vec<_>>()))
    })
    .map_err(|e| {
        CniError::new(Code::UnknownContainer, "cannot look inside the container's namespace", e.to_string())
    })?;
    found.ok_or_else(|| {
        CniError::new(Code::Refused, format!("interface {ifname} is missing in {}", netns.display()), "")
    })
}

/// The local agent, reachable.
struct Agent {
    client: Client,
}

impl Agent {
    fn reach(socket: &Path) -> Result<Self, CniError> {
        if let Err(error) = std::os::unix::net::UnixStream::connect(socket) {
            return Err(CniError::new(
                Code::TryAgainLater,
                format!("the mesh agent is unreachable at {}", socket.display()),
                format!("{error} (is `mesh agent` running? set `socket` in the network configuration)"),
            ));
        }
        Ok(Self { client: Client::new(socket) })
    }

    async fn network(&self, name: &str) -> Result<NetworkBody, CniError> {
        let path = api::path_of(api::NETWORK, &crate::unix_http::percent_encode(name));
        self.client
            .get(&path)
            .await
            .map_err(|e| CniError::new(Code::InvalidConfig, format!("unknown mesh network {name:?}"), format!("{e:#}")))
    }

    async fn sandbox(&self, name: &str) -> Result<Option<SandboxBody>, CniError> {
        let sandboxes: Vec<SandboxBody> = self.client.get(api::SANDBOXES).await.map_err(refused)?;
        Ok(sandboxes.into_iter().find(|s| s.name == name))
    }
}

fn refused(error: anyhow::Error) -> CniError {
    CniError::new(Code::Refused, format!("{error:#}"), "")
}
