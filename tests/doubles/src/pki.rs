//! The cluster CA and the API server's serving certificate, as `kubeadm
//! init` writes them under `/etc/kubernetes/pki`: `ca.crt` (0644) and
//! `ca.key` (0600), `apiserver.crt` (0644) and `apiserver.key` (0600).
//!
//! The serving certificate names what kubeadm's names: the host's
//! addresses and name, `kubernetes`, `kubernetes.default...`, the first
//! service address `10.96.0.1`, `localhost`, `127.0.0.1`, plus what the
//! install adds (`apiserver.cluster.local`, the balancer's `10.103.97.2`)
//! and any `apiServer.certSANs` of the configuration.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use seaport_shared::pki::CaPin;

/// Names every serving certificate carries besides the host's own.
pub const FIXED_SANS: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "apiserver.cluster.local",
    "localhost",
    "10.96.0.1",
    "10.103.97.2",
    "127.0.0.1",
];

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// Errors of the PKI files.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: seaport_shared::confined::ConfinedError,
    },
    /// A certificate or key could not be made or parsed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// The error.
        source: rcgen::Error,
    },
    /// A file is not what it should be.
    #[error("{}: {reason}", .path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Rcgen {
        what: what.to_string(),
        source,
    }
}

/// The files of a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    /// The directory (usually `/etc/kubernetes/pki`).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `apiserver.crt`.
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    /// `apiserver.key`.
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }

    /// Creates the CA unless both its files exist; returns whether it did.
    pub fn ensure_ca(&self) -> Result<bool, PkiError> {
        if self.ca_cert().is_file() && self.ca_key().is_file() {
            return Ok(false);
        }
        let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubernetes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time_now();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(rc("signing the CA"))?;
        // The key first: a CA certificate without its key is never left.
        self.write(&self.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
        self.write(&self.ca_cert(), cert.pem().as_bytes(), 0o644)?;
        Ok(true)
    }

    /// Writes a CA received from another master (`ca.key` 0600 first).
    pub fn install_ca(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), PkiError> {
        self.write(&self.ca_key(), key_pem, 0o600)?;
        self.write(&self.ca_cert(), cert_pem, 0o644)
    }

    /// Writes the CA certificate alone (a worker's `ca.crt`).
    pub fn install_ca_cert(&self, cert_pem: &[u8]) -> Result<(), PkiError> {
        self.write(&self.ca_cert(), cert_pem, 0o644)
    }

    /// Issues the serving certificate for `host`, its addresses `ips` and
    /// `extra` names, signed by the CA.
    pub fn issue_serving(
        &self,
        host: &str,
        ips: &[IpAddr],
        extra: &[String],
    ) -> Result<Vec<String>, PkiError> {
        let ca_cert = self.read(&self.ca_cert())?;
        let ca_key = self.read(&self.ca_key())?;
        let ca_key = KeyPair::from_pem(&ca_key).map_err(rc("reading ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(rc("reading the CA certificate"))?;
        let names = serving_names(host, ips, extra);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        for n in &names {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(rc("a certificate name"))?),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CERT_LIFETIME;
        let key = KeyPair::generate().map_err(rc("generating the serving key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rc("signing the serving certificate"))?;
        self.write(&self.serving_key(), key.serialize_pem().as_bytes(), 0o600)?;
        self.write(&self.serving_cert(), cert.pem().as_bytes(), 0o644)?;
        Ok(names)
    }

    /// Issues a client certificate (CN `user`, O `group`) signed by the CA:
    /// (certificate PEM, key PEM).
    pub fn issue_client(&self, user: &str, group: &str) -> Result<(String, String), PkiError> {
        let ca_cert = self.read(&self.ca_cert())?;
        let ca_key = self.read(&self.ca_key())?;
        let ca_key = KeyPair::from_pem(&ca_key).map_err(rc("reading ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(rc("reading the CA certificate"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        if !group.is_empty() {
            dn.push(DnType::OrganizationName, group);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CERT_LIFETIME;
        let key = KeyPair::generate().map_err(rc("generating a client key"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rc("signing a client certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> Result<String, PkiError> {
        self.read(&self.ca_cert())
    }

    fn read(&self, path: &Path) -> Result<String, PkiError> {
        fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    fn write(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
        fs::create_dir_all(&self.dir).map_err(|source| PkiError::Read {
            path: self.dir.clone(),
            source,
        })?;
        seaport_shared::confined::write_atomic(path, bytes, mode).map_err(|source| {
            PkiError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

/// Every name of the serving certificate, without duplicates, in order:
/// the host's name, its addresses, the fixed names, then `extra`.
pub fn serving_names(host: &str, ips: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = std::iter::once(host.to_string())
        .chain(ips.iter().map(|ip| ip.to_string()))
        .chain(FIXED_SANS.iter().map(|s| s.to_string()))
        .chain(extra.iter().cloned());
    for n in all {
        if !n.is_empty() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// kubeadm's discovery hash (`sha256:HEX` of the SubjectPublicKeyInfo) of
/// the first certificate in a PEM text.
pub fn ca_hash(pem: &str) -> Result<CaPin, PkiError> {
    let der = first_cert_der(pem)?;
    CaPin::of_cert(&der).map_err(|e| PkiError::Bad {
        path: PathBuf::from("ca.crt"),
        reason: e.to_string(),
    })
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let certs = seaport_shared::pki::certs_from_pem(pem, "the CA certificate").map_err(|e| {
        PkiError::Bad {
            path: PathBuf::from("ca.crt"),
            reason: e.to_string(),
        }
    })?;
    certs
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .ok_or_else(|| PkiError::Bad {
            path: PathBuf::from("ca.crt"),
            reason: "no certificate in the PEM text".into(),
        })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
