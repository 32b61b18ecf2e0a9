//! What a runtime gives a CNI plugin: the environment (`CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`) and the
//! network configuration on stdin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::error::{CniError, Code};
use crate::config::DEFAULT_SOCKET;

/// The CNI versions this plugin speaks.
pub(crate) const SUPPORTED: [&str; 2] = ["0.4.0", "1.0.0"];

/// The network configuration (stdin).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetConf {
    pub(crate) cni_version: String,
    /// The runtime's name for this network (the key of runtime aliases).
    pub(crate) name: String,
    /// The mesh network to join.
    pub(crate) network: String,
    /// The agent's control socket.
    #[serde(default)]
    pub(crate) socket: Option<PathBuf>,
    /// Names the container also answers to on the network.
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    /// What the runtime passes through the `aliases` capability.
    #[serde(default)]
    pub(crate) runtime_config: RuntimeConfig,
    /// The result of the plugins before this one in a chain.
    #[serde(default)]
    pub(crate) prev_result: Option<serde_json::Value>,
}

/// `runtimeConfig`: the capabilities mesh uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RuntimeConfig {
    /// Aliases by network name (podman's `--network-alias`).
    #[serde(default)]
    pub(crate) aliases: BTreeMap<String, Vec<String>>,
}

impl NetConf {
    /// Parses and checks the configuration.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let version: serde_json::Value = serde_json::from_slice(bytes)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| CniError::new(Code::Decode, "the network configuration is not a JSON object", ""))?;
        let Some(asked) = version.get("cniVersion").and_then(|v| v.as_str()) else {
            return Err(CniError::new(Code::InvalidConfig, "invalid network configuration", "`cniVersion` is missing"));
        };
        if !SUPPORTED.contains(&asked) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("mesh-cni speaks {} and the configuration asks for {asked:?}", SUPPORTED.join(", ")),
            ));
        }
        let conf: Self = serde_json::from_value(version)
            .map_err(|e| CniError::new(Code::InvalidConfig, "invalid network configuration", e.to_string()))?;
        if conf.network.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "invalid network configuration", "`network` is empty"));
        }
        Ok(conf)
    }

    /// The agent's socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into())
    }

    /// The aliases asked for, the configuration's then the runtime's.
    pub(crate) fn all_aliases(&self) -> Vec<String> {
        let runtime = self.runtime_config.aliases.get(&self.name).into_iter().flatten();
        self.aliases.iter().chain(runtime).cloned().collect()
    }
}

/// What the environment says.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) command: String,
    pub(crate) container_id: String,
    pub(crate) netns: Option<PathBuf>,
    pub(crate) ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub(crate) args: BTreeMap<String, String>,
}

impl Env {
    /// Reads the environment through `get` (the process's in the plugin).
    pub(crate) fn read(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = get("CNI_COMMAND").unwrap_or_default();
        let missing = |what: &str| CniError::new(Code::InvalidEnv, format!("{what} is not set"), "");
        if command == "VERSION" {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: Default::default(),
            });
        }
        let container_id =
            get("CNI_CONTAINERID").filter(|v| !v.is_empty()).ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ifname = get("CNI_IFNAME").filter(|v| !v.is_empty()).ok_or_else(|| missing("CNI_IFNAME"))?;
        let netns = get("CNI_NETNS").filter(|v| !v.is_empty()).map(PathBuf::from);
        if netns.is_none() && command != "DEL" {
            return Err(missing("CNI_NETNS"));
        }
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self { command, container_id, netns, ifname, args })
    }

    /// The sandbox name for this container: its name as the runtime passes
    /// it (`K8S_POD_NAME`: podman, Kubernetes), else from its id.
    pub(crate) fn sandbox_name(&self) -> String {
        let named = self.args.get("K8S_POD_NAME").map(|n| crate::agent::mesh_name(n)).filter(|n| !n.is_empty());
        named.unwrap_or_else(|| {
            format!("cni-{}", crate::agent::mesh_name(self.container_id.get(..12).unwrap_or(&self.container_id)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Env::read(|k| map.get(k).cloned())
    }

    #[test]
    fn configurations_and_environments_are_checked() {
        let good = br#"{"cniVersion":"1.0.0","name":"dev","type":"mesh-cni","network":"dev","aliases":["a"],
            "runtimeConfig":{"aliases":{"dev":["b"],"other":["c"]}}}"#;
        let conf = NetConf::parse(good).expect("valid");
        assert_eq!(conf.all_aliases(), ["a", "b"]);
        assert_eq!(conf.socket(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(NetConf::parse(b"{").err().map(|e| e.code), Some(Code::Decode));
        assert_eq!(NetConf::parse(b"[]").err().map(|e| e.code), Some(Code::Decode));
        assert_eq!(NetConf::parse(br#"{"name":"dev"}"#).err().map(|e| e.code), Some(Code::InvalidConfig));
        let old = br#"{"cniVersion":"0.3.1","name":"dev","type":"mesh-cni","network":"dev"}"#;
        assert_eq!(NetConf::parse(old).err().map(|e| e.code), Some(Code::IncompatibleVersion));
        let no_network = br#"{"cniVersion":"0.4.0","name":"dev","type":"mesh-cni"}"#;
        assert_eq!(NetConf::parse(no_network).err().map(|e| e.code), Some(Code::InvalidConfig));

        let add = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "0123456789abcdef"), ("CNI_IFNAME", "eth0")];
        assert_eq!(env(&add).err().map(|e| e.code), Some(Code::InvalidEnv), "ADD needs a netns");
        let mut with_netns = add.to_vec();
        with_netns.extend([("CNI_NETNS", "/run/netns/x"), ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web_1")]);
        let read = env(&with_netns).expect("valid");
        assert_eq!(read.sandbox_name(), "web-1");
        let unnamed = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "0123456789ABCDEF"), ("CNI_IFNAME", "eth0")])
            .expect("DEL needs no netns");
        assert_eq!(unnamed.sandbox_name(), "cni-0123456789ab");
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
