//! The coordinator's CA and its files under `ROOT/coordinator/`:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the cluster CA (ECDSA P-256, 10 years) |
//! | `server.pem`, `server.key` | the coordinator's server certificate (`OU=coordinator`) |
//! | `admin.pem`, `admin.key` | the CLI's client certificate (`OU=admin`, 90 days, renewed by the coordinator) |
//! | `state.redb` | the state database ([`crate::state`]) |
//! | `serve.json` | the address `coordinator serve` listens on, while it runs |
//!
//! Keys are written 0600, atomically. `init` keeps an existing CA, and
//! re-issues the server certificate only when missing, issued by another CA,
//! or within 30 days of expiry. Admin certificates live months (90 days by
//! default) and every one is recorded in the state database so it can be
//! listed and revoked; the coordinator's own is re-issued by `init` and by
//! the running coordinator when it is missing, revoked, unrecorded, or
//! within 30 days of expiry ([`ensure_local_admin`]).

use seaport_shared::clock::now_unix;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use seaport_shared::confined;
use seaport_shared::pki::{self, CaPin, CertInfo, PkiError, Role};
use seaport_shared::wire::COORDINATOR_SERVER_NAME;

use crate::state::{self, AdminRecord, StateError, StateStore};

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
const SERVICE_CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 86_400);
const REISSUE_BEFORE: i64 = 30 * 86_400;
/// Default lifetime of an admin certificate.
pub const ADMIN_CERT_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Longest lifetime an admin certificate may be issued for.
pub const ADMIN_CERT_MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Name of the coordinator's own admin certificate.
pub const LOCAL_ADMIN_NAME: &str = "admin";

/// Errors of CA handling.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] confined::ConfinedError),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0} is this coordinator's own CA, and the site in etcd has another: initialise a new root for this site")]
    OtherSiteCa(String),
    #[error("no coordinator CA under {0}: run `seaport coordinator init` first")]
    NotInitialized(String),
    #[error("certificate request refused: {0}")]
    BadRequest(String),
}

/// Paths of the coordinator's files under a root.
#[derive(Debug, Clone)]
pub struct CoordinatorPaths {
    pub dir: PathBuf,
}

