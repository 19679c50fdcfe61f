//! Signed cluster images, in cosign's key-based signature layout.
//!
//! - **Keys**: ECDSA P-256. The private key file is cosign's
//!   `ENCRYPTED SIGSTORE PRIVATE KEY` PEM: a JSON envelope holding the
//!   PKCS#8 key encrypted with NaCl secretbox (XSalsa20-Poly1305) under a
//!   key derived from the passphrase with scrypt (N = 65536, r = 8, p = 1).
//!   The public key is a `PUBLIC KEY` PEM (X.509 SubjectPublicKeyInfo). A
//!   key's fingerprint is `sha256:` of its SubjectPublicKeyInfo DER.
//! - **Payload**: the simple signing JSON
//!   `{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":DIGEST},"type":"cosign container image signature"},"optional":null}`,
//!   signed with ECDSA P-256 over SHA-256, the signature ASN.1 DER.
//! - **Signature image**: an OCI image manifest whose layers are the
//!   payloads (media type [`MEDIA_TYPE_SIMPLE_SIGNING`]), one layer per
//!   signature, the base64 signature in the layer annotation
//!   [`ANNOTATION_SIGNATURE`]; in a registry it is tagged
//!   `sha256-<hex>.sig` ([`signature_tag`]) in the image's repository.
//!   Signing again appends a layer.
//! - **What is signed**: the digest a name points at: the manifest, or the
//!   index of a multi-platform image (whose entries name every platform's
//!   manifest by digest, so one signature covers them all).
//! - **Verification** ([`verify`], [`Policy::check`]): a signature counts
//!   when it verifies with a trusted key and its payload is a cosign
//!   signature naming exactly the digest being checked. The payload's
//!   `docker-reference` is shown, not checked (images move between
//!   registries and names), as cosign's specification says.
//!
//! In the local store a signature image is an `index.json` entry carrying
//! [`ANNOTATION_SIGNATURE_SUBJECT`] (no name), see [`stored`] and [`store`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use base64::Engine as _;
use seaport_shared::digest::Digest;
use serde::{Deserialize, Serialize};

use crate::oci::{Descriptor, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG};
use crate::store::{Store, StoreError};

pub use crate::oci::ANNOTATION_SIGNATURE_SUBJECT;

/// Media type of a signature payload layer.
pub const MEDIA_TYPE_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature of the payload.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation naming the fingerprint of the key that signed (a hint
/// for `inspect`: it is not covered by the signature).
pub const ANNOTATION_SIGNER: &str = "io.seaport.signature.key";
/// `critical.type` of a cosign image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// PEM label of an encrypted private key (cosign's).
pub const PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The label older cosign releases wrote; read, never written.
const OLD_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// PEM label of a public key.
pub const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";
/// scrypt cost of new keys (cosign's: N = 2^16, r = 8, p = 1).
const SCRYPT_LOG_N: u8 = 16;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// Largest signature payload read (a payload is a few hundred bytes).
const MAX_PAYLOAD: usize = 64 * 1024;
/// Most signatures read from one signature image.
const MAX_SIGNATURES: usize = 256;

/// Errors of keys, signing and signature images.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file is not usable.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The passphrase does not open the private key.
    #[error("{0}: wrong passphrase, or the key file is damaged")]
    Passphrase(PathBuf),
    /// A key pair would overwrite existing files.
    #[error("{0} exists; choose another name or remove it first")]
    Exists(PathBuf),
    /// The crypto library failed.
    #[error("{0}")]
    Crypto(String),
    /// A signature image is malformed.
    #[error("signature image {what}: {reason}")]
    Document {
        /// Which one.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a text or DER is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not PEM.
    #[error("not a PEM public key: {0}")]
    NotPem(String),
    /// A PEM block of another kind.
    #[error("a PEM block labelled {0:?}, not {PUBLIC_KEY_LABEL:?}")]
    Label(String),
    /// Not a P-256 SubjectPublicKeyInfo.
    #[error("not an ECDSA P-256 public key (SubjectPublicKeyInfo)")]
    NotP256,
}

/// One of a list of PEM keys is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}[{index}]: {source}")]
pub struct KeyListError {
    /// Where the list came from.
    pub what: String,
    /// The key's index in it.
    pub index: usize,
    /// What is wrong with it.
    pub source: KeyError,
}

/// A signature's payload does not parse.
#[derive(Debug, thiserror::Error)]
#[error("its payload does not parse: {0}")]
pub struct PayloadError(#[from] serde_json::Error);

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SigningError {
    let path = path.to_path_buf();
    move |source| SigningError::Io {
        action,
        path,
        source,
    }
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// SubjectPublicKeyInfo DER.
    der: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a `PUBLIC KEY` PEM block holding a P-256 key.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text.trim()).map_err(|e| KeyError::NotPem(e.to_string()))?;
        if block.tag() != PUBLIC_KEY_LABEL {
            return Err(KeyError::Label(block.tag().to_string()));
        }
        Self::from_der(block.contents())
    }

    /// A SubjectPublicKeyInfo DER holding a P-256 key.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        // A SEQUENCE (SubjectPublicKeyInfo), not a bare EC point, that the
        // verifier takes as a P-256 key.
        let spki = der.first() == Some(&0x30);
        if !spki
            || UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
                .parse()
                .is_err()
        {
            return Err(KeyError::NotP256);
        }
        Ok(PublicKey { der: der.to_vec() })
    }

    /// The key as a `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        encode_pem(PUBLIC_KEY_LABEL, &self.der)
    }

    /// `sha256:` of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> String {
        Digest::of(&self.der).to_string()
    }

    /// Whether `signature` (ASN.1 DER) is this key's ECDSA P-256 SHA-256
    /// signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.der)
            .verify(message, signature)
            .is_ok()
    }
}

