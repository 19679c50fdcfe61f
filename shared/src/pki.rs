//! Identity: roles, CA pins, join tokens, node ids, certificate inspection,
//! key and CSR generation, and private files on disk.
//!
//! Certificates carry their role in the subject's organizational unit
//! (`OU=coordinator|admin|node`) and their name in the common name: the node
//! id for nodes. The coordinator reads both from the verified certificate,
//! never from a message.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Organization every Seaport certificate carries.
pub const ORGANIZATION: &str = "seaport";

/// Errors from identity handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("bad CA pin {0:?}: expected sha256: followed by 64 hex digits")]
    BadPin(String),
    #[error("bad join token: expected the form abcdef.0123456789abcdef (6 and 16 characters of a-z and 0-9)")]
    BadToken,
    #[error("could not parse certificate: {0}")]
    BadCertificate(String),
    #[error("certificate has no seaport role (OU=coordinator, admin or node)")]
    NoRole,
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("no private key found in {0}")]
    NoKey(String),
    #[error("could not generate key or request: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("could not write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The role a certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Admin,
    Node,
}

impl Role {
    /// The subject OU that encodes this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "coordinator" => Some(Role::Coordinator),
            "admin" => Some(Role::Admin),
            "node" => Some(Role::Node),
            _ => None,
        }
    }
}

/// `sha256:<hex>` of a CA certificate's DER SubjectPublicKeyInfo, as kubeadm's
/// discovery hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// The pin of a CA certificate.
    pub fn of_cert(cert_der: &[u8]) -> Result<CaPin, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let spki = cert.tbs_certificate.subject_pki.raw;
        Ok(CaPin(Sha256::digest(spki).into()))
    }

    pub fn parse(s: &str) -> Result<CaPin, PkiError> {
        let bad = || PkiError::BadPin(s.to_string());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(CaPin(arr))
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &CaPin) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl std::fmt::Display for CaPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A join token `id.secret`: the id names it in state, the secret proves it.
/// The coordinator keeps only [`JoinToken::secret_hash`].
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN_ID_LEN: usize = 6;
const TOKEN_SECRET_LEN: usize = 16;

impl JoinToken {
    /// A new random token (about 82 bits of secret).
    pub fn generate() -> JoinToken {
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())] as char)
                .collect()
        };
        JoinToken {
            id: pick(TOKEN_ID_LEN),
            secret: pick(TOKEN_SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let (id, secret) = s.trim().split_once('.').ok_or(PkiError::BadToken)?;
        let ok = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| TOKEN_ALPHABET.contains(&b))
        };
        if !ok(id, TOKEN_ID_LEN) || !ok(secret, TOKEN_SECRET_LEN) {
            return Err(PkiError::BadToken);
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Hex sha256 of the secret, bound to the id.
    pub fn secret_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        h.update(b".");
        h.update(self.secret.as_bytes());
        hex::encode(h.finalize())
    }

    /// Whether `hash` (from state) is this token's, compared in constant time.
    pub fn matches_hash(&self, hash: &str) -> bool {
        constant_time_eq(self.secret_hash().as_bytes(), hash.as_bytes())
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl std::fmt::Debug for JoinToken {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

/// Longest name a host may ask for; the coordinator appends a dash and 8
/// hex digits of its own choosing to make the node id.
pub const NODE_LABEL_MAX: usize = 40;

/// The name a host asks to be known by: its hostname made DNS-label safe
/// (lowercase letters, digits and dashes, at most [`NODE_LABEL_MAX`]
/// characters). It is only a request: the coordinator makes the node id
/// from it and a suffix it draws itself, so no host can choose, predict or
/// reuse another node's id.
pub fn node_label(hostname: &str) -> String {
    let label: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label: String = label
        .trim_matches('-')
        .chars()
        .take(NODE_LABEL_MAX)
        .collect();
    let label = label.trim_end_matches('-');
    if label.is_empty() {
        "node".to_string()
    } else {
        label.to_string()
    }
}

/// Whether `s` is shaped like a node id (what the coordinator accepts in a CSR).
pub fn is_valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What Seaport reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub role: Role,
    /// The subject common name: the node id for node certificates.
    pub name: String,
    pub serial: u64,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub ips: Vec<IpAddr>,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let role = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(Role::from_ou)
            .ok_or(PkiError::NoRole)?;
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let serial_bytes = cert.raw_serial();
        let serial = if serial_bytes.len() <= 8 {
            serial_bytes
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        } else {
            u64::MAX
        };
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::IPAddress(raw) = name {
                    match raw.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*raw).unwrap_or_default())),
                        16 => {
                            ips.push(IpAddr::from(<[u8; 16]>::try_from(*raw).unwrap_or_default()))
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(CertInfo {
            role,
            name,
            serial,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            ips,
        })
    }

    /// When an agent should renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// A new ECDSA P-256 key pair (made on the host that will use it).
pub fn generate_key() -> Result<rcgen::KeyPair, PkiError> {
    Ok(rcgen::KeyPair::generate()?)
}

/// A certificate signing request with common name `name` (the name a host
/// asks for, or an admin certificate's name) and `ips` as SANs. The
/// coordinator decides the node id, role and lifetime; the CSR proves the key.
pub fn node_csr(key: &rcgen::KeyPair, name: &str, ips: &[IpAddr]) -> Result<Vec<u8>, PkiError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    let csr = params.serialize_request(key)?;
    Ok(csr.der().to_vec())
}

/// All certificates in a PEM text, in order.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PkiError::NoCertificate(what.to_string()));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::NoKey(what.to_string()))
}

/// Reads a file to a string, naming it in the error.
pub fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Creates a directory (and parents) with mode 0700 for the last component.
pub fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn token_round_trip_and_rejections() {
        let t = JoinToken::generate();
        let parsed = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert!(parsed.matches_hash(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "abcdef",
            "abcdef.short",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        let other = JoinToken {
            id: t.id.clone(),
            secret: "0000000000000000".into(),
        };
        assert!(!other.matches_hash(&t.secret_hash()));
    }

    #[test]
    fn pin_parse_and_display() {
        let hex64 = "ab".repeat(32);
        let pin = CaPin::parse(&format!("sha256:{hex64}")).unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{hex64}"));
        assert!(CaPin::parse(&hex64).is_err());
        assert!(CaPin::parse("sha256:abcd").is_err());
    }

    #[test]
    fn node_labels_are_safe() {
        let a = node_label("Web_01.example.com");
        assert_eq!(a, "web-01-example-com");
        assert!(is_valid_node_id(&a));
        assert_eq!(node_label("---"), "node");
        assert_eq!(node_label(&"x".repeat(80)).len(), NODE_LABEL_MAX);
        assert!(is_valid_node_id(&node_label(&format!(
            "{}-y",
            "x".repeat(39)
        ))));
        assert!(!is_valid_node_id("Bad/Name"));
    }

    #[test]
    fn csr_names_the_node_and_its_ips() {
        let key = generate_key().unwrap();
        let ip: IpAddr = "198.18.0.11".parse().unwrap();
        let der = node_csr(&key, "host-1", &[ip]).unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let cn = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(cn, "host-1");
    }

    #[test]
    fn atomic_write_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        crate::confined::write_atomic(&p, b"secret", 0o600).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"secret");
    }
}