impl CoordinatorPaths {
    pub fn new(root: &Path) -> Self {
        CoordinatorPaths {
            dir: root.join("coordinator"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.dir.join("admin.pem")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn state_db(&self) -> PathBuf {
        self.dir.join("state.redb")
    }
    pub fn serve_info(&self) -> PathBuf {
        self.dir.join("serve.json")
    }
}

/// What `init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub created_ca: bool,
    /// The CA came from the site's shared store (another coordinator of
    /// the site made it).
    pub site_ca: bool,
    pub ca_pin: CaPin,
    pub dir: PathBuf,
}

/// The loaded CA, able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

fn serial_number(serial: u64) -> SerialNumber {
    // Minimal big-endian bytes; DER INTEGERs must not carry leading zeros.
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    SerialNumber::from_slice(&bytes[first..])
}

fn dn(role: Option<Role>, cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, pki::ORGANIZATION);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.ou());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates the coordinator's CA, certificates and state under `root`
/// (the state where it was recorded; redb when nothing was), keeping an
/// existing CA.
pub fn init(root: &Path) -> Result<InitReport, CaError> {
    init_with(root, None)
}

/// [`init`] with the state in `store` when given (recorded for the
/// coordinator and the CLI).
pub fn init_with(root: &Path, store: Option<state::Backend>) -> Result<InitReport, CaError> {
    let paths = CoordinatorPaths::new(root);
    pki::create_private_dir(&paths.dir)?;
    let created_ca = !(paths.ca_cert().exists() && paths.ca_key().exists());
    if created_ca {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(None, "seaport cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(serial_number(rand::random::<u64>() >> 1));
        let cert = params.self_signed(&key)?;
        confined::write_atomic(&paths.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
        confined::write_atomic(&paths.ca_cert(), cert.pem().as_bytes(), 0o644)?;
    }
    // A root that never recorded a shared store has used its CA for
    // nothing shared (a redb root with state cannot move to etcd).
    let own_ca_unused = matches!(state::backend(&paths.dir)?, state::Backend::Redb);
    let store = state::create(&paths.dir, store)?;
    // On a store several coordinators share, the site has one CA: the
    // first coordinator's; the others take it (only in place of a CA this
    // root made for nothing else, never over one it used on the site).
    let mut site_ca = false;
    let cert_pem = pki::read_text(&paths.ca_cert())?;
    let key_pem = pki::read_text(&paths.ca_key())?;
    if let Some(site) = store.offer_ca(&cert_pem, &key_pem)? {
        if site.cert_pem != cert_pem {
            if !own_ca_unused {
                return Err(CaError::OtherSiteCa(paths.ca_cert().display().to_string()));
            }
            confined::write_atomic(&paths.ca_key(), site.key_pem.as_bytes(), 0o600)?;
            confined::write_atomic(&paths.ca_cert(), site.cert_pem.as_bytes(), 0o644)?;
            site_ca = true;
        }
    }
    let ca = Ca::load(root)?;
    if created_ca || needs_reissue(&ca, &paths.server_cert()) {
        let key = KeyPair::generate()?;
        let serial = store.next_serial()?;
        let pem = ca.issue_server(&key, serial)?;
        confined::write_atomic(&paths.server_key(), key.serialize_pem().as_bytes(), 0o600)?;
        confined::write_atomic(&paths.server_cert(), pem.as_bytes(), 0o600)?;
    }
    ensure_local_admin(root, &*store, &ca)?;
    Ok(InitReport {
        created_ca: created_ca && !site_ca,
        site_ca,
        ca_pin: ca.pin()?,
        dir: paths.dir,
    })
}

/// The certificate at `cert_path`, if it is one this CA signed.
fn ours(ca: &Ca, cert_path: &Path) -> Option<CertInfo> {
    let pem = pki::read_text(cert_path).ok()?;
    let certs = pki::certs_from_pem(&pem, "").ok()?;
    let info = CertInfo::from_der(&certs[0]).ok()?;
    // Issued by this CA? Verify the signature chain with x509-parser.
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).ok()?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.cert_der).ok()?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .is_ok()
        .then_some(info)
}

fn needs_reissue(ca: &Ca, cert_path: &Path) -> bool {
    ours(ca, cert_path).is_none_or(|info| info.not_after - now_unix() < REISSUE_BEFORE)
}

/// Keeps the coordinator's own admin certificate (`ROOT/coordinator/
/// admin.pem`, what the CLI on this machine uses) usable: signed by this
/// CA, recorded in state, not revoked, with more than 30 days left and no
/// longer than the longest admin lifetime (older installs had 5 years).
/// Otherwise issues a new one (90 days, a new key) and records it. Returns
/// whether it issued one.
pub fn ensure_local_admin(root: &Path, store: &dyn StateStore, ca: &Ca) -> Result<bool, CaError> {
    let paths = CoordinatorPaths::new(root);
    let now = now_unix();
    let max = i64::try_from(ADMIN_CERT_MAX_TTL.as_secs()).unwrap_or(i64::MAX);
    if let Some(info) = ours(ca, &paths.admin_cert()) {
        let left = info.not_after - now;
        let recorded = store.admin(info.serial)?;
        let usable = recorded.is_some_and(|r| r.revoked_at.is_none());
        if usable && info.role == Role::Admin && left >= REISSUE_BEFORE && left <= max {
            return Ok(false);
        }
    }
    let key = KeyPair::generate()?;
    let serial = store.next_serial()?;
    let (pem, expires) = ca.issue_admin(&key, LOCAL_ADMIN_NAME, serial, ADMIN_CERT_TTL)?;
    store.add_admin(&AdminRecord {
        serial,
        name: LOCAL_ADMIN_NAME.to_string(),
        issued_at: now,
        expires_at: expires,
        revoked_at: None,
        local: true,
    })?;
    confined::write_atomic(&paths.admin_key(), key.serialize_pem().as_bytes(), 0o600)?;
    confined::write_atomic(&paths.admin_cert(), pem.as_bytes(), 0o600)?;
    Ok(true)
}

/// Whether `name` may name an admin certificate: 1 to 64 letters, digits,
/// `.`, `_`, `@` or `-`.
pub fn valid_admin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

impl Ca {
    /// Loads the CA from `ROOT/coordinator`.
    pub fn load(root: &Path) -> Result<Ca, CaError> {
        let paths = CoordinatorPaths::new(root);
        if !paths.ca_cert().exists() || !paths.ca_key().exists() {
            return Err(CaError::NotInitialized(paths.dir.display().to_string()));
        }
        let cert_pem = pki::read_text(&paths.ca_cert())?;
        let key_pem = pki::read_text(&paths.ca_key())?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert_der =
            pki::certs_from_pem(&cert_pem, &paths.ca_cert().display().to_string())?.remove(0);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            issuer,
            cert_der,
            cert_pem,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn pin(&self) -> Result<CaPin, CaError> {
        Ok(CaPin::of_cert(&self.cert_der)?)
    }

    fn issue_server(&self, key: &KeyPair, serial: u64) -> Result<String, CaError> {
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + SERVICE_CERT_LIFETIME;
        params.serial_number = Some(serial_number(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.distinguished_name = dn(Some(Role::Coordinator), COORDINATOR_SERVER_NAME);
        params.subject_alt_names = vec![SanType::DnsName(COORDINATOR_SERVER_NAME.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok(params.signed_by(key, &self.issuer)?.pem())
    }

    /// Signs an admin certificate (`OU=admin`, clientAuth) named `name` for
    /// `key`, valid for `lifetime`; returns the PEM and its expiry.
    pub fn issue_admin(
        &self,
        key: &impl PublicKeyData,
        name: &str,
        serial: u64,
        lifetime: Duration,
    ) -> Result<(String, i64), CaError> {
        if !valid_admin_name(name) {
            return Err(CaError::BadRequest(format!(
                "admin certificate name {name:?}: use 1 to 64 letters, digits, '.', '_', '@' or '-'"
            )));
        }
        if lifetime.is_zero() || lifetime > ADMIN_CERT_MAX_TTL {
            return Err(CaError::BadRequest(
                "an admin certificate lives between 1 second and 365 days".into(),
            ));
        }
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(60).min(lifetime / 10);
        params.not_after = now + lifetime;
        params.serial_number = Some(serial_number(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.distinguished_name = dn(Some(Role::Admin), name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(key, &self.issuer)?;
        Ok((cert.pem(), params.not_after.unix_timestamp()))
    }

    /// [`Ca::issue_admin`] for the key of a CSR (its names are ignored).
    pub fn issue_admin_for_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        serial: u64,
        lifetime: Duration,
    ) -> Result<(String, i64), CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadRequest(format!("unreadable or badly signed CSR: {e}")))?;
        self.issue_admin(&csr.public_key, name, serial, lifetime)
    }

    /// Signs a node certificate for the public key in `csr_der`. The role,
    /// lifetime and name are the coordinator's: the name must be `node_id`
    /// (the CSR's common name at enrollment, the certificate's name at
    /// renewal); only the key and the IP SANs come from the request.
    pub fn issue_node(
        &self,
        csr_der: &[u8],
        node_id: &str,
        serial: u64,
        lifetime: Duration,
    ) -> Result<(String, i64), CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadRequest(format!("unreadable or badly signed CSR: {e}")))?;
        let ips: Vec<IpAddr> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::IpAddress(ip) => Some(*ip),
                _ => None,
            })
            .take(64)
            .collect();
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        // Allow a little clock skew, without moving the renewal point much
        // for short lifetimes.
        let skew = (lifetime / 10).min(Duration::from_secs(60));
        params.not_before = now - skew;
        params.not_after = now + lifetime;
        params.serial_number = Some(serial_number(serial));
        params.distinguished_name = dn(Some(Role::Node), node_id);
        params.subject_alt_names = ips.into_iter().map(SanType::IpAddress).collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), params.not_after.unix_timestamp()))
    }

    /// The common name a CSR asks for (the node id at enrollment).
    pub fn csr_common_name(csr_der: &[u8]) -> Result<String, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadRequest(format!("unreadable or badly signed CSR: {e}")))?;
        match csr.params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(s)) => Ok(s.clone()),
            Some(rcgen::DnValue::PrintableString(p)) => Ok(p.as_str().to_string()),
            _ => Err(CaError::BadRequest(
                "CSR has no common name (node id)".into(),
            )),
        }
    }
}