fn encode_pem(label: &str, contents: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, contents),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// An ECDSA P-256 private key that signs images.
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key().fingerprint())
    }
}

/// The scrypt and secretbox envelope of a private key (cosign's format).
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

fn scrypt_key(
    passphrase: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<[u8; 32], SigningError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| SigningError::Crypto(format!("scrypt parameters: {e}")))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, salt, &params, &mut key)
        .map_err(|e| SigningError::Crypto(format!("scrypt: {e}")))?;
    Ok(key)
}

fn random<const N: usize>() -> Result<[u8; N], SigningError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| SigningError::Crypto("no randomness".into()))?;
    Ok(out)
}

/// Decrypts cosign's key envelope (JSON) with `passphrase`. `Err(None)`:
/// the passphrase does not open it.
fn open_envelope(json: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, Option<String>> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let envelope: Envelope = serde_json::from_slice(json)
        .map_err(|e| Some(format!("the encrypted key does not parse: {e}")))?;
    if envelope.kdf.name != "scrypt" || envelope.cipher.name != "nacl/secretbox" {
        return Err(Some(format!(
            "key derivation {:?} with cipher {:?} is not supported (scrypt with nacl/secretbox is)",
            envelope.kdf.name, envelope.cipher.name
        )));
    }
    let p = &envelope.kdf.params;
    // The parameter sets cosign and its key library write.
    if !matches!((p.n, p.r, p.p), (32768 | 65536 | 131072, 8, 1)) {
        return Err(Some(format!(
            "unsupported scrypt parameters N={} r={} p={}",
            p.n, p.r, p.p
        )));
    }
    let nonce: [u8; 24] = envelope
        .cipher
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| Some("the nonce is not 24 bytes".to_string()))?;
    let log_n = p.n.trailing_zeros() as u8;
    let key = scrypt_key(passphrase, &envelope.kdf.salt, log_n, p.r, p.p)
        .map_err(|e| Some(e.to_string()))?;
    crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), envelope.ciphertext.as_slice())
        .map_err(|_| None)
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SigningError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| SigningError::Crypto("could not generate an ECDSA P-256 key".into()))?;
        Ok(SigningKey { pair })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        use aws_lc_rs::encoding::AsDer;
        let der = self
            .pair
            .public_key()
            .as_der()
            .expect("a generated P-256 key encodes");
        PublicKey {
            der: der.as_ref().to_vec(),
        }
    }

    /// The ECDSA P-256 SHA-256 signature of `message`, ASN.1 DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SigningError::Crypto("signing failed".into()))
    }

    /// The private key as cosign's encrypted PEM, sealed with `passphrase`.
    pub fn to_encrypted_pem(&self, passphrase: &[u8]) -> Result<String, SigningError> {
        use crypto_secretbox::aead::{Aead, KeyInit};
        let pkcs8 = self
            .pair
            .to_pkcs8v1()
            .map_err(|_| SigningError::Crypto("could not encode the private key".into()))?;
        let salt = random::<32>()?;
        let nonce = random::<24>()?;
        let key = scrypt_key(passphrase, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
        let ciphertext = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), pkcs8.as_ref())
            .map_err(|_| SigningError::Crypto("could not encrypt the private key".into()))?;
        let envelope = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 1 << SCRYPT_LOG_N,
                    r: SCRYPT_R,
                    p: SCRYPT_P,
                },
                salt: salt.to_vec(),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: nonce.to_vec(),
            },
            ciphertext,
        };
        let json = serde_json::to_vec(&envelope).expect("the envelope serializes");
        Ok(encode_pem(PRIVATE_KEY_LABEL, &json))
    }

    /// Opens cosign's encrypted private key PEM `text` (from `path`, for
    /// messages) with `passphrase`.
    pub fn from_encrypted_pem(
        path: &Path,
        text: &str,
        passphrase: &[u8],
    ) -> Result<Self, SigningError> {
        let bad = |reason: String| SigningError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let block = pem::parse(text.trim()).map_err(|e| bad(format!("not a PEM file: {e}")))?;
        if block.tag() != PRIVATE_KEY_LABEL && block.tag() != OLD_PRIVATE_KEY_LABEL {
            return Err(bad(format!(
                "a PEM block labelled {:?}, not an encrypted signing key ({PRIVATE_KEY_LABEL:?}, made by `seaport key generate` or `cosign generate-key-pair`)",
                block.tag()
            )));
        }
        let pkcs8 = open_envelope(block.contents(), passphrase).map_err(|e| match e {
            None => SigningError::Passphrase(path.to_path_buf()),
            Some(reason) => bad(reason),
        })?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
            .map_err(|e| bad(format!("not an ECDSA P-256 key: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// Reads and opens the private key file `path`.
    pub fn load(path: &Path, passphrase: &[u8]) -> Result<Self, SigningError> {
        let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
        Self::from_encrypted_pem(path, &text, passphrase)
    }
}

/// The files [`write_key_pair`] writes for `name`: `NAME.key`, `NAME.pub`.
pub fn key_pair_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut p = name.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    (with(".key"), with(".pub"))
}

/// Writes `key` as `NAME.key` (encrypted with `passphrase`, mode 0600) and
/// its public key as `NAME.pub` (0644), refusing to replace either.
pub fn write_key_pair(
    name: &Path,
    key: &SigningKey,
    passphrase: &[u8],
) -> Result<(PathBuf, PathBuf), SigningError> {
    // A bare file name is in the working directory (the atomic write syncs
    // the parent directory, which must be named).
    let name = match name.parent() {
        Some(p) if !p.as_os_str().is_empty() => name.to_path_buf(),
        _ => Path::new(".").join(name),
    };
    let (private, public) = key_pair_paths(&name);
    for p in [&private, &public] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(SigningError::Exists(p.clone()));
        }
    }
    let sealed = key.to_encrypted_pem(passphrase)?;
    let write = |path: &Path, bytes: &[u8], mode| {
        seaport_shared::confined::write_atomic(path, bytes, mode).map_err(|e| SigningError::Key {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    write(&private, sealed.as_bytes(), 0o600)?;
    write(&public, key.public_key().to_pem().as_bytes(), 0o644)?;
    Ok((private, public))
}

/// The keys signatures are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `*.pub` and `*.pem` file in `dir`, each a `PUBLIC KEY` PEM (one
    /// key per file). An unreadable or malformed file is an error naming it.
    pub fn load_dir(dir: &Path) -> Result<Self, SigningError> {
        let mut out = TrustedKeys::new();
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let path = entry.map_err(io_err("listing", dir))?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if (ext == "pub" || ext == "pem") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            let key = PublicKey::from_pem(&text).map_err(|e| SigningError::Key {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            out.add(key);
        }
        if out.is_empty() {
            return Err(SigningError::Key {
                path: dir.to_path_buf(),
                reason: "holds no public key (*.pub or *.pem files)".into(),
            });
        }
        Ok(out)
    }

    /// Keys from PEM texts; `what` names their source in errors.
    pub fn from_pems<'a>(
        what: &str,
        pems: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, KeyListError> {
        let mut out = TrustedKeys::new();
        for (index, text) in pems.into_iter().enumerate() {
            out.add(PublicKey::from_pem(text).map_err(|source| KeyListError {
                what: what.to_string(),
                index,
                source,
            })?);
        }
        Ok(out)
    }

    /// Adds a key (once).
    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: &TrustedKeys) {
        for k in &other.keys {
            self.add(k.clone());
        }
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Their PEM texts.
    pub fn pems(&self) -> Vec<String> {
        self.keys.iter().map(PublicKey::to_pem).collect()
    }

    /// Their fingerprints.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(PublicKey::fingerprint).collect()
    }
}

/// The simple signing payload for `digest` in repository `docker_reference`.
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    // Field order and spacing as cosign writes it.
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    }))
    .expect("the payload serializes")
}

