//! The data dir: what this node must keep across restarts. Its identity
//! (its identity key, whose hash is its node id; its bump), its cluster credentials, the peers it knew (so a
//! restarted agent finds its way back without `mesh join`), and its own
//! records (its endpoints, keeping their addresses, its version counter,
//! and the networks it knows). Everything else is rebuilt from peers. Files are written whole (temp file, then rename)
//! so a crash never leaves one half-written. The types its files carry
//! that other rooms share live here too: Docker's bindings ([`docker`]) and
//! published ports ([`published`]).

mod docker;
mod published;
mod wireguard_key;

pub(crate) use docker::{Bindings, BoundEndpoint, BoundNetwork};
pub(crate) use published::PublishedPort;
pub(crate) use wireguard_key::WireguardKey;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context};
use mesh_membership::pki::{pem_cert, pem_key, to_pem, ClusterCa, ClusterSecret, JoinToken, NodeCredentials};
use mesh_membership::{NodeKey, Owned};
use serde::{Deserialize, Serialize};

/// What changes while the agent runs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// The last bump this node used.
    pub(crate) bump: u16,
    /// Agent addresses of members seen, to re-announce to after a restart.
    pub(crate) peers: Vec<SocketAddr>,
    /// Whether the node left the cluster (and must not rejoin by itself).
    pub(crate) left: bool,
}

/// Where a sandbox's network stack is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attachment {
    /// Its network namespace.
    pub(crate) netns: PathBuf,
    /// Whether the agent made the namespace (and removes it with the sandbox).
    pub(crate) created: bool,
    /// The networks it is on, in the order of its interfaces (`eth0` first).
    pub(crate) networks: Vec<String>,
    /// The name of its interface when the runtime chose it (CNI's
    /// `CNI_IFNAME`; a sandbox on one network only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interface: Option<String>,
    /// Its ports published at the host's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) ports: Vec<PublishedPort>,
}

impl Attachment {
    /// The sandbox's interface on `network`, if it is on it.
    pub(crate) fn interface(&self, network: &str) -> Option<String> {
        let index = self.networks.iter().position(|n| n == network)?;
        Some(self.interface.clone().unwrap_or_else(|| format!("eth{index}")))
    }
}

/// A member's cluster credentials as stored.
pub(crate) struct ClusterFiles {
    pub(crate) creds: NodeCredentials,
    pub(crate) ca: ClusterCa,
    pub(crate) secret: ClusterSecret,
}

impl ClusterFiles {
    /// The join token for this node's cluster.
    pub(crate) fn token(&self) -> JoinToken {
        JoinToken { ca_fingerprint: self.ca.fingerprint(), secret: self.secret.clone() }
    }
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir {
    path: PathBuf,
    /// The generation of the records last saved: writers of records race
    /// (a command and the upkeep task), and an older snapshot must never
    /// overwrite a newer one.
    records_saved: Arc<Mutex<u64>>,
}

impl DataDir {
    /// Opens (creating if needed, owner-only) and checks that it is usable.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.join("pki"))
            .with_context(|| format!("cannot create data dir {}", path.display()))?;
        let dir = Self { path: path.to_owned(), records_saved: Arc::new(Mutex::new(0)) };
        dir.write(".probe", b"", 0o600).with_context(|| format!("data dir {} is not writable", path.display()))?;
        Ok(dir)
    }

    /// This node's identity key, made and saved on first use.
    pub(crate) fn node_key(&self) -> anyhow::Result<NodeKey> {
        let path = self.path.join("node-key.pem");
        match self.read_optional("node-key.pem")? {
            Some(text) => {
                let der = pem_key(&text).with_context(|| format!("{} is damaged", path.display()))?;
                NodeKey::from_pkcs8(der.secret_pkcs8_der()).with_context(|| format!("{} is damaged", path.display()))
            }
            None if self.read_optional("node-id")?.is_some() => bail!(
                "{} was made by an earlier mesh, from before node ids were derived from a key and records signed; \
                 move it away, start the agent and `mesh join` again",
                self.path.display()
            ),
            None => {
                let key = NodeKey::generate();
                self.write("node-key.pem", to_pem("PRIVATE KEY", &key.pkcs8()).as_bytes(), 0o600)?;
                Ok(key)
            }
        }
    }