/// The files a client with a given role uses to reach the coordinator.
#[derive(Debug)]
pub struct ClientIdentity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads the admin identity of the CLI.
pub fn admin_identity(root: &Path) -> Result<ClientIdentity, CaError> {
    let paths = CoordinatorPaths::new(root);
    if !paths.admin_cert().exists() {
        return Err(CaError::NotInitialized(paths.dir.display().to_string()));
    }
    load_identity(&paths.ca_cert(), &paths.admin_cert(), &paths.admin_key())
}

/// Loads the coordinator's server identity.
pub fn server_identity(root: &Path) -> Result<ClientIdentity, CaError> {
    let paths = CoordinatorPaths::new(root);
    if !paths.server_cert().exists() {
        return Err(CaError::NotInitialized(paths.dir.display().to_string()));
    }
    load_identity(&paths.ca_cert(), &paths.server_cert(), &paths.server_key())
}

fn load_identity(ca: &Path, cert: &Path, key: &Path) -> Result<ClientIdentity, CaError> {
    let ca_der = pki::certs_from_pem(&pki::read_text(ca)?, &ca.display().to_string())?.remove(0);
    let chain = pki::certs_from_pem(&pki::read_text(cert)?, &cert.display().to_string())?;
    let key = pki::key_from_pem(&pki::read_text(key)?, &key.display().to_string())?;
    Ok(ClientIdentity {
        ca: ca_der,
        chain,
        key,
    })
}
