//! The agent's identity on disk, under `STATE_DIR/identity/` (directory
//! 0700, files 0600):
//!
//! | file | what |
//! | --- | --- |
//! | `node.key` | the node's private key, made on this host, never sent |
//! | `node.pem` | its certificate, naming the node id (replaced on renewal) |
//! | `ca.pem` | the cluster CA, verified against the pin at join |
//! | `coordinator` | the coordinator's `HOST:PORT`, or every coordinator of the site (`A:7443,B:7443,...`) |
//!
//! `node.pem` is written last at join: an identity without it is incomplete
//! and treated as not joined.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use seaport_shared::confined;
use seaport_shared::pki::{self, CertInfo, PkiError, Role};
use seaport_shared::tls::{self, TlsError};

/// Errors loading or storing the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this host has not joined a coordinator (no identity in {0}): run `seaport-agent join --coordinator HOST:PORT --token TOKEN --ca-pin sha256:HEX` first")]
    NotJoined(String),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] confined::ConfinedError),
    #[error("bad key in {path}: {source}")]
    Key { path: String, source: rcgen::Error },
    #[error("{path} is not a node certificate (role {role:?})")]
    NotNode { path: String, role: Role },
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Paths under an agent state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub state_dir: PathBuf,
}

impl StatePaths {
    pub fn new(state_dir: &Path) -> Self {
        StatePaths {
            state_dir: state_dir.to_path_buf(),
        }
    }
    pub fn identity_dir(&self) -> PathBuf {
        self.state_dir.join("identity")
    }
    pub fn key(&self) -> PathBuf {
        self.identity_dir().join("node.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.identity_dir().join("node.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.identity_dir().join("ca.pem")
    }
    pub fn coordinator(&self) -> PathBuf {
        self.identity_dir().join("coordinator")
    }
}

/// A joined node's identity.
#[derive(Clone)]
pub struct Identity {
    pub node_id: String,
    pub coordinator: String,
    pub ca: CertificateDer<'static>,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key_pem: String,
    pub cert: CertInfo,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("coordinator", &self.coordinator)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity from a state directory.
    pub fn load(state_dir: &Path) -> Result<Identity, IdentityError> {
        let p = StatePaths::new(state_dir);
        if !p.cert().exists() || !p.key().exists() {
            return Err(IdentityError::NotJoined(
                p.identity_dir().display().to_string(),
            ));
        }
        let cert_path = p.cert().display().to_string();
        let cert_chain = pki::certs_from_pem(&pki::read_text(&p.cert())?, &cert_path)?;
        let cert = CertInfo::from_der(&cert_chain[0])?;
        if cert.role != Role::Node {
            return Err(IdentityError::NotNode {
                path: cert_path,
                role: cert.role,
            });
        }
        let ca = pki::certs_from_pem(&pki::read_text(&p.ca())?, &p.ca().display().to_string())?
            .remove(0);
        let key_pem = pki::read_text(&p.key())?;
        let coordinator = pki::read_text(&p.coordinator())?.trim().to_string();
        Ok(Identity {
            node_id: cert.name.clone(),
            coordinator,
            ca,
            cert_chain,
            key_pem,
            cert,
        })
    }

    /// Stores a fresh identity (after enrollment).
    pub fn store_new(
        state_dir: &Path,
        coordinator: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), IdentityError> {
        let p = StatePaths::new(state_dir);
        pki::create_private_dir(&p.identity_dir())?;
        confined::write_atomic(&p.key(), key_pem.as_bytes(), 0o600)?;
        confined::write_atomic(&p.ca(), ca_pem.as_bytes(), 0o600)?;
        confined::write_atomic(
            &p.coordinator(),
            format!("{coordinator}\n").as_bytes(),
            0o600,
        )?;
        confined::write_atomic(&p.cert(), cert_pem.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Replaces the certificate (after renewal; the key stays).
    pub fn store_cert(state_dir: &Path, cert_pem: &str) -> Result<(), IdentityError> {
        let p = StatePaths::new(state_dir);
        confined::write_atomic(&p.cert(), cert_pem.as_bytes(), 0o600)?;
        Ok(())
    }

    /// The node's key pair.
    pub fn key_pair(&self) -> Result<rcgen::KeyPair, IdentityError> {
        rcgen::KeyPair::from_pem(&self.key_pem).map_err(|source| IdentityError::Key {
            path: "node.key".into(),
            source,
        })
    }

    /// The mTLS client configuration of this node.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, IdentityError> {
        let key = pki::key_from_pem(&self.key_pem, "node.key")?;
        Ok(tls::mtls_client(&self.ca, self.cert_chain.clone(), key)?)
    }
}

/// Whether a certificate carries the public key of `key`.
pub fn cert_matches_key(cert_der: &[u8], key: &rcgen::KeyPair) -> bool {
    use rcgen::PublicKeyData;
    match x509_parser::parse_x509_certificate(cert_der) {
        Ok((_, cert)) => cert.tbs_certificate.subject_pki.raw == key.subject_public_key_info(),
        Err(_) => false,
    }
}