/// A simple signing payload as read.
#[derive(Clone, Debug, Deserialize)]
pub struct Payload {
    /// What it says.
    pub critical: Critical,
}

/// The `critical` part of a payload.
#[derive(Clone, Debug, Deserialize)]
pub struct Critical {
    /// The repository it was signed for.
    pub identity: Identity,
    /// The digest it signs.
    pub image: SignedImage,
    /// `cosign container image signature`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Clone, Debug, Deserialize)]
pub struct Identity {
    /// The repository.
    #[serde(rename = "docker-reference", default)]
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Clone, Debug, Deserialize)]
pub struct SignedImage {
    /// `sha256:...`.
    #[serde(rename = "docker-manifest-digest", alias = "Docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// The registry tag of the signature image of `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The digest a signature tag stands for (`sha256-<hex>.sig`).
pub fn tag_subject(tag: &str) -> Option<Digest> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    Digest::from_hex(hex).ok()
}

/// One signature: a payload layer of a signature image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The layer's descriptor (digest of the payload, annotations).
    pub descriptor: Descriptor,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Signature {
    /// The base64 signature of the layer annotation.
    pub fn base64(&self) -> Option<&str> {
        self.descriptor
            .annotations
            .get(ANNOTATION_SIGNATURE)
            .map(String::as_str)
    }

    /// The fingerprint of the key the signer says it used (not verified).
    pub fn claimed_signer(&self) -> Option<&str> {
        self.descriptor
            .annotations
            .get(ANNOTATION_SIGNER)
            .map(String::as_str)
    }

    /// The payload parsed, if it parses.
    pub fn parsed(&self) -> Result<Payload, PayloadError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// A signature image: its manifest, config and payload layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// The config's bytes.
    pub config_bytes: Vec<u8>,
    /// The signatures, in layer order.
    pub signatures: Vec<Signature>,
}

