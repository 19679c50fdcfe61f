//! Which cluster images this host accepts, and the check every apply runs
//! before anything is written.
//!
//! The coordinator gives its policy ([`ImageTrust`]: trusted public keys,
//! whether signatures are required) with the identity at enrollment and at
//! the start of every session; it is kept in `STATE_DIR/identity/trust.json`
//! (mode 0644: public keys, nothing secret). An apply task adds what its
//! cluster's Clusterfile asks for, and the host may add its own
//! ([`LocalTrust`]: `seaport-agent run --trusted-keys DIR --require-signed`),
//! which no coordinator can take away. Keys are the union of the three;
//! signatures are required when any of them requires them.
//!
//! The check ([`check`]) verifies the signatures the task carries against
//! those keys for the digest the task names (the index of a multi-platform
//! image; the manifest of this host's platform is then reached from it by
//! digest), with `seaport_rootfs::signing`: the agent decides for itself,
//! whatever the coordinator checked.

use std::fs;
use std::path::{Path, PathBuf};

use seaport_rootfs::signing::{Accepted, Policy, Signatures, TrustedKeys};
use seaport_shared::digest::Digest;
use seaport_shared::pki::{self, PkiError};
use seaport_shared::wire::{ImageSignatures, ImageTrust};

/// The policy file under the identity directory.
pub const TRUST_FILE: &str = "trust.json";

/// Errors reading or storing the policy.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy is not usable.
    #[error("{what}: {reason}")]
    Bad {
        /// Where it came from.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] seaport_shared::confined::ConfinedError),
    /// A local keys directory is not usable.
    #[error(transparent)]
    Keys(#[from] seaport_rootfs::signing::SigningError),
}

/// Why an apply task's image is not accepted on this host.
#[derive(Debug, thiserror::Error)]
pub enum ImageRefused {
    /// The host's policy cannot be read or does not parse.
    #[error("the image signature policy of this host is not usable: {0}")]
    Policy(TrustError),
    /// The signatures the task carries do not parse.
    #[error(
        "image {image} ({digest}) is refused: its signatures are unreadable: {source}; nothing was installed"
    )]
    Unreadable {
        /// The image's name.
        image: String,
        /// Its digest.
        digest: Digest,
        /// What is wrong.
        source: Box<seaport_rootfs::signing::SigningError>,
    },
    /// The policy refuses the image.
    #[error("{0}; nothing was installed")]
    Refused(Box<seaport_rootfs::signing::Refused>),
}

/// What the host itself asks for, beside the coordinator's policy.
#[derive(Clone, Debug, Default)]
pub struct LocalTrust {
    /// More trusted public keys (`*.pub`, `*.pem`).
    pub keys_dir: Option<PathBuf>,
    /// Refuse unsigned images whatever the coordinator says.
    pub require_signed: bool,
}

/// The flags of `seaport-agent run` and `apply` that make [`LocalTrust`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// More trusted public keys for cluster images (*.pub, *.pem files),
    /// beside those the coordinator gives.
    #[arg(
        long = "trusted-keys",
        env = "SEAPORT_AGENT_TRUSTED_KEYS",
        value_name = "DIR"
    )]
    pub trusted_keys: Option<PathBuf>,
    /// Refuse cluster images without a good signature, whatever the
    /// coordinator asks.
    #[arg(long, env = "SEAPORT_AGENT_REQUIRE_SIGNED")]
    pub require_signed: bool,
}

impl TrustArgs {
    /// What the flags ask for.
    pub fn local(&self) -> LocalTrust {
        LocalTrust {
            keys_dir: self.trusted_keys.clone(),
            require_signed: self.require_signed,
        }
    }
}

/// `STATE_DIR/identity/trust.json`.
pub fn trust_path(state_dir: &Path) -> PathBuf {
    crate::identity::StatePaths::new(state_dir)
        .identity_dir()
        .join(TRUST_FILE)
}

