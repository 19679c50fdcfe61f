//! The coordinator's image signature policy.
//!
//! `coordinator serve --trusted-keys DIR [--require-signed]` sets it for
//! every cluster; a Clusterfile's `spec.imagePolicy` adds keys and can
//! require signatures for its cluster (never the reverse). The coordinator
//! checks an operation's image against it when the operation is planned,
//! before anything is recorded or sent, and gives it to agents: the
//! coordinator's part with their identity and at every session, the
//! cluster's part and the image's signatures with each apply task, so each
//! agent checks again for itself (`seaport_agent::trust`).

use std::path::Path;

use seaport_rootfs::signing::{self, Accepted, Policy, TrustedKeys};
use seaport_rootfs::store::Store;
use seaport_shared::digest::Digest;
use seaport_shared::wire::{ImageSignatures, ImageTrust};

use crate::clusterfile::{Clusterfile, ClusterfileError};

/// Why an image's signatures cannot be checked, or why it is refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The Clusterfile holding the cluster's policy does not parse.
    #[error("Clusterfile: {0}")]
    Clusterfile(#[from] ClusterfileError),
    /// A key of `spec.imagePolicy.trustedKeys` is not usable.
    #[error(transparent)]
    Keys(#[from] signing::KeyListError),
    /// The coordinator's image store cannot be opened.
    #[error("the image store: {0}")]
    ImageStore(seaport_rootfs::store::StoreError),
    /// The stored signatures of an image cannot be read.
    #[error("the signatures of {what}: {source}")]
    Stored {
        /// The image (`image NAME (DIGEST)`, or its digest).
        what: String,
        /// Why.
        source: Box<signing::SigningError>,
    },
    /// The policy refuses the image.
    #[error("{0}; nothing was started")]
    Refused(Box<signing::Refused>),
}

impl From<signing::Refused> for TrustError {
    fn from(e: signing::Refused) -> Self {
        TrustError::Refused(Box::new(e))
    }
}

/// The policy as agents receive it.
pub fn to_wire(policy: &Policy) -> ImageTrust {
    ImageTrust {
        keys: policy.keys.pems(),
        require_signed: policy.require_signed,
    }
}

/// The policy a Clusterfile text asks for (`spec.imagePolicy`); none for
/// `seaport run`.
pub fn cluster_policy(clusterfile: Option<&str>) -> Result<Policy, TrustError> {
    let Some(text) = clusterfile else {
        return Ok(Policy::default());
    };
    let file = Clusterfile::parse(text)?;
    let Some(cluster) = file.cluster else {
        return Ok(Policy::default());
    };
    let p = cluster.image_policy;
    Ok(Policy {
        keys: TrustedKeys::from_pems(
            "spec.imagePolicy.trustedKeys",
            p.trusted_keys.iter().map(String::as_str),
        )?,
        require_signed: p.require_signed,
    })
}

/// Checks the image `name` (digest `subject`) of the store under `root`
/// against `policy`, with the signatures the store holds for it.
pub fn check(
    root: &Path,
    policy: &Policy,
    name: &str,
    subject: &Digest,
) -> Result<Accepted, TrustError> {
    if policy.is_off() {
        return Ok(Accepted::NotChecked);
    }
    let store = Store::open(root).map_err(TrustError::ImageStore)?;
    let sigs = signing::stored(&store, subject).map_err(|source| TrustError::Stored {
        what: format!("image {name} ({subject})"),
        source: Box::new(source),
    })?;
    Ok(policy.check(name, subject, sigs.as_ref())?)
}

/// The signatures of `subject` in the store under `root`, as an apply task
/// carries them.
pub fn task_signatures(
    root: &Path,
    subject: &Digest,
) -> Result<Option<ImageSignatures>, TrustError> {
    let store = Store::open(root).map_err(TrustError::ImageStore)?;
    let sigs = signing::stored(&store, subject).map_err(|source| TrustError::Stored {
        what: subject.to_string(),
        source: Box::new(source),
    })?;
    Ok(sigs.map(|s| ImageSignatures {
        blobs: s.blobs().into_iter().map(<[u8]>::to_vec).collect(),
        manifest: s.manifest_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_rootfs::signing::SigningKey;

    #[test]
    fn a_clusterfile_adds_keys_and_can_require_signatures() {
        let key = SigningKey::generate().unwrap();
        let pem = key.public_key().to_pem();
        let indented: String = pem.lines().map(|l| format!("        {l}\n")).collect();
        let text = format!(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  image: x:v1\n  imagePolicy:\n    requireSigned: true\n    trustedKeys:\n      - |\n{indented}  hosts:\n    - ips: [198.18.0.11]\n      roles: [master]\n"
        );
        let p = cluster_policy(Some(&text)).unwrap();
        assert!(p.require_signed);
        assert_eq!(p.keys.fingerprints(), vec![key.public_key().fingerprint()]);
        let site = Policy::default();
        assert_eq!(site.union(&p), p);
        assert_eq!(cluster_policy(None).unwrap(), Policy::default());
        let bad = text.replace("MFkw", "XXXX");
        let err = cluster_policy(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("spec.imagePolicy.trustedKeys[0]"), "{err}");
        assert_eq!(to_wire(&p).keys, vec![pem]);
    }
}
