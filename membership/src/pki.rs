//! Cluster identity: the cluster CA, node certificates, and the join token.
//!
//! `mesh init` makes a CA and a random cluster secret. Every node holds a
//! certificate from that CA naming its [`NodeId`]; agents accept only peers
//! presenting one (mutual TLS). The join token carries the SHA-256
//! fingerprint of the CA, so a joiner can verify the peer it enrols through
//! before it trusts anything, and the cluster secret, which proves to that
//! peer that the joiner may enrol. An enrolled node receives the CA key too,
//! so that any member can enrol the next joiner: there is no central
//! authority to be down. Removing a node for good therefore also means
//! rotating the CA (see [`crate::keyring`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::NodeId;
use crate::node_key::NodeKey;

/// The name every node certificate carries, and that clients verify.
pub const SERVER_NAME: &str = "mesh";

/// How long a node certificate is valid. Agents renew theirs when a third
/// of its lifetime is left, so a certificate in use never expires.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A certificate or key could not be made, parsed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build or parse a certificate, key or request.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The PEM text held no certificate or key.
    #[error("no {0} found in PEM text")]
    MissingPem(&'static str),
    /// A certificate did not name a node.
    #[error("certificate does not name a mesh node")]
    NoNodeName,
    /// A certificate or request names a node whose identity key it does not
    /// carry (a node id is the hash of its key; see [`crate::node_key`]).
    #[error("the key is not the identity key of node {0}")]
    NotTheNodesKey(NodeId),
    /// A CA key was paired with a certificate for another key.
    #[error("the CA key does not match the CA certificate")]
    KeyDoesNotMatch,
    /// A certificate could not be parsed.
    #[error("unreadable certificate")]
    Unreadable,
}

/// The bytes of a SHA-256 digest.
pub type Fingerprint = [u8; 32];

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The cluster's certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterCa({})", URL_SAFE_NO_PAD.encode(self.fingerprint()))
    }
}

impl ClusterCa {
    /// A new CA, for a new cluster or a rotation. Each has its own name,
    /// so a certificate's issuer tells which CA signed it.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let tag: [u8; 8] = rand::random();
        let name = format!("mesh cluster CA {}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let cert = ca_params(&name)?.self_signed(&key)?;
        Ok(Self { cert_der: cert.der().clone(), key })
    }

    /// `newer`'s certificate signed by this CA: presented beside a node
    /// certificate from `newer`, it lets a member that trusts only this CA
    /// verify that node during a rotation's grace period.
    pub fn cross_sign(&self, newer: &ClusterCa) -> Result<CertificateDer<'static>, PkiError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(&newer.cert_der).map_err(|_| PkiError::Unreadable)?;
        let name = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
        let params = ca_params(name.ok_or(PkiError::Unreadable)?)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        Ok(params.signed_by(&newer.key, &issuer)?.der().clone())
    }

    /// Loads a CA from its PEM certificate and PEM private key, which must
    /// be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = pem_cert(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).map_err(|_| PkiError::Unreadable)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyDoesNotMatch);
        }
        Ok(Self { cert_der, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The fingerprint a join token pins.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert_der)
    }

    /// Issues a certificate for `node`, valid for `lifetime` from now, for
    /// the public key in a DER certificate signing request, which must be
    /// `node`'s identity key. The request's own names are ignored: the CA
    /// decides what the certificate says.
    pub fn issue(&self, node: NodeId, csr_der: &[u8], lifetime: Duration) -> Result<CertificateDer<'static>, PkiError> {
        let request = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        if request.public_key.algorithm() != &rcgen::PKCS_ED25519
            || NodeId::of_public_key(request.public_key.der_bytes()) != node
        {
            return Err(PkiError::NotTheNodesKey(node));
        }
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let mut params = node_cert_params(node)?;
        let now = time::OffsetDateTime::now_utc();
        // Grace for clocks that lag the issuer's: an hour, or a tenth of
        // a short lifetime (renewal is due when a third is left).
        params.not_before = now - lifetime.min(Duration::from_secs(3600 * 10)) / 10;
        params.not_after = now + lifetime;
        let signed = CertificateSigningRequestParams { params, public_key: request.public_key }.signed_by(&issuer)?;
        Ok(signed.der().clone())
    }
}

fn ca_params(name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn node_cert_params(node: NodeId) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned(), node.cert_name()])?;
    params.distinguished_name.push(DnType::CommonName, node.cert_name());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// What a member presents: its certificate, its identity key, and the CA's
/// certificate.
pub struct NodeCredentials {
    /// The node's certificate, issued by the cluster CA.
    pub cert: CertificateDer<'static>,
    /// The node's private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The cluster CA certificate.
    pub ca_cert: CertificateDer<'static>,
    /// During a CA rotation's grace period, the CA's certificate signed by
    /// the CA it replaces (see [`ClusterCa::cross_sign`]).
    pub cross: Option<CertificateDer<'static>>,
}