    /// This node's WireGuard key, made and saved on first use (at
    /// enrolment, or at the first start of a data dir from before
    /// encryption).
    pub(crate) fn wireguard_key(&self) -> anyhow::Result<WireguardKey> {
        let path = self.path.join("wireguard.key");
        match self.read_optional("wireguard.key")? {
            Some(text) => WireguardKey::parse(&text).with_context(|| format!("{} is damaged", path.display())),
            None => {
                let key = WireguardKey::generate();
                self.write("wireguard.key", key.to_file().as_bytes(), 0o600)?;
                Ok(key)
            }
        }
    }

    /// The saved state, or the default on first start.
    pub(crate) fn state(&self) -> anyhow::Result<State> {
        self.read_json("state.json")
    }

    /// Saves the state.
    pub(crate) fn save_state(&self, state: &State) -> anyhow::Result<()> {
        self.write("state.json", &serde_json::to_vec_pretty(state)?, 0o600)
    }

    /// This node's own records, or none on first start.
    pub(crate) fn records(&self) -> anyhow::Result<Owned> {
        self.read_json("records.json")
    }

    /// The namespaces of this host's sandboxes, by sandbox name.
    pub(crate) fn attachments(&self) -> anyhow::Result<BTreeMap<String, Attachment>> {
        self.read_json("sandboxes.json")
    }

    /// Saves the namespaces of this host's sandboxes.
    pub(crate) fn save_attachments(&self, attachments: &BTreeMap<String, Attachment>) -> anyhow::Result<()> {
        self.write("sandboxes.json", &serde_json::to_vec_pretty(attachments)?, 0o600)
    }

    /// Docker's mesh networks and endpoints, as the plugin bound them.
    pub(crate) fn docker_bindings(&self) -> anyhow::Result<Bindings> {
        self.read_json("docker.json")
    }

    /// Saves Docker's mesh networks and endpoints.
    pub(crate) fn save_docker_bindings(&self, bindings: &Bindings) -> anyhow::Result<()> {
        self.write("docker.json", &serde_json::to_vec_pretty(bindings)?, 0o600)
    }

    /// Saves this node's own records, snapshot at core `generation`,
    /// unless a newer snapshot was saved already.
    pub(crate) fn save_records(&self, generation: u64, owned: &Owned) -> anyhow::Result<()> {
        let mut saved = self.records_saved.lock().unwrap_or_else(PoisonError::into_inner);
        if generation < *saved {
            return Ok(());
        }
        self.write("records.json", &serde_json::to_vec(owned)?, 0o600)?;
        *saved = generation;
        Ok(())
    }

    /// The cluster credentials of the node whose key is `key`, if it was
    /// initialised or enrolled.
    pub(crate) fn cluster(&self, key: &NodeKey) -> anyhow::Result<Option<ClusterFiles>> {
        let Some(node_pem) = self.read_optional("pki/node.pem")? else {
            return Ok(None);
        };
        self.finish_ca_switch()?;
        let read = |name: &str| -> anyhow::Result<String> {
            self.read_optional(name)?.with_context(|| format!("{} is missing", self.path.join(name).display()))
        };
        let ca = ClusterCa::from_pem(&read("pki/ca.pem")?, &read("pki/ca-key.pem")?).context("bad cluster CA")?;
        let secret_text = read("pki/cluster-secret")?;
        let secret = mesh_membership::pki::JoinToken::from_parts(ca.fingerprint(), secret_text.trim())
            .context("bad cluster secret")?
            .secret;
        let creds = NodeCredentials::new(pem_cert(&node_pem)?, key, ca.cert_der().clone());
        Ok(Some(ClusterFiles { creds, ca, secret }))
    }

