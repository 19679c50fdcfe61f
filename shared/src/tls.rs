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

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki::CaPin;
use crate::wire;

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
        quinn::IdleTimeout::try_from(wire::IDLE_TIMEOUT).expect("idle timeout fits"),
    ));
    if keep_alive {
        t.keep_alive_interval(Some(wire::KEEP_ALIVE));
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
    let verifier = Arc::new(PinnedCaVerifier {
        pin,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
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
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    quic_client(cfg)
}

/// The coordinator's server configuration. `chain` is its certificate
/// followed by the CA (agents find the pinned CA in it).
pub fn server(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(quic));
    s.transport_config(transport(false));
    Ok(s)
}

/// The client certificate chain the peer presented, if any.
pub fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// Trusts a server only through the CA named by a pin (kubeadm's discovery
/// hash). No trust on first use, no fallback on any error.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: CaPin,
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
