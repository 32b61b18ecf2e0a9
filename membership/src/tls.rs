//! QUIC endpoint configuration: mutual TLS between members, and the
//! CA-pinning client configuration an enrolling node uses before it has a
//! certificate of its own.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pki::{fingerprint, Fingerprint, NodeCredentials};

/// ALPN name of protocol 1 of mesh's agent-to-agent protocol, all that
/// agents of 0.1 and 0.2 offer.
pub const ALPN_V1: &[u8] = b"mesh/1";
/// ALPN name of protocol 2 (mesh 0.3 on: the records of the encrypted
/// data plane).
pub const ALPN_V2: &[u8] = b"mesh/2";
/// The ALPN names offered, and accepted, the preferred first: two agents
/// of 0.3 negotiate `mesh/2`, one of 0.3 and one of 0.2 `mesh/1` (a server
/// picks the first of its own list that the client offers).
pub const ALPN: [&[u8]; 2] = [ALPN_V2, ALPN_V1];

fn alpn_protocols() -> Vec<Vec<u8>> {
    ALPN.iter().map(|name| name.to_vec()).collect()
}

/// A TLS configuration could not be built from the credentials.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the certificates or keys.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate could not serve as a trust root.
    #[error("tls verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn rejected the TLS configuration.
    #[error("quic: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Transport settings shared by both ends: datagrams for SWIM, and a
/// keep-alive well inside a long idle timeout, so that the connection to a
/// member this node rarely talks to (a pair of members exchanges probes
/// about every n/2 seconds in a cluster of n) stays up instead of costing
/// a handshake (about 5 KB with certificates) each time, while a vanished
/// peer's connection goes in the end. The keep-alive fires only after that
/// long without receiving anything on the connection. On 50 lab hosts,
/// where a pair talks about every 25 s, each agent sent 552 B/s when idle
/// with a 30 s keep-alive (and a 90 s idle timeout), 470 B/s with these.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(300_000))))
        .keep_alive_interval(Some(Duration::from_secs(120)))
        .datagram_receive_buffer_size(Some(256 * 1024))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(64))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(16));
    Arc::new(transport)
}

/// Connection ids this many bytes long: each is in every QUIC packet, and
/// an agent has a connection per member (quinn's default, 8, is room for
/// ids that validate themselves, which nothing here needs). Not zero:
/// two members that dial each other at once share one address pair, so
/// their packets are told apart by connection id.
const CONNECTION_ID_LEN: usize = 4;

/// The endpoint settings of every member: short connection ids.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(ShortConnectionIds));
    config
}

/// Random connection ids of [`CONNECTION_ID_LEN`] bytes.
struct ShortConnectionIds;

impl quinn::ConnectionIdGenerator for ShortConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; CONNECTION_ID_LEN]>())
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The server side of every member: presents the node's certificate and
/// asks for the client's, which must chain to one of the CAs in `roots`. A
/// client without one is let through the handshake only so it can enrol;
/// the transport refuses it everything else.
pub fn server_config(
    creds: &NodeCredentials,
    roots: &[CertificateDer<'static>],
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider()).allow_unauthenticated().build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain(), creds.private_key())?;
    tls.alpn_protocols = alpn_protocols();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// The client side between members: verifies the server against the CAs
/// in `roots` and presents this node's certificate.
pub fn member_client_config(
    creds: &NodeCredentials,
    roots: &[CertificateDer<'static>],
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(roots)?)
        .with_client_auth_cert(creds.chain(), creds.private_key())?;
    tls.alpn_protocols = alpn_protocols();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// The client side of an enrolling node: it has no certificate yet and no
/// CA certificate either, only the CA's fingerprint from the join token.
pub fn enrol_client_config(ca_fingerprint: Fingerprint) -> Result<quinn::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier { ca_fingerprint, provider: provider() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = alpn_protocols();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// Accepts a server whose chain ends in the CA the token pins, and whose
/// certificate that CA really signed (full webpki verification against it).
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|cert| fingerprint(cert) == self.ca_fingerprint).ok_or_else(|| {
            rustls::Error::General("the peer is not a member of the cluster this token is for".into())
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