fn keys_of(what: &str, trust: &ImageTrust) -> Result<TrustedKeys, TrustError> {
    TrustedKeys::from_pems(what, trust.keys.iter().map(String::as_str)).map_err(|e| {
        TrustError::Bad {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Stores the coordinator's policy (checked first: every key must parse).
pub fn store(state_dir: &Path, trust: &ImageTrust) -> Result<(), TrustError> {
    keys_of("the coordinator's trusted keys", trust)?;
    let path = trust_path(state_dir);
    pki::create_private_dir(path.parent().expect("the identity directory"))?;
    let bytes = serde_json::to_vec_pretty(trust).expect("the policy serializes");
    seaport_shared::confined::write_atomic(&path, &bytes, 0o644)?;
    Ok(())
}

/// The coordinator's policy as stored (none stored: no keys, nothing
/// required).
pub fn load(state_dir: &Path) -> Result<ImageTrust, TrustError> {
    let path = trust_path(state_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TrustError::Bad {
            what: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImageTrust::default()),
        Err(source) => Err(TrustError::Read { path, source }),
    }
}

/// The policy an apply enforces: the coordinator's (stored), the cluster's
/// and the host's own, together.
pub fn policy(
    state_dir: &Path,
    local: &LocalTrust,
    cluster: &ImageTrust,
) -> Result<Policy, TrustError> {
    let stored = load(state_dir)?;
    let mut keys = keys_of(&trust_path(state_dir).display().to_string(), &stored)?;
    keys.extend(&keys_of("the cluster's trusted keys", cluster)?);
    if let Some(dir) = &local.keys_dir {
        keys.extend(&TrustedKeys::load_dir(dir)?);
    }
    Ok(Policy {
        keys,
        require_signed: stored.require_signed || cluster.require_signed || local.require_signed,
    })
}

/// Reads the signature image a task carries (each blob checked against its
/// digest).
pub fn signatures_of(
    docs: &ImageSignatures,
) -> Result<Signatures, seaport_rootfs::signing::SigningError> {
    Signatures::parse("sent with the task", &docs.manifest, |d| {
        docs.blobs.iter().find(|b| Digest::of(b) == *d).cloned()
    })
}

/// Checks the image `image` (digest `subject`, with `signatures`) against
/// the policy; the error names the image, the keys tried and the reason.
pub fn check(
    state_dir: &Path,
    local: &LocalTrust,
    cluster: &ImageTrust,
    image: &str,
    subject: &Digest,
    signatures: Option<&Signatures>,
) -> Result<Accepted, ImageRefused> {
    let policy = policy(state_dir, local, cluster).map_err(ImageRefused::Policy)?;
    policy
        .check(image, subject, signatures)
        .map_err(|e| ImageRefused::Refused(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_rootfs::signing::{sign, SigningKey};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_stored_policy_the_cluster_and_the_host_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let site = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let subject = Digest::of(b"index");
        let signed = sign(&site, "r/x", &subject, None).unwrap();
        let by_other = sign(&other, "r/x", &subject, None).unwrap();
        let none = LocalTrust::default();
        let no_cluster = ImageTrust::default();

        // Nothing stored: nothing checked.
        assert_eq!(
            check(state, &none, &no_cluster, "x", &subject, None).unwrap(),
            Accepted::NotChecked
        );
        store(
            state,
            &ImageTrust {
                keys: vec![site.public_key().to_pem()],
                require_signed: false,
            },
        )
        .unwrap();
        let mode = fs::metadata(trust_path(state))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        assert!(matches!(
            check(state, &none, &no_cluster, "x", &subject, Some(&signed)),
            Ok(Accepted::Signed { .. })
        ));
        assert_eq!(
            check(state, &none, &no_cluster, "x", &subject, None).unwrap(),
            Accepted::Unsigned
        );
        // The host requires signatures on its own.
        let strict = LocalTrust {
            keys_dir: None,
            require_signed: true,
        };
        let err = check(state, &strict, &no_cluster, "x:v1", &subject, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x:v1")
                && err.contains(&site.public_key().fingerprint())
                && err.contains("no signature")
                && err.contains("nothing was installed"),
            "{err}"
        );
        // Another key is refused until the cluster trusts it.
        assert!(check(state, &none, &no_cluster, "x", &subject, Some(&by_other)).is_err());
        let cluster = ImageTrust {
            keys: vec![other.public_key().to_pem()],
            require_signed: true,
        };
        assert!(check(state, &none, &cluster, "x", &subject, Some(&by_other)).is_ok());
        // The task's signatures are read back from their bytes.
        let docs = ImageSignatures {
            manifest: signed.manifest_bytes.clone(),
            blobs: signed.blobs().into_iter().map(<[u8]>::to_vec).collect(),
        };
        assert_eq!(signatures_of(&docs).unwrap(), signed);
        // A key that does not parse is refused before anything is stored.
        let bad = ImageTrust {
            keys: vec!["junk".into()],
            require_signed: true,
        };
        assert!(store(state, &bad).is_err());
        assert!(!load(state).unwrap().require_signed);
    }
}