impl NodeCredentials {
    /// The credentials of the node whose identity key is `key`.
    pub fn new(cert: CertificateDer<'static>, key: &NodeKey, ca_cert: CertificateDer<'static>) -> Self {
        Self { cert, key: key.pkcs8().into(), ca_cert, cross: None }
    }

    /// The same, presenting `cross` too.
    pub fn with_cross(self, cross: Option<CertificateDer<'static>>) -> Self {
        Self { cross, ..self }
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The chain a node presents: its certificate, then the CA's (so an
    /// enrolling peer can check the CA against its token's fingerprint),
    /// then the cross-signed one if any.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        [self.cert.clone(), self.ca_cert.clone()].into_iter().chain(self.cross.clone()).collect()
    }
}

/// A request to certify the node whose identity key is `key`, DER.
pub fn certificate_request(key: &NodeKey) -> Result<Vec<u8>, PkiError> {
    let pair = KeyPair::try_from(key.pkcs8().as_slice())?;
    Ok(node_cert_params(key.id())?.serialize_request(&pair)?.der().to_vec())
}

/// When a DER certificate becomes valid and when it expires.
pub fn validity(cert: &[u8]) -> Result<(SystemTime, SystemTime), PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| PkiError::NoNodeName)?;
    let at = |time: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(time.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((at(parsed.validity().not_before), at(parsed.validity().not_after)))
}

/// The node named in a DER certificate (its `ID.node.mesh` name), if the
/// certificate carries that node's identity key.
pub fn node_id_of(cert: &[u8]) -> Result<NodeId, PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| PkiError::NoNodeName)?;
    let names = parsed.subject_alternative_name().ok().flatten().ok_or(PkiError::NoNodeName)?;
    let node = names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => NodeId::from_cert_name(dns),
            _ => None,
        })
        .ok_or(PkiError::NoNodeName)?;
    if NodeId::of_public_key(&parsed.public_key().subject_public_key.data) != node {
        return Err(PkiError::NotTheNodesKey(node));
    }
    Ok(node)
}

/// Whether `der` is one whole X.509 certificate.
pub fn is_certificate(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(rest, _)| rest.is_empty())
}

/// Whether `cert` names `ca` as its issuer. CAs have distinct names (see
/// [`ClusterCa::generate`]), so once TLS has verified a chain this tells
/// which of the trusted CAs signed it.
pub fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) =
        (x509_parser::parse_x509_certificate(cert), x509_parser::parse_x509_certificate(ca))
    else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
}

/// Parses the first certificate in PEM text.
pub fn pem_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::MissingPem("certificate"))
}

/// Parses a PKCS#8 private key in PEM text.
pub fn pem_key(pem: &str) -> Result<PrivatePkcs8KeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::MissingPem("private key"))
}

/// Encodes DER bytes as PEM with the given label.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The secret that admits new nodes, shared by every member.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub [u8; 32]);

impl ClusterSecret {
    /// A fresh random secret.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Compares with another secret in time independent of where they differ.
    pub fn matches(&self, other: &Self) -> bool {
        // Comparing digests leaks nothing useful about the secret itself.
        fingerprint(&self.0) == fingerprint(&other.0)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// What a joiner needs: the CA fingerprint to verify the cluster, and the
/// cluster secret to prove it may enrol. Text form:
/// `mesh1.<base64url CA SHA-256>.<base64url secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: Fingerprint,
    /// The cluster secret.
    pub secret: ClusterSecret,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken(ca {})", URL_SAFE_NO_PAD.encode(self.ca_fingerprint))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mesh1.{}.{}", URL_SAFE_NO_PAD.encode(self.ca_fingerprint), self.secret_text())
    }
}

/// Why a text is not a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Wrong prefix or number of parts.
    #[error("a join token looks like mesh1.<43 characters>.<43 characters>; print one with `mesh token` on a member")]
    Format,
    /// A part is not base64url of 32 bytes.
    #[error("the join token is damaged (a part is not 32 bytes of base64url); copy it again from `mesh token`")]
    Damaged,
}

impl JoinToken {
    /// The secret part of the token text.
    pub fn secret_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.0)
    }

    /// A token from a CA fingerprint and the secret part of a token's text.
    pub fn from_parts(ca_fingerprint: Fingerprint, secret_text: &str) -> Result<Self, TokenError> {
        Ok(Self { ca_fingerprint, secret: ClusterSecret(decode_part(secret_text)?) })
    }
}