impl Signatures {
    /// A signature image of `signatures` (manifest and config built the way
    /// cosign builds them: OCI manifest and config media types, one layer
    /// per signature, a config listing the payloads as its diff ids).
    pub fn from_signatures(signatures: Vec<Signature>) -> Self {
        let diff_ids: Vec<String> = signatures
            .iter()
            .map(|s| s.descriptor.digest.to_string())
            .collect();
        let history: Vec<serde_json::Value> = signatures
            .iter()
            .map(|_| serde_json::json!({"created": "0001-01-01T00:00:00Z"}))
            .collect();
        let config_bytes = serde_json::to_vec(&serde_json::json!({
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": history,
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }))
        .expect("the config serializes");
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(crate::oci::MEDIA_TYPE_MANIFEST.into()),
            config: Descriptor {
                media_type: MEDIA_TYPE_CONFIG.into(),
                digest: Digest::of(&config_bytes),
                size: config_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: signatures.iter().map(|s| s.descriptor.clone()).collect(),
            annotations: BTreeMap::new(),
        };
        Signatures {
            manifest_bytes: serde_json::to_vec(&manifest).expect("the manifest serializes"),
            config_bytes,
            signatures,
        }
    }

    /// Reads a signature image from its manifest and a way to read blobs
    /// by digest (each checked against its digest). Layers that are not
    /// simple signing payloads are skipped.
    pub fn parse(
        what: &str,
        manifest_bytes: &[u8],
        mut blob: impl FnMut(&Digest) -> Option<Vec<u8>>,
    ) -> Result<Self, SigningError> {
        let bad = |reason: String| SigningError::Document {
            what: what.to_string(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| bad(format!("the manifest does not parse: {e}")))?;
        if manifest.layers.len() > MAX_SIGNATURES {
            return Err(bad(format!(
                "{} layers, more than the {MAX_SIGNATURES} read",
                manifest.layers.len()
            )));
        }
        let config_bytes = blob(&manifest.config.digest)
            .filter(|b| Digest::of(b) == manifest.config.digest)
            .ok_or_else(|| bad(format!("config {} is missing", manifest.config.digest)))?;
        let mut signatures = Vec::new();
        for layer in &manifest.layers {
            if layer.media_type != MEDIA_TYPE_SIMPLE_SIGNING {
                continue;
            }
            if layer.size > MAX_PAYLOAD as u64 {
                return Err(bad(format!(
                    "payload {} is {} bytes, more than {MAX_PAYLOAD}",
                    layer.digest, layer.size
                )));
            }
            let payload = blob(&layer.digest)
                .ok_or_else(|| bad(format!("payload {} is missing", layer.digest)))?;
            if Digest::of(&payload) != layer.digest {
                return Err(bad(format!(
                    "payload {} does not match its digest",
                    layer.digest
                )));
            }
            signatures.push(Signature {
                descriptor: layer.clone(),
                payload,
            });
        }
        Ok(Signatures {
            manifest_bytes: manifest_bytes.to_vec(),
            config_bytes,
            signatures,
        })
    }

    /// The manifest's digest.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.manifest_bytes)
    }

