//! The local registry's TLS certificate: made once per cluster (a CA and a
//! server certificate it signs, for the registry's domain and the extra
//! names a Clusterfile asks for), or given, then checked before any host
//! sees it: the key matches, the chain reaches the CA, the certificate
//! names the domain and is valid now.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::{ServerName, UnixTime};

use crate::pki::{self, PkiError};

/// How long a generated CA and server certificate are valid (sealer's are
/// valid for a hundred years; ten is enough for a cluster and within what
/// TLS clients accept).
pub const LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// PEM texts of a registry's TLS: the CA hosts trust, the server's
/// certificate (and any intermediates), its key.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryCert {
    /// The CA every host trusts.
    pub ca: String,
    /// The server certificate, then any intermediates.
    pub certificate: String,
    /// The server's private key.
    pub key: String,
}

impl std::fmt::Debug for RegistryCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCert")
            .field("ca", &self.ca)
            .field("certificate", &self.certificate)
            .field("key", &"<secret>")
            .finish()
    }
}

/// Why a registry certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryCertError {
    /// A PEM text holds no certificate or key.
    #[error(transparent)]
    Pem(#[from] PkiError),
    /// The key is not the certificate's.
    #[error("the key does not belong to the certificate")]
    KeyMismatch,
    /// The CA cannot be a trust anchor.
    #[error("the CA cannot be used: {0}")]
    BadCa(String),
    /// The certificate does not verify for the domain now.
    #[error("the certificate is not valid for {domain}: {reason}")]
    Invalid {
        /// The registry's domain.
        domain: String,
        /// What is wrong (expired, another name, another CA...).
        reason: String,
    },
    /// The domain is not a DNS name or IP.
    #[error("{0:?} is not a domain name or IP address")]
    BadDomain(String),
}

/// A new CA and a server certificate it signs for `domain` plus `dns_names`
/// and `ips`, valid from an hour ago for [`LIFETIME`].
pub fn generate(
    domain: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<RegistryCert, RegistryCertError> {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - Duration::from_secs(3600);
    let not_after = now + LIFETIME;

    let ca_key = pki::generate_key()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("seaport registry CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(PkiError::from)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = pki::generate_key()?;
    let mut server = CertificateParams::default();
    server.distinguished_name = name(domain);
    let mut sans = vec![san(domain)?];
    for n in dns_names {
        sans.push(san(n)?);
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    sans.dedup();
    server.subject_alt_names = sans;
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let cert = server.signed_by(&key, &issuer).map_err(PkiError::from)?;
    Ok(RegistryCert {
        ca: ca_cert.pem(),
        certificate: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, pki::ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

fn san(n: &str) -> Result<SanType, RegistryCertError> {
    if let Ok(ip) = n.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    n.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| RegistryCertError::BadDomain(n.to_string()))
}

/// Checks that `c` can serve the registry at `domain` at `now`: the key is
/// the certificate's, and the certificate chains to the CA, names
/// `domain` and is within its validity.
pub fn check(c: &RegistryCert, domain: &str, now: SystemTime) -> Result<(), RegistryCertError> {
    let ca = pki::certs_from_pem(&c.ca, "the CA")?;
    let chain = pki::certs_from_pem(&c.certificate, "the certificate")?;
    let key = pki::key_from_pem(&c.key, "the key")?;
    let provider = crate::tls::provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|_| RegistryCertError::KeyMismatch)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in ca {
        roots
            .add(der)
            .map_err(|e| RegistryCertError::BadCa(e.to_string()))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| RegistryCertError::BadCa(e.to_string()))?;
    let server = ServerName::try_from(domain.to_string())
        .map_err(|_| RegistryCertError::BadDomain(domain.to_string()))?;
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &server,
            &[],
            UnixTime::since_unix_epoch(since),
        )
        .map_err(|e| RegistryCertError::Invalid {
            domain: domain.to_string(),
            reason: reason(&e),
        })?;
    Ok(())
}

fn reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "it has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet".into()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "it names other hosts".into(),
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the CA did not sign it".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_serves_the_domain_and_the_extra_names_only() {
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let c = generate("sea.hub", &["reg.example".into()], &[ip]).unwrap();
        let now = SystemTime::now();
        check(&c, "sea.hub", now).unwrap();
        check(&c, "reg.example", now).unwrap();
        check(&c, "198.18.0.9", now).unwrap();
        let e = check(&c, "other.hub", now).unwrap_err().to_string();
        assert!(
            e.contains("not valid for other.hub") && e.contains("other hosts"),
            "{e}"
        );
        // Still valid in nine years, no longer in eleven.
        let year = Duration::from_secs(365 * 24 * 3600);
        check(&c, "sea.hub", now + 9 * year).unwrap();
        let e = check(&c, "sea.hub", now + 11 * year)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        assert!(c.key.contains("PRIVATE KEY"));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn another_key_or_another_ca_is_refused() {
        let a = generate("sea.hub", &[], &[]).unwrap();
        let b = generate("sea.hub", &[], &[]).unwrap();
        let now = SystemTime::now();
        let wrong_key = RegistryCert {
            key: b.key.clone(),
            ..a.clone()
        };
        assert!(matches!(
            check(&wrong_key, "sea.hub", now),
            Err(RegistryCertError::KeyMismatch)
        ));
        let wrong_ca = RegistryCert {
            ca: b.ca.clone(),
            ..a.clone()
        };
        let e = check(&wrong_ca, "sea.hub", now).unwrap_err().to_string();
        assert!(e.contains("the CA did not sign it"), "{e}");
        let no_cert = RegistryCert {
            certificate: "junk".into(),
            ..a
        };
        assert!(matches!(
            check(&no_cert, "sea.hub", now),
            Err(RegistryCertError::Pem(_))
        ));
    }
}
