//! kubeadm's certificate hand-over between masters (`init --upload-certs`,
//! `join --control-plane --certificate-key KEY`), as the stand-ins do it.
//!
//! kubeadm encrypts the shared certificates and keys with AES-256-GCM under
//! the 32-byte certificate key (64 hex characters) and stores them in the
//! `kubeadm-certs` Secret; a joining master downloads the Secret with its
//! bootstrap token and decrypts it with the key it was given. Here the
//! encrypted data is kept in the double's state directory on the master
//! that initialized (or joined), and the API server stand-in serves it at
//! kubeadm's Secret path to callers presenting a bootstrap token that
//! master knows (see `apiserver`). What is handed over: the cluster CA
//! (`ca.crt`, `ca.key`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

/// File of the encrypted certificates in the state directory.
pub const UPLOADED_FILE: &str = "kubeadm-certs.json";
/// File of the bootstrap tokens the master accepts, one a line.
pub const TOKENS_FILE: &str = "bootstrap-tokens";
/// The names handed over, as keys of the Secret's data.
pub const NAMES: &[&str] = &["ca.crt", "ca.key"];

/// Errors of the hand-over.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The certificate key is not 64 hex characters.
    #[error("the certificate key must be 64 hexadecimal characters (32 bytes for AES-256), got {0} characters")]
    BadKey(usize),
    /// Decryption failed: another key, or tampered data.
    #[error("error decrypting {0} with the certificate key: wrong key or corrupt data")]
    Decrypt(String),
    /// An entry is missing or not base64.
    #[error("the uploaded certificates: {0}")]
    Malformed(String),
    /// A file could not be read or written.
    #[error("{}: {reason}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn key_of(hex_key: &str) -> Result<LessSafeKey, CertsError> {
    let t = hex_key.trim();
    let bytes: Vec<u8> = (t.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten()
        .ok_or(CertsError::BadKey(t.len()))?;
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CertsError::BadKey(t.len()))?;
    Ok(LessSafeKey::new(unbound))
}

/// Encrypts `plain` under the key: base64 of nonce || ciphertext || tag.
pub fn encrypt(hex_key: &str, plain: &[u8]) -> Result<String, CertsError> {
    let key = key_of(hex_key)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CertsError::Malformed("no randomness for a nonce".into()))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .map_err(|_| CertsError::Malformed("encryption failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Decrypts what [`encrypt`] made; `name` is for the error.
pub fn decrypt(hex_key: &str, name: &str, sealed_b64: &str) -> Result<Vec<u8>, CertsError> {
    let key = key_of(hex_key)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed_b64.trim())
        .map_err(|e| CertsError::Malformed(format!("{name} is not base64: {e}")))?;
    if raw.len() < NONCE_LEN + 16 {
        return Err(CertsError::Decrypt(name.to_string()));
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let mut buf = rest.to_vec();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .map_err(|_| CertsError::Decrypt(name.to_string()))?;
    Ok(plain.to_vec())
}

/// The encrypted data of the Secret: name -> sealed base64.
pub type Sealed = BTreeMap<String, String>;

/// Seals the files `NAMES` of `pki` under the key.
pub fn seal_dir(hex_key: &str, pki: &Path) -> Result<Sealed, CertsError> {
    let mut out = Sealed::new();
    for name in NAMES {
        let path = pki.join(name);
        let bytes = fs::read(&path).map_err(|e| CertsError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        out.insert((*name).to_string(), encrypt(hex_key, &bytes)?);
    }
    Ok(out)
}

/// Opens every entry of `NAMES` in `sealed`.
pub fn open_all(hex_key: &str, sealed: &Sealed) -> Result<BTreeMap<String, Vec<u8>>, CertsError> {
    let mut out = BTreeMap::new();
    for name in NAMES {
        let s = sealed
            .get(*name)
            .ok_or_else(|| CertsError::Malformed(format!("{name} is missing")))?;
        out.insert((*name).to_string(), decrypt(hex_key, name, s)?);
    }
    Ok(out)
}

/// Stores the sealed data in the state directory (0600, atomically).
pub fn store(state: &Path, sealed: &Sealed) -> Result<(), CertsError> {
    let path = state.join(UPLOADED_FILE);
    let bytes = serde_json::to_vec_pretty(sealed).expect("a map serializes");
    write(&path, &bytes)
}

/// The sealed data stored in the state directory, if any.
pub fn load(state: &Path) -> Result<Option<Sealed>, CertsError> {
    let path = state.join(UPLOADED_FILE);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| CertsError::File {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertsError::File {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Adds a bootstrap token to those the master accepts.
pub fn add_token(state: &Path, token: &str) -> Result<(), CertsError> {
    let mut tokens = tokens(state);
    if !tokens.iter().any(|t| t == token) {
        tokens.push(token.to_string());
    }
    write(
        &state.join(TOKENS_FILE),
        (tokens.join("\n") + "\n").as_bytes(),
    )
}

/// The bootstrap tokens the master accepts.
pub fn tokens(state: &Path) -> Vec<String> {
    fs::read_to_string(state.join(TOKENS_FILE))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CertsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| CertsError::File {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    seaport_shared::confined::write_atomic(path, bytes, 0o600).map_err(|e| CertsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn sealed_data_opens_with_the_key_only() {
        let s = encrypt(KEY, b"secret ca key").unwrap();
        assert!(!s.contains("secret"));
        assert_eq!(decrypt(KEY, "ca.key", &s).unwrap(), b"secret ca key");
        let other = KEY.replace("00", "01");
        let e = decrypt(&other, "ca.key", &s).unwrap_err();
        assert!(e.to_string().contains("ca.key"), "{e}");
        // A flipped byte of the ciphertext is refused too.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&s)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let bad = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(decrypt(KEY, "ca.key", &bad).is_err());
    }

    #[test]
    fn a_key_of_the_wrong_shape_is_refused() {
        assert!(matches!(encrypt("abc", b"x"), Err(CertsError::BadKey(3))));
        let not_hex = "z".repeat(64);
        assert!(matches!(
            encrypt(&not_hex, b"x"),
            Err(CertsError::BadKey(64))
        ));
    }

    #[test]
    fn tokens_accumulate_without_duplicates() {
        let d = tempfile::tempdir().unwrap();
        add_token(d.path(), "abcdef.0123456789abcdef").unwrap();
        add_token(d.path(), "abcdef.0123456789abcdef").unwrap();
        add_token(d.path(), "ghijkl.0123456789abcdef").unwrap();
        assert_eq!(tokens(d.path()).len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join(TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