    /// The blobs besides the manifest: the config, then the payloads.
    pub fn blobs(&self) -> Vec<&[u8]> {
        std::iter::once(self.config_bytes.as_slice())
            .chain(self.signatures.iter().map(|s| s.payload.as_slice()))
            .collect()
    }

    /// These signatures and those of `other` not already here (the same
    /// payload with the same signature), in one image. `self` is returned
    /// unchanged, bytes and all, when `other` adds nothing.
    pub fn merged(&self, other: &Signatures) -> Signatures {
        let mut all = self.signatures.clone();
        let mut added = false;
        for s in &other.signatures {
            let dup = all
                .iter()
                .any(|a| a.descriptor.digest == s.descriptor.digest && a.base64() == s.base64());
            if !dup {
                all.push(s.clone());
                added = true;
            }
        }
        if added {
            Signatures::from_signatures(all)
        } else {
            self.clone()
        }
    }
}

/// Signs `subject` (in repository `docker_reference`) with `key`: one new
/// signature, appended to `existing` when given.
pub fn sign(
    key: &SigningKey,
    docker_reference: &str,
    subject: &Digest,
    existing: Option<&Signatures>,
) -> Result<Signatures, SigningError> {
    let payload = payload(docker_reference, subject);
    let sig = key.sign(&payload)?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        ANNOTATION_SIGNATURE.to_string(),
        base64::engine::general_purpose::STANDARD.encode(&sig),
    );
    annotations.insert(
        ANNOTATION_SIGNER.to_string(),
        key.public_key().fingerprint(),
    );
    let new = Signatures::from_signatures(vec![Signature {
        descriptor: Descriptor {
            media_type: MEDIA_TYPE_SIMPLE_SIGNING.into(),
            digest: Digest::of(&payload),
            size: payload.len() as u64,
            annotations,
            platform: None,
        },
        payload,
    }]);
    Ok(match existing {
        Some(e) => e.merged(&new),
        None => new,
    })
}

/// What checking an image's signatures found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A signature verifies with a trusted key and names the image.
    Verified {
        /// The key's fingerprint.
        key: String,
        /// The payload's `docker-reference`.
        docker_reference: String,
    },
    /// The image carries no signature.
    Unsigned,
    /// It carries signatures, none of which is good: why, per signature.
    Invalid(Vec<String>),
}

/// Checks `signatures` of the image whose digest is `subject` against
/// `keys`.
pub fn verify(subject: &Digest, signatures: Option<&Signatures>, keys: &TrustedKeys) -> Verdict {
    let Some(sigs) = signatures.filter(|s| !s.signatures.is_empty()) else {
        return Verdict::Unsigned;
    };
    let mut reasons = Vec::new();
    for (i, s) in sigs.signatures.iter().enumerate() {
        let n = i + 1;
        let Some(raw) = s
            .base64()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        else {
            reasons.push(format!(
                "signature {n} has no readable {ANNOTATION_SIGNATURE} annotation"
            ));
            continue;
        };
        let Some(key) = keys.keys().iter().find(|k| k.verifies(&s.payload, &raw)) else {
            let claimed = s
                .claimed_signer()
                .map(|c| format!(" (it says key {c} made it)"))
                .unwrap_or_default();
            reasons.push(format!(
                "signature {n} does not verify with any trusted key{claimed}"
            ));
            continue;
        };
        let payload = match s.parsed() {
            Ok(p) => p,
            Err(e) => {
                reasons.push(format!("signature {n} (key {}): {e}", key.fingerprint()));
                continue;
            }
        };
        if payload.critical.kind != SIGNATURE_TYPE {
            reasons.push(format!(
                "signature {n} (key {}) is of type {:?}, not {SIGNATURE_TYPE:?}",
                key.fingerprint(),
                payload.critical.kind
            ));
            continue;
        }
        if payload.critical.image.docker_manifest_digest != subject.to_string() {
            reasons.push(format!(
                "signature {n} (key {}) signs {}, not this image's digest: the image was changed after it was signed",
                key.fingerprint(),
                payload.critical.image.docker_manifest_digest
            ));
            continue;
        }
        return Verdict::Verified {
            key: key.fingerprint(),
            docker_reference: payload.critical.identity.docker_reference,
        };
    }
    Verdict::Invalid(reasons)
}

