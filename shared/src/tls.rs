//! TLS and QUIC configuration for every Seaport connection (rustls with the
//! aws-lc-rs provider, quinn).
//!
//! - [`enroll_client`]: the agent's only connection without a client
//!   certificate; the coordinator is trusted only if its chain contains the
//!   CA whose SubjectPublicKeyInfo hash equals the pin, and the server
//!   certificate verifies against that CA.
//! - [`mtls_client`]: agents and the admin CLI, with a client certificate,
//!   trusting exactly the cluster CA.
//! - [`server`]: the coordinator; client certificates are verified against the
//!   CA when presented and optional otherwise (only enrollment goes without).
//! - [`peer_server`], [`peer_client`]: agents fetching pieces from each
//!   other; the client checks the peer's node certificate as a client
//!   certificate of the CA, named as the coordinator announced it.
//!
//! The clients that do not trust a fixed root store share one verifier,
//! parameterised by the check of the chain (the pinned CA, the peer node).

use std::sync::Arc;

use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki::CaPin;

/// ALPN protocol id of every Seaport QUIC connection.
pub const ALPN: &[u8] = b"seaport/1";
/// QUIC idle timeout on both ends: a cut link ends the connection after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive from agents, below the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long a peer connection may take to establish.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("bad CA certificate: {0}")]
    BadCa(String),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("quic configuration: {0}")]
    Quic(String),
}

/// The crypto provider of every Seaport endpoint.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    store
        .add(ca.clone())
        .map_err(|e| TlsError::BadCa(e.to_string()))?;
    Ok(Arc::new(store))
}

fn transport(keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits"),
    ));
    if keep_alive {
        t.keep_alive_interval(Some(KEEP_ALIVE));
    }
    // Control plus a few blob transfers; bounded so a peer cannot open
    // unbounded streams.
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

fn quic_client(cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport(true));
    Ok(c)
}

/// Client configuration for enrollment: no client certificate, coordinator
/// verified against the pinned CA.
pub fn enroll_client(pin: CaPin) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ChainVerifier {
        check: PinnedCa {
            pin,
            provider: provider.clone(),
        },
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(cfg)
}

/// Client configuration with a client certificate, trusting only `ca`.
pub fn mtls_client(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(cfg)
}

/// The coordinator's server configuration. `chain` is its certificate
/// followed by the CA (agents find the pinned CA in it).
pub fn server(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config(ca, chain, key, true, transport(false))
}

/// The client certificate chain the peer presented, if any.
pub fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// What a client checks of a server's certificate chain, beyond the
/// handshake signatures (which [`ChainVerifier`] checks the same way for
/// every connection).
trait ServerCheck: std::fmt::Debug + Send + Sync {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// The one certificate verifier of Seaport's clients that do not trust a
/// fixed root store: the chain is accepted by its [`ServerCheck`], and the
/// handshake signatures are verified with the provider's algorithms.
#[derive(Debug)]
struct ChainVerifier<C> {
    check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: ServerCheck> ServerCertVerifier for ChainVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Enrollment: the server is trusted only through the CA named by a pin
/// (kubeadm's discovery hash) found in its chain. No trust on first use, no
/// fallback on any error.
#[derive(Debug)]
struct PinnedCa {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
}

impl ServerCheck for PinnedCa {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| {
                CaPin::of_cert(c)
                    .map(|p| p.matches(&self.pin))
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                rustls::Error::General(
                    "the coordinator's CA does not match the --ca-pin given; refusing to enroll"
                        .into(),
                )
            })?;
        let ca = ca.clone().into_owned();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            roots(&ca).map_err(|e| rustls::Error::General(e.to_string()))?,
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }
}

/// A peer's server: node certificates are client certificates (extended
/// key usage `clientAuth` only), so the chain is checked as a client
/// certificate of the cluster CA would be, and its name must be the node
/// the coordinator announced for that address.
#[derive(Debug)]
struct PeerNode {
    inner: Arc<dyn ClientCertVerifier>,
    expected: String,
}

impl ServerCheck for PeerNode {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = crate::pki::CertInfo::from_der(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if info.role != crate::pki::Role::Node || info.name != self.expected {
            return Err(rustls::Error::General(format!(
                "peer presented the certificate of {} ({:?}), expected node {}",
                info.name, info.role, self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
}

/// QUIC transport for blob transfers on a LAN: flow-control windows large
/// enough that a shaped link (tbf queueing adds tens of ms) stays full.
pub fn lan_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // What an agent buffers is bounded by these windows, per connection,
    // and an agent talks to every other host at N = 8. A piece request is
    // one stream and an agent keeps at most two in flight per peer, so
    // 2 MiB per stream and 4 MiB per connection still cover 200 Mbit/s
    // with the 50 ms a tc queue adds (1.25 MB in flight).
    t.stream_receive_window((2u32 * 1024 * 1024).into());
    t.receive_window((4u32 * 1024 * 1024).into());
    // Unacknowledged and unsent bytes a sender buffers per connection: an
    // agent serving seven peers holds up to this much for each of them.
    t.send_window(2 * 1024 * 1024);
    Arc::new(t)
}

/// Server configuration of an agent's peer server: its node certificate,
/// and clients must present a certificate of the same CA (the caller checks
/// the node role and revocations).
pub fn peer_server(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config(ca, chain, key, false, lan_transport())
}

/// A TLS 1.3 QUIC server presenting `chain`, verifying client certificates
/// against `ca` (optional when `anonymous_clients`).
fn server_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    anonymous_clients: bool,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone());
    if anonymous_clients {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(quic));
    s.transport_config(transport);
    Ok(s)
}

/// Client configuration for dialing the peer server of node `expected`
/// (see [`PeerNode`]).
pub fn peer_client(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    expected: &str,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(ChainVerifier {
        check: PeerNode {
            inner,
            expected: expected.to_string(),
        },
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(lan_transport());
    Ok(c)
}

/// A client endpoint on an ephemeral UDP port of the address family of `peer`.
pub fn client_endpoint(peer: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: std::net::SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind)
}

/// Resolves `HOST:PORT` to its first address.
pub async fn resolve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })
}