    /// Saves a renewed certificate of this node.
    pub(crate) fn save_node_cert(&self, cert: &[u8]) -> anyhow::Result<()> {
        self.write("pki/node.pem", to_pem("CERTIFICATE", cert).as_bytes(), 0o644)
    }

    /// Replaces the cluster CA (after a rotation) with the one whose PEM
    /// certificate and key are given; nothing if it is the one saved. A
    /// crash halfway leaves the old CA or the new one, never a mix: both go
    /// to side files first, and [`DataDir::cluster`] finishes or drops a
    /// switch it finds.
    pub(crate) fn save_ca(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        if self.read_optional("pki/ca.pem")?.as_deref() == Some(cert_pem)
            && self.read_optional("pki/ca-key.pem")?.as_deref() == Some(key_pem)
        {
            return Ok(());
        }
        self.write("pki/ca-next.pem", cert_pem.as_bytes(), 0o644)?;
        self.write("pki/ca-key-next.pem", key_pem.as_bytes(), 0o600)?;
        self.finish_ca_switch()
    }

    /// Completes a CA switch [`DataDir::save_ca`] began, or drops one that
    /// never got its key.
    fn finish_ca_switch(&self) -> anyhow::Result<()> {
        let pki = self.path.join("pki");
        let rename = |from: &str, to: &str| {
            fs::rename(pki.join(from), pki.join(to)).with_context(|| format!("cannot rename {from} to {to}"))
        };
        let Some(next) = self.read_optional("pki/ca-next.pem")? else {
            return Ok(());
        };
        if self.read_optional("pki/ca-key-next.pem")?.is_some() {
            rename("ca-key-next.pem", "ca-key.pem")?;
        }
        let key = self.read_optional("pki/ca-key.pem")?.unwrap_or_default();
        if ClusterCa::from_pem(&next, &key).is_ok() {
            rename("ca-next.pem", "ca.pem")
        } else {
            fs::remove_file(pki.join("ca-next.pem")).context("cannot remove an unfinished CA switch")
        }
    }

    /// Saves the cluster credentials.
    pub(crate) fn save_cluster(&self, files: &ClusterFiles) -> anyhow::Result<()> {
        self.write("pki/ca.pem", files.ca.cert_pem().as_bytes(), 0o644)?;
        self.write("pki/ca-key.pem", files.ca.key_pem().as_bytes(), 0o600)?;
        let secret = files.token().secret_text();
        self.write("pki/cluster-secret", format!("{secret}\n").as_bytes(), 0o600)?;
        // The certificate goes last: its presence marks the set complete.
        self.save_node_cert(&files.creds.cert)
    }

    /// A JSON file, or the type's default if there is none.
    fn read_json<T: Default + serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<T> {
        match self.read_optional(name)? {
            Some(text) => {
                serde_json::from_str(&text).with_context(|| format!("{} is damaged", self.path.join(name).display()))
            }
            None => Ok(T::default()),
        }
    }