/// One signature as `seaport inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureInfo {
    /// The digest its payload signs.
    pub signs: String,
    /// The fingerprint of the key that made it: the trusted key it verifies
    /// with, else the one it names (not verified).
    pub key: Option<String>,
    /// Whether it verifies with a trusted key and signs this image.
    pub verified: bool,
    /// The repository the payload names.
    #[serde(rename = "dockerReference")]
    pub docker_reference: Option<String>,
    /// Why it is not verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Describes each signature of the image `subject` against `keys`.
pub fn describe(subject: &Digest, sigs: &Signatures, keys: &TrustedKeys) -> Vec<SignatureInfo> {
    sigs.signatures
        .iter()
        .map(|s| {
            let payload = s.parsed().ok();
            let signs = payload
                .as_ref()
                .map(|p| p.critical.image.docker_manifest_digest.clone())
                .unwrap_or_default();
            let raw = s
                .base64()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            let by = keys.keys().iter().find(|k| k.verifies(&s.payload, &raw));
            let problem = match (by, &payload) {
                (None, _) if keys.is_empty() => {
                    Some("not checked: no trusted keys given (--trusted-keys DIR)".to_string())
                }
                (None, _) => Some("does not verify with any trusted key".to_string()),
                (Some(_), None) => Some("its payload does not parse".to_string()),
                (Some(_), Some(p)) if p.critical.kind != SIGNATURE_TYPE => {
                    Some(format!("its type is {:?}", p.critical.kind))
                }
                (Some(_), Some(_)) if signs != subject.to_string() => {
                    Some("it signs another digest".to_string())
                }
                (Some(_), Some(_)) => None,
            };
            SignatureInfo {
                signs,
                key: by
                    .map(PublicKey::fingerprint)
                    .or_else(|| s.claimed_signer().map(str::to_string)),
                verified: problem.is_none(),
                docker_reference: payload.map(|p| p.critical.identity.docker_reference),
                problem,
            }
        })
        .collect()
}

/// Which images are accepted: signed by one of `keys`, and whether an
/// unsigned image is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The trusted keys.
    pub keys: TrustedKeys,
    /// Refuse images without a good signature.
    pub require_signed: bool,
}

/// An image a [`Policy`] accepts, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// No keys and nothing required: signatures are not checked.
    NotChecked,
    /// Unsigned, and signatures are not required.
    Unsigned,
    /// Signed by this trusted key.
    Signed {
        /// The key's fingerprint.
        key: String,
    },
}

impl std::fmt::Display for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepted::NotChecked => f.write_str("signatures not checked (no trusted keys)"),
            Accepted::Unsigned => f.write_str("unsigned, accepted (signatures are not required)"),
            Accepted::Signed { key } => write!(f, "signed by trusted key {key}"),
        }
    }
}

/// An image a [`Policy`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("image {image} ({digest}) is refused: {reason}; trusted keys tried: {tried}")]
pub struct Refused {
    /// The image's name.
    pub image: String,
    /// The digest checked.
    pub digest: Digest,
    /// Why.
    pub reason: String,
    /// The fingerprints of the trusted keys, comma-separated (`none`).
    pub tried: String,
}

impl Policy {
    /// Whether it checks nothing.
    pub fn is_off(&self) -> bool {
        self.keys.is_empty() && !self.require_signed
    }

    /// This policy and `other` together: every key of both, signatures
    /// required when either requires them.
    pub fn union(&self, other: &Policy) -> Policy {
        let mut keys = self.keys.clone();
        keys.extend(&other.keys);
        Policy {
            keys,
            require_signed: self.require_signed || other.require_signed,
        }
    }

    /// Checks the image `image` whose digest is `subject`. An image with
    /// signatures none of which is good is refused whether or not
    /// signatures are required; an unsigned one only when they are.
    pub fn check(
        &self,
        image: &str,
        subject: &Digest,
        signatures: Option<&Signatures>,
    ) -> Result<Accepted, Refused> {
        if self.is_off() {
            return Ok(Accepted::NotChecked);
        }
        let refused = |reason: String| Refused {
            image: image.to_string(),
            digest: *subject,
            reason,
            tried: if self.keys.is_empty() {
                "none".into()
            } else {
                self.keys.fingerprints().join(", ")
            },
        };
        match verify(subject, signatures, &self.keys) {
            Verdict::Verified { key, .. } => Ok(Accepted::Signed { key }),
            Verdict::Unsigned if self.require_signed => Err(refused(
                "it carries no signature and signed images are required".into(),
            )),
            Verdict::Unsigned => Ok(Accepted::Unsigned),
            Verdict::Invalid(reasons) => Err(refused(reasons.join("; "))),
        }
    }
}