fn decode_part(part: &str) -> Result<[u8; 32], TokenError> {
    URL_SAFE_NO_PAD.decode(part).ok().and_then(|bytes| bytes.try_into().ok()).ok_or(TokenError::Damaged)
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some("mesh1"), Some(fp), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        Self::from_parts(decode_part(fp)?, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_damage() {
        let token = JoinToken { ca_fingerprint: [3; 32], secret: ClusterSecret::random() };
        let text = token.to_string();
        assert!(text.starts_with("mesh1."));
        assert_eq!(text.parse::<JoinToken>(), Ok(token.clone()));
        assert_eq!(format!(" {text}\n").parse::<JoinToken>(), Ok(token.clone()));
        assert_eq!("".parse::<JoinToken>(), Err(TokenError::Format));
        assert_eq!("mesh2.a.b".parse::<JoinToken>(), Err(TokenError::Format));
        assert_eq!(format!("{text}.x").parse::<JoinToken>(), Err(TokenError::Format));
        assert_eq!("mesh1.AAAA.BBBB".parse::<JoinToken>(), Err(TokenError::Damaged));
        let truncated = &text[..text.len() - 1];
        assert_eq!(truncated.parse::<JoinToken>(), Err(TokenError::Damaged));
        assert!(!format!("{token:?}").contains(&text[50..]), "Debug must not print the secret");
    }

    #[test]
    fn ca_issues_certificates_naming_the_node() -> Result<(), PkiError> {
        let ca = ClusterCa::generate()?;
        let key = NodeKey::generate();
        let node = key.id();
        let cert = ca.issue(node, &certificate_request(&key)?, Duration::from_secs(60))?;
        assert_eq!(node_id_of(&cert)?, node);
        let (from, until) = validity(&cert)?;
        let now = SystemTime::now();
        assert!(from < now && until > now && until < now + Duration::from_secs(61), "valid for a minute from now");
        assert!(node_id_of(ca.cert_der()).is_err());

        let reloaded = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem())?;
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        assert!(ca.issue(node, b"not a request", NODE_CERT_LIFETIME).is_err());
        Ok(())
    }

    #[test]
    fn no_certificate_names_a_node_with_another_key() -> Result<(), PkiError> {
        let ca = ClusterCa::generate()?;
        let (victim, forger) = (NodeKey::generate(), NodeKey::generate());
        // A request for the victim's id made with the forger's key is refused...
        let mut params = node_cert_params(victim.id())?;
        let forged_request = params.serialize_request(&KeyPair::try_from(forger.pkcs8().as_slice())?)?;
        let issued = ca.issue(victim.id(), forged_request.der(), NODE_CERT_LIFETIME);
        assert!(matches!(issued, Err(PkiError::NotTheNodesKey(_))));
        // ...and a certificate minted with the CA key directly is not accepted.
        params = node_cert_params(victim.id())?;
        let issuer = Issuer::from_ca_cert_der(ca.cert_der(), &ca.key)?;
        let minted = params.signed_by(&KeyPair::try_from(forger.pkcs8().as_slice())?, &issuer)?;
        assert!(matches!(node_id_of(minted.der()), Err(PkiError::NotTheNodesKey(_))));
        Ok(())
    }

    #[test]
    fn a_cross_signed_ca_lets_a_node_of_the_new_ca_be_verified_by_the_old_one() -> Result<(), PkiError> {
        use rustls::client::danger::ServerCertVerifier;
        let (old, new) = (ClusterCa::generate()?, ClusterCa::generate()?);
        assert!(ClusterCa::from_pem(&new.cert_pem(), &old.key_pem()).is_err(), "a key is checked against its CA");
        let key = NodeKey::generate();
        let cert = new.issue(key.id(), &certificate_request(&key)?, Duration::from_secs(3600))?;
        assert!(issued_by(&cert, new.cert_der()) && !issued_by(&cert, old.cert_der()));
        let verify = |root: &ClusterCa, chain: &[CertificateDer<'static>]| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.cert_der().clone()).map_err(|_| PkiError::Unreadable)?;
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|_| PkiError::Unreadable)?;
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(|_| PkiError::Unreadable)?;
            let now = rustls::pki_types::UnixTime::now();
            Ok::<_, PkiError>(verifier.verify_server_cert(&cert, chain, &name, &[], now).is_ok())
        };
        let creds = NodeCredentials::new(cert.clone(), &key, new.cert_der().clone());
        assert!(verify(&new, &creds.chain()[1..])?);
        assert!(!verify(&old, &creds.chain()[1..])?, "without the cross-signed CA the old one cannot tell");
        let creds = creds.with_cross(Some(old.cross_sign(&new)?));
        assert!(verify(&old, &creds.chain()[1..])?, "with it, it can");
        assert!(verify(&new, &creds.chain()[1..])?);
        Ok(())
    }

    #[test]
    fn secrets_compare_by_value() {
        let a = ClusterSecret([1; 32]);
        assert!(a.matches(&ClusterSecret([1; 32])));
        assert!(!a.matches(&ClusterSecret([2; 32])));
    }
}