    fn read_optional(&self, name: &str) -> anyhow::Result<Option<String>> {
        let path = self.path.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!("{name}.tmp"));
        let written = (|| {
            let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            bail!("cannot write {}: {error}", path.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_membership::pki::certificate_request;

    #[test]
    fn identity_and_state_survive_a_restart() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = DataDir::open(tmp.path())?;
        let id = dir.node_key()?.id();
        assert_eq!(DataDir::open(tmp.path())?.node_key()?.id(), id, "the node id is stable");

        assert_eq!(dir.state()?, State::default());
        let state = State { bump: 7, peers: vec!["198.18.0.2:7950".parse()?], left: false };
        dir.save_state(&state)?;
        assert_eq!(DataDir::open(tmp.path())?.state()?, state);
        Ok(())
    }

    #[test]
    fn the_wireguard_key_is_made_once_and_kept_owner_only() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir()?;
        let key = DataDir::open(tmp.path())?.wireguard_key()?;
        assert_eq!(DataDir::open(tmp.path())?.wireguard_key()?, key, "the key is kept");
        let mode = fs::metadata(tmp.path().join("wireguard.key"))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(tmp.path().join("wireguard.key"), "damaged")?;
        let error = DataDir::open(tmp.path())?.wireguard_key().expect_err("a damaged key is refused");
        assert!(format!("{error:#}").contains("wireguard.key is damaged"), "{error:#}");
        Ok(())
    }

    #[test]
    fn credentials_round_trip() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = DataDir::open(tmp.path())?;
        let key = dir.node_key()?;
        assert!(dir.cluster(&key)?.is_none());
        let ca = ClusterCa::generate()?;
        let cert = ca.issue(key.id(), &certificate_request(&key)?, mesh_membership::pki::NODE_CERT_LIFETIME)?;
        let files = ClusterFiles {
            creds: NodeCredentials::new(cert, &key, ca.cert_der().clone()),
            ca,
            secret: ClusterSecret::random(),
        };
        dir.save_cluster(&files)?;
        let loaded = dir.cluster(&key)?.context("credentials were saved")?;
        assert_eq!(loaded.token(), files.token());
        assert_eq!(loaded.creds.cert, files.creds.cert);
        Ok(())
    }

    #[test]
    fn a_ca_switch_cut_short_leaves_the_old_ca_or_the_new_one() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = DataDir::open(tmp.path())?;
        let key = dir.node_key()?;
        let (old, new) = (ClusterCa::generate()?, ClusterCa::generate()?);
        let cert = old.issue(key.id(), &certificate_request(&key)?, mesh_membership::pki::NODE_CERT_LIFETIME)?;
        let files = ClusterFiles {
            creds: NodeCredentials::new(cert, &key, old.cert_der().clone()),
            ca: old,
            secret: ClusterSecret::random(),
        };
        dir.save_cluster(&files)?;
        let fingerprint =
            |dir: &DataDir| -> anyhow::Result<_> { Ok(dir.cluster(&key)?.context("saved")?.ca.fingerprint()) };
        let pki = tmp.path().join("pki");
        // Cut after the new certificate's side file: the old CA stays.
        fs::write(pki.join("ca-next.pem"), new.cert_pem())?;
        assert_eq!(fingerprint(&dir)?, files.ca.fingerprint());
        // Cut after both side files, or after the key's rename: the new CA.
        fs::write(pki.join("ca-next.pem"), new.cert_pem())?;
        fs::write(pki.join("ca-key-next.pem"), new.key_pem())?;
        assert_eq!(fingerprint(&dir)?, new.fingerprint());
        dir.save_ca(&files.ca.cert_pem(), &files.ca.key_pem())?;
        fs::write(pki.join("ca-next.pem"), new.cert_pem())?;
        fs::write(pki.join("ca-key.pem"), new.key_pem())?;
        assert_eq!(fingerprint(&dir)?, new.fingerprint());
        assert!(!pki.join("ca-next.pem").exists() && !pki.join("ca-key-next.pem").exists());
        Ok(())
    }

    #[test]
    fn damaged_files_are_reported_not_replaced() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = DataDir::open(tmp.path())?;
        fs::write(tmp.path().join("node-key.pem"), "garbage")?;
        let err = dir.node_key().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("damaged"), "{err}");
        fs::write(tmp.path().join("state.json"), "{")?;
        assert!(dir.state().is_err());
        Ok(())
    }

    #[test]
    fn a_data_dir_from_before_node_keys_is_a_clear_error() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        fs::write(tmp.path().join("node-id"), "0123456789abcdef0123456789abcdef\n")?;
        let err = DataDir::open(tmp.path())?.node_key().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("mesh join"), "{err}");
        assert!(!tmp.path().join("node-key.pem").exists(), "nothing is written over an old identity");
        Ok(())
    }

    #[test]
    fn unusable_dir_is_a_clear_error() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("file");
        fs::write(&file, "")?;
        let err = DataDir::open(&file).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("cannot create data dir"), "{err}");
        Ok(())
    }
}
