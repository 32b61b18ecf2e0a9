//! Cluster bundles, for images that boot unattended: `mesh bootstrap`
//! makes a cluster CA and join secret offline and prints them as a bundle.
//! An agent configured with `bootstrap = FILE` that belongs to no cluster
//! yet becomes a member of the bundle's cluster by itself (it issues its
//! own certificate from the CA), then joins its `join` peers as they come
//! up, so hosts that boot in any order form one cluster with no `mesh
//! init` anywhere.

use std::path::Path;

use anyhow::{bail, Context};
use mesh_membership::pki::{ClusterCa, ClusterSecret, JoinToken};
use serde::{Deserialize, Serialize};

/// What a bundle file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    /// The cluster's join token (its CA's fingerprint and the secret).
    token: String,
    /// The CA certificate, PEM.
    ca_cert: String,
    /// The CA private key, PEM.
    ca_key: String,
}

/// The first line of every bundle.
const HEADER: &str = "# mesh cluster bundle: the cluster CA (certificate and key) and the join secret.\n\
# A host configured with `bootstrap = \"<this file>\"` becomes a member by itself:\n\
# keep it as secret as the CA key it holds (mode 0600).\n";

/// A cluster to found or to belong to, from a bundle.
#[derive(Debug)]
pub(crate) struct ClusterSeed {
    /// The cluster CA.
    pub(crate) ca: ClusterCa,
    /// The join secret.
    pub(crate) secret: ClusterSecret,
}

impl ClusterSeed {
    /// A new cluster: a fresh CA and secret.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        Ok(Self { ca: ClusterCa::generate()?, secret: ClusterSecret::random() })
    }

    /// Reads a bundle file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster bundle {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("bad cluster bundle {}", path.display()))
    }

    /// Parses a bundle's text; the token must be the CA's.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let file: BundleFile = toml::from_str(text)?;
        let token: JoinToken = file.token.parse().context("bad token")?;
        let ca = ClusterCa::from_pem(&file.ca_cert, &file.ca_key).context("bad CA")?;
        if token.ca_fingerprint != ca.fingerprint() {
            bail!("the token is for another CA than the bundle's");
        }
        Ok(Self { ca, secret: token.secret })
    }

    /// The bundle's text.
    pub(crate) fn to_text(&self) -> anyhow::Result<String> {
        let file =
            BundleFile { token: self.token().to_string(), ca_cert: self.ca.cert_pem(), ca_key: self.ca.key_pem() };
        Ok(format!("{HEADER}{}", toml::to_string(&file)?))
    }

    /// The cluster's join token.
    pub(crate) fn token(&self) -> JoinToken {
        JoinToken { ca_fingerprint: self.ca.fingerprint(), secret: self.secret.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips_and_a_mismatched_one_is_refused() -> anyhow::Result<()> {
        let seed = ClusterSeed::generate()?;
        let text = seed.to_text()?;
        assert!(text.starts_with("# mesh cluster bundle"), "{text}");
        let back = ClusterSeed::parse(&text)?;
        assert_eq!(back.token(), seed.token());
        assert_eq!(back.ca.key_pem(), seed.ca.key_pem());

        let other = ClusterSeed::generate()?;
        let mixed = text.replace(&seed.token().to_string(), &other.token().to_string());
        let error = format!("{:#}", ClusterSeed::parse(&mixed).err().context("a mixed bundle was taken")?);
        assert!(error.contains("another CA"), "{error}");
        let error = format!("{:#}", ClusterSeed::parse("token = 3").err().context("junk was taken")?);
        assert!(error.contains("invalid type"), "{error}");
        Ok(())
    }
}