/// Finds the entry of `index` holding the signatures of `subject`: by the
/// [`ANNOTATION_SIGNATURE_SUBJECT`] annotation, or by a name whose tag is
/// `sha256-<hex>.sig` (as skopeo and cosign name them in layouts).
pub fn signature_entry<'a>(index: &'a Index, subject: &Digest) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        d.annotations
            .get(ANNOTATION_SIGNATURE_SUBJECT)
            .is_some_and(|s| *s == subject.to_string())
            || d.annotations
                .get(ANNOTATION_REF_NAME)
                .and_then(|n| n.rsplit(':').next())
                .and_then(tag_subject)
                .is_some_and(|d| d == *subject)
    })
}

/// The subject of an index entry that holds signatures, if it is one.
pub fn entry_subject(desc: &Descriptor) -> Option<Digest> {
    if let Some(s) = desc.annotations.get(ANNOTATION_SIGNATURE_SUBJECT) {
        return s.parse().ok();
    }
    desc.annotations
        .get(ANNOTATION_REF_NAME)
        .and_then(|n| n.rsplit(':').next())
        .and_then(tag_subject)
}

/// Reads the signatures of `subject` from an OCI image layout directory
/// (`index.json`, `blobs/sha256/`), if it holds any.
pub fn from_layout(layout: &Path, subject: &Digest) -> Result<Option<Signatures>, SigningError> {
    let index_path = layout.join("index.json");
    let bytes = fs::read(&index_path).map_err(io_err("reading", &index_path))?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| SigningError::Document {
        what: index_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let Some(entry) = signature_entry(&index, subject) else {
        return Ok(None);
    };
    let blobs = layout.join("blobs").join("sha256");
    let read = |d: &Digest| fs::read(blobs.join(d.hex())).ok();
    let manifest = read(&entry.digest)
        .filter(|b| Digest::of(b) == entry.digest)
        .ok_or_else(|| SigningError::Document {
            what: entry.digest.to_string(),
            reason: format!("its manifest is missing from {}", layout.display()),
        })?;
    Signatures::parse(&entry.digest.to_string(), &manifest, read).map(Some)
}

/// The signatures stored for `subject` in `store`, if any.
pub fn stored(store: &Store, subject: &Digest) -> Result<Option<Signatures>, SigningError> {
    let Some(entry) = store.signature_entry(subject)? else {
        return Ok(None);
    };
    let manifest = store.read_blob(&entry.digest, "manifest")?;
    Signatures::parse(&entry.digest.to_string(), &manifest, |d| {
        store.read_blob(d, "signature blob").ok()
    })
    .map(Some)
}

/// Stores `signatures` as those of `subject`, merged with what the store
/// holds for it already. Returns what is stored now.
pub fn store(
    store: &Store,
    subject: &Digest,
    signatures: &Signatures,
) -> Result<Signatures, SigningError> {
    let _guard = store.write_guard()?;
    let merged = match stored(store, subject)? {
        Some(existing) => existing.merged(signatures),
        None => signatures.clone(),
    };
    for blob in merged.blobs() {
        store.put_blob(blob)?;
    }
    let digest = store.put_blob(&merged.manifest_bytes)?;
    store.set_signature_entry(subject, &digest)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Digest {
        Digest::of(b"a manifest")
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_names_its_digest() {
        let key = SigningKey::generate().unwrap();
        let sigs = sign(&key, "docker.io/library/hello", &subject(), None).unwrap();
        let mut keys = TrustedKeys::new();
        keys.add(key.public_key());
        assert_eq!(
            verify(&subject(), Some(&sigs), &keys),
            Verdict::Verified {
                key: key.public_key().fingerprint(),
                docker_reference: "docker.io/library/hello".into()
            }
        );
        // The payload is cosign's, byte for byte.
        assert_eq!(
            String::from_utf8(sigs.signatures[0].payload.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"docker.io/library/hello"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
                subject()
            )
        );
        let manifest: Manifest = serde_json::from_slice(&sigs.manifest_bytes).unwrap();
        assert_eq!(manifest.layers[0].media_type, MEDIA_TYPE_SIMPLE_SIGNING);
        assert_eq!(manifest.config.media_type, MEDIA_TYPE_CONFIG);
        assert_eq!(
            manifest.media_type.as_deref(),
            Some(crate::oci::MEDIA_TYPE_MANIFEST)
        );
    }

    #[test]
    fn another_digest_another_key_or_a_changed_payload_is_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let sigs = sign(&key, "r/hello", &subject(), None).unwrap();
        let mut keys = TrustedKeys::new();
        keys.add(key.public_key());
        // The signature moved to another image (a changed manifest).
        let moved = Digest::of(b"a changed manifest");
        let Verdict::Invalid(r) = verify(&moved, Some(&sigs), &keys) else {
            panic!("accepted a signature of another digest")
        };
        assert!(r[0].contains("changed after it was signed"), "{r:?}");
        // Not a trusted key.
        let mut others = TrustedKeys::new();
        others.add(other.public_key());
        let Verdict::Invalid(r) = verify(&subject(), Some(&sigs), &others) else {
            panic!("accepted an untrusted key")
        };
        assert!(
            r[0].contains("does not verify with any trusted key"),
            "{r:?}"
        );
        // A payload edited to name another digest no longer verifies.
        let mut forged = sigs.clone();
        forged.signatures[0].payload = payload("r/hello", &moved);
        let Verdict::Invalid(r) = verify(&moved, Some(&forged), &keys) else {
            panic!("accepted an edited payload")
        };
        assert!(r[0].contains("does not verify"), "{r:?}");
        assert_eq!(verify(&subject(), None, &keys), Verdict::Unsigned);
    }

    #[test]
    fn signatures_accumulate_once_each_and_a_policy_takes_any_trusted_one() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        let one = sign(&a, "r/x", &subject(), None).unwrap();
        let two = sign(&b, "r/x", &subject(), Some(&one)).unwrap();
        assert_eq!(two.signatures.len(), 2);
        assert_eq!(
            two.merged(&one),
            two,
            "a signature already there is not added"
        );
        // Rotation: only b trusted, still verified (by b).
        let mut only_b = TrustedKeys::new();
        only_b.add(b.public_key());
        let policy = Policy {
            keys: only_b,
            require_signed: true,
        };
        assert_eq!(
            policy.check("x", &subject(), Some(&two)),
            Ok(Accepted::Signed {
                key: b.public_key().fingerprint()
            })
        );
        let err = policy.check("x:v1", &subject(), None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("x:v1")
                && text.contains(&subject().to_string())
                && text.contains(&b.public_key().fingerprint())
                && text.contains("no signature"),
            "{text}"
        );
        let lax = Policy {
            require_signed: false,
            ..policy.clone()
        };
        assert_eq!(lax.check("x", &subject(), None), Ok(Accepted::Unsigned));
        assert!(Policy::default().is_off());
    }

    #[test]
    fn the_private_key_opens_only_with_its_passphrase_and_signs_the_same() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert!(!pem.contains('\r'));
        let path = Path::new("k.key");
        let back = SigningKey::from_encrypted_pem(path, &pem, b"correct horse").unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let err = SigningKey::from_encrypted_pem(path, &pem, b"wrong").unwrap_err();
        assert!(matches!(err, SigningError::Passphrase(_)), "{err}");
        let err = SigningKey::from_encrypted_pem(path, &key.public_key().to_pem(), b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.key") && err.contains("PUBLIC KEY"), "{err}");
        // The public key PEM reads back; garbage is named.
        let public = PublicKey::from_pem(&key.public_key().to_pem()).unwrap();
        assert_eq!(public, key.public_key());
        assert!(public.fingerprint().starts_with("sha256:"));
        assert!(PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
    }

    #[test]
    fn key_files_have_their_modes_and_are_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (private, public) = write_key_pair(&dir.path().join("site"), &key, b"pw").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&private), 0o600);
        assert_eq!(mode(&public), 0o644);
        assert!(matches!(
            write_key_pair(&dir.path().join("site"), &key, b"pw"),
            Err(SigningError::Exists(_))
        ));
        let keys = TrustedKeys::load_dir(dir.path()).unwrap();
        assert_eq!(keys.fingerprints(), vec![key.public_key().fingerprint()]);
        fs::write(dir.path().join("bad.pub"), "not a key").unwrap();
        let err = TrustedKeys::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.pub"), "{err}");
    }

    #[test]
    fn signatures_are_stored_merged_and_found_by_subject() {
        let root = tempfile::tempdir().unwrap();
        let st = Store::open(root.path()).unwrap();
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        assert_eq!(stored(&st, &subject()).unwrap(), None);
        store(&st, &subject(), &sign(&a, "r/x", &subject(), None).unwrap()).unwrap();
        let both = store(&st, &subject(), &sign(&b, "r/x", &subject(), None).unwrap()).unwrap();
        assert_eq!(both.signatures.len(), 2);
        assert_eq!(stored(&st, &subject()).unwrap().as_ref(), Some(&both));
        // A signature entry is no image name.
        assert!(st.list().unwrap().is_empty());
        // Nothing names the subject: gc drops its signatures.
        st.gc().unwrap();
        assert_eq!(stored(&st, &subject()).unwrap(), None);
        assert!(!st.has_blob(&both.digest()));
    }
}
