//! The first master's join data: its kubeadm discovery hash, and reading it
//! back from a file.

use std::path::Path;

use seaport_rootfs::kubeadm::JoinData;

/// Errors of join data.
#[derive(Debug, thiserror::Error)]
pub enum JoinDataError {
    /// The CA certificate is not PEM.
    #[error("not PEM: {0}")]
    NotPem(String),
    /// The PEM is not a certificate.
    #[error("not a certificate: {0}")]
    NotCertificate(String),
    /// The file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not join data.
    #[error("{}: not join data: {source}", .path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The `sha256:HEX` kubeadm discovery hash of a PEM CA certificate.
pub fn ca_cert_hash(pem: &[u8]) -> Result<String, JoinDataError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| JoinDataError::NotPem(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| JoinDataError::NotCertificate(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        seaport_shared::digest::Digest::of(spki).hex()
    ))
}

/// Reads join data written by the first master.
pub fn read_join_data(path: &Path) -> Result<JoinData, JoinDataError> {
    let bytes = std::fs::read(path).map_err(|source| JoinDataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| JoinDataError::Parse {
        path: path.to_path_buf(),
        source,
    })
}
