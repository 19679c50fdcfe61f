//! The cluster's version as the kubeadm double keeps it, and the checks of
//! `kubeadm upgrade apply VERSION` and `kubeadm upgrade node`.
//!
//! State files (in the double's state directory):
//! - `cluster-version`: on the initializing master, the control plane's
//!   version (the ClusterConfiguration's `kubernetesVersion` at init, the
//!   target of each `upgrade apply`); the API server stand-in serves it at
//!   `/version`, as the cluster's shared `kubeadm-config` would be read.
//! - `join-endpoint`: on a joined host, the endpoint it joined through
//!   (discovery's `apiServerEndpoint`), asked by `upgrade node`.
//! - `node-version`: the version this host's components were last set up
//!   for (init, join, upgrade).
//! - `upgrades.log`: one line per upgrade: `apply VERSION from OLD` or
//!   `node VERSION from OLD`.

use std::path::Path;

use crate::kubeadm_api::Version;

/// The cluster's version file.
pub const CLUSTER_VERSION: &str = "cluster-version";
/// The joined host's endpoint file.
pub const JOIN_ENDPOINT: &str = "join-endpoint";
/// The host's own version file.
pub const NODE_VERSION: &str = "node-version";
/// The record of upgrades.
pub const UPGRADES_LOG: &str = "upgrades.log";

/// A refused upgrade, with kubeadm's reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Reads a version file of the state directory.
pub fn read_version(state: &Path, file: &str) -> Option<Version> {
    std::fs::read_to_string(state.join(file))
        .ok()
        .and_then(|t| Version::parse(&t))
}

/// Writes a version file (0644, atomically).
pub fn write_version(state: &Path, file: &str, v: Version) -> Result<(), Refused> {
    write(state, file, &format!("{v}\n"))
}

/// Writes a small state file.
pub fn write(state: &Path, file: &str, text: &str) -> Result<(), Refused> {
    std::fs::create_dir_all(state)
        .map_err(|e| Refused(format!("creating {}: {e}", state.display())))?;
    seaport_shared::confined::write_atomic(&state.join(file), text.as_bytes(), 0o644)
        .map_err(|e| Refused(format!("writing {}: {e}", state.join(file).display())))
}

/// The control plane version `init` sets up with kubeadm `release`: the
/// configuration's `kubernetesVersion` (kubeadm's own when empty), which
/// kubeadm accepts only from one minor below its own up to its own.
pub fn init_version(release: Version, configured: Option<&str>) -> Result<Version, Refused> {
    let Some(text) = configured.filter(|t| !t.is_empty()) else {
        return Ok(release);
    };
    let v = Version::parse(text).ok_or_else(|| {
        Refused(format!(
            "ClusterConfiguration.kubernetesVersion: Invalid value: \"{text}\": not a version"
        ))
    })?;
    if (v.major, v.minor) > (release.major, release.minor) {
        return Err(Refused(format!(
            "this version of kubeadm only supports deploying clusters with the control plane version >= {}.{}.0 and <= {release}: {v} is higher",
            release.major,
            release.minor.saturating_sub(1)
        )));
    }
    if v.major != release.major || v.minor + 1 < release.minor {
        return Err(Refused(format!(
            "this version of kubeadm only supports deploying clusters with the control plane version >= {}.{}.0: {v} is lower",
            release.major,
            release.minor.saturating_sub(1)
        )));
    }
    Ok(v)
}

/// `kubeadm upgrade apply target`: the target must be higher than the
/// cluster's version, at most one minor above it, and not above kubeadm's
/// own version.
pub fn check_apply(release: Version, cluster: Version, target: Version) -> Result<(), Refused> {
    if target <= cluster {
        return Err(Refused(format!(
            "[upgrade/version] FATAL: the specified version to upgrade to {target} is equal to or lower than the cluster version {cluster}: nothing to upgrade (downgrades are not supported)"
        )));
    }
    if target.major != cluster.major || target.minor > cluster.minor + 1 {
        return Err(Refused(format!(
            "[upgrade/version] FATAL: the specified version to upgrade to {target} is too high; kubeadm can upgrade only 1 minor version at a time (cluster {cluster})"
        )));
    }
    if target > release {
        return Err(Refused(format!(
            "[upgrade/version] FATAL: the specified version to upgrade to {target} is higher than the kubeadm version {release}. Upgrade kubeadm first using the tool you used to install kubeadm"
        )));
    }
    Ok(())
}

/// `kubeadm upgrade node` on a host at `node` when the cluster is at
/// `cluster`: never down.
pub fn check_node(node: Option<Version>, cluster: Version) -> Result<(), Refused> {
    match node {
        Some(n) if n > cluster => Err(Refused(format!(
            "[upgrade] FATAL: this node is at {n}, above the cluster version {cluster}: downgrades are not supported"
        ))),
        _ => Ok(()),
    }
}

/// Appends to `upgrades.log`.
pub fn record(state: &Path, line: &str) {
    crate::kubectl::append(state, UPGRADES_LOG, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn apply_needs_a_higher_version_one_minor_at_a_time_within_kubeadm() {
        let k = v("v1.20.15");
        assert!(check_apply(k, v("v1.19.8"), v("v1.20.0")).is_ok());
        assert!(check_apply(k, v("v1.19.8"), v("v1.19.9")).is_ok());
        let e = check_apply(k, v("v1.19.8"), v("v1.19.8"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("equal to or lower"), "{e}");
        let e = check_apply(k, v("v1.19.8"), v("v1.18.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("equal to or lower"), "{e}");
        let e = check_apply(v("v1.21.0"), v("v1.19.8"), v("v1.21.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 minor version at a time"), "{e}");
        let e = check_apply(k, v("v1.20.0"), v("v1.20.16"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("higher than the kubeadm version"), "{e}");
    }

    #[test]
    fn init_accepts_its_own_minor_and_the_one_below() {
        let k = v("v1.20.4");
        assert_eq!(init_version(k, None).unwrap(), k);
        assert_eq!(init_version(k, Some("v1.19.8")).unwrap(), v("v1.19.8"));
        assert!(init_version(k, Some("v1.21.0")).is_err());
        assert!(init_version(k, Some("v1.18.0")).is_err());
        assert!(init_version(k, Some("stable")).is_err());
    }

    #[test]
    fn node_never_goes_down_and_versions_round_trip() {
        assert!(check_node(Some(v("v1.19.8")), v("v1.20.0")).is_ok());
        assert!(check_node(None, v("v1.20.0")).is_ok());
        assert!(check_node(Some(v("v1.21.0")), v("v1.20.0")).is_err());
        let d = tempfile::tempdir().unwrap();
        write_version(d.path(), CLUSTER_VERSION, v("v1.19.8")).unwrap();
        assert_eq!(read_version(d.path(), CLUSTER_VERSION), Some(v("v1.19.8")));
        assert_eq!(read_version(d.path(), NODE_VERSION), None);
    }
}
