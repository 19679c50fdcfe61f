//! Secrets at rest in a shared store: values sealed with the site's key
//! (AES-256-GCM, a random 96-bit nonce per value, the value's key name as
//! associated data so a sealed value cannot be moved to another key).
//!
//! The site key is 32 random bytes, hex, in `ROOT/coordinator/site.key`
//! (0600), or in the systemd credential `seaport-site-key`
//! (`$CREDENTIALS_DIRECTORY/seaport-site-key`) when the coordinator runs
//! with one. Every coordinator of a site holds the same key; etcd never
//! sees it.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::error::StateError;

/// What a sealed value starts with.
const MAGIC: &[u8] = b"seaport-sealed-1:";
/// The systemd credential holding the site key.
pub const CREDENTIAL: &str = "seaport-site-key";

fn random<const N: usize>() -> Result<[u8; N], StateError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| StateError::Issue("no randomness".into()))?;
    Ok(out)
}

/// The key that seals a site's secrets.
pub struct SiteKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteKey(..)")
    }
}

impl SiteKey {
    fn from_bytes(bytes: &[u8; 32]) -> SiteKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key");
        SiteKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Where the key is read from: the systemd credential when the
    /// coordinator has one, else `dir/site.key`.
    pub fn path(dir: &Path) -> PathBuf {
        if let Some(creds) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let cred = Path::new(&creds).join(CREDENTIAL);
            if cred.exists() {
                return cred;
            }
        }
        dir.join("site.key")
    }

    /// Reads the key at `path`.
    pub fn load(path: &Path) -> Result<SiteKey, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateError::SiteKeyFile {
            path: path.display().to_string(),
            source,
        })?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StateError::SiteKeyFormat(path.display().to_string()))?;
        Ok(SiteKey::from_bytes(&bytes))
    }

    /// Reads the key at `path`, or makes one there (0600) when there is
    /// none.
    pub fn load_or_create(path: &Path) -> Result<SiteKey, StateError> {
        if path.exists() {
            return SiteKey::load(path);
        }
        let bytes: [u8; 32] = random()?;
        let text = format!("{}\n", hex::encode(bytes));
        seaport_shared::confined::write_atomic(path, text.as_bytes(), 0o600).map_err(|e| {
            StateError::SiteKeyFile {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            }
        })?;
        Ok(SiteKey::from_bytes(&bytes))
    }

    /// `plain` sealed for the store key `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        // A fresh random nonce per value: 2^32 values per key stay far
        // below the chance of a repeat that matters.
        let nonce: [u8; NONCE_LEN] = random().expect("the system's randomness");
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM seals any length we store");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`SiteKey::seal`] sealed for `name`; an error when it is
    /// not sealed, was sealed with another key or for another name, or was
    /// changed.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StateError> {
        let bad = || StateError::Unsealable(name.to_string());
        let rest = sealed.strip_prefix(MAGIC).ok_or_else(bad)?;
        if rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        let key = SiteKey::load_or_create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("clusters/prod", b"join secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let again = SiteKey::load(&path).unwrap();
        assert_eq!(
            again.open("clusters/prod", &sealed).unwrap(),
            b"join secret"
        );
        // Moved to another key, tampered with, or opened with another
        // site's key: refused.
        assert!(again.open("clusters/other", &sealed).is_err());
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(again.open("clusters/prod", &changed).is_err());
        let other = SiteKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open("clusters/prod", &sealed).is_err());
        assert!(again.open("clusters/prod", b"{\"plain\":1}").is_err());
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            SiteKey::load(&path),
            Err(StateError::SiteKeyFormat(_))
        ));
    }
}
