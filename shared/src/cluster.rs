//! The vocabulary of a cluster install, shared by the coordinator, the CLI
//! and the agent: a host's [`Role`], the apply [`Step`]s and the plan's
//! [`Phase`]s they are grouped in, [`steps_for`] a role, the one rule for a
//! [`ClusterName`], the [`OperationKind`]s, and the [`ImageDigest`] an image
//! name resolves to.
//!
//! Each type reads and writes itself as the text it always had on the wire
//! and in stored records (`master0`, `registry-access`, `join-master-1`,
//! `scale up`, `sha256:...`), so the encoding of a message or a record does
//! not change with the type; what changes is that a value that does not
//! parse is refused where it enters, with one message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;

/// Errors of parsing the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabularyError {
    /// Not `master0`, `master` or `node`.
    #[error("unknown role {0:?} (master0, master or node)")]
    Role(String),
    /// Not a step of the apply engine.
    #[error("unknown step {0:?} (one of: {steps})", steps = Step::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    Step(String),
    /// Not a phase of the install plan.
    #[error("unknown phase {0:?}")]
    Phase(String),
    /// Not an operation kind.
    #[error(
        "unknown operation {0:?} (install, scale up, scale down, upgrade, uninstall or converge)"
    )]
    Operation(String),
    /// A cluster name breaking the rule of [`ClusterName`].
    #[error("cluster name {0:?} must be 1 to {max} letters, digits, '-', '_' or '.', starting with a letter or digit", max = ClusterName::MAX_LEN)]
    ClusterName(String),
}

/// Implements `Display`, `FromStr` and serde as the value's text.
macro_rules! text_serde {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A host's role in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The first master: `kubeadm init`, and the local registry.
    Master0,
    /// Another master: `kubeadm join` as a control-plane node.
    Master,
    /// A worker: `kubeadm join`.
    Node,
}

impl Role {
    /// `master0`, `master` or `node`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master0 => "master0",
            Role::Master => "master",
            Role::Node => "node",
        }
    }

    /// Whether the host runs the control plane.
    pub fn is_master(self) -> bool {
        self != Role::Node
    }
}

impl FromStr for Role {
    type Err = VocabularyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master0" => Ok(Role::Master0),
            "master" => Ok(Role::Master),
            "node" => Ok(Role::Node),
            _ => Err(VocabularyError::Role(s.to_string())),
        }
    }
}

text_serde!(Role);

/// One step of the apply engine on a host (the agent journals each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Verify and unpack the layers into the cluster's rootfs.
    Rootfs,
    /// Render `*.tmpl` and `statics/` with the cluster env.
    Render,
    /// The container runtime from `cri/`.
    Runtime,
    /// The local registry (registry hosts only).
    Registry,
    /// Names and mirrors that reach the local registry.
    RegistryAccess,
    /// `bin/` and the kubelet's units.
    KubeBinaries,
    /// `scripts/init.sh`.
    HookInit,
    /// `scripts/init-kube.sh`.
    HookInitKube,
    /// `kubeadm init` (first master) or `kubeadm join`.
    Kubeadm,
    /// The image's CMDS and launched applications (first master).
    Launch,
}

impl Step {
    /// Every step, in the order a host runs them.
    pub const ALL: [Step; 10] = [
        Step::Rootfs,
        Step::Render,
        Step::Runtime,
        Step::Registry,
        Step::RegistryAccess,
        Step::KubeBinaries,
        Step::HookInit,
        Step::HookInitKube,
        Step::Kubeadm,
        Step::Launch,
    ];

    /// The step's name, as journaled and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Rootfs => "rootfs",
            Step::Render => "render",
            Step::Runtime => "runtime",
            Step::Registry => "registry",
            Step::RegistryAccess => "registry-access",
            Step::KubeBinaries => "kube-binaries",
            Step::HookInit => "hook-init",
            Step::HookInitKube => "hook-init-kube",
            Step::Kubeadm => "kubeadm",
            Step::Launch => "launch",
        }
    }
}

impl FromStr for Step {
    type Err = VocabularyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| VocabularyError::Step(s.to_string()))
    }
}

text_serde!(Step);

/// A phase of the install plan: its hosts' tasks run in parallel, phases
/// one after another, in sealer's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Unpack and render on every host.
    Rootfs,
    /// The container runtime on every host.
    Runtime,
    /// The local registry on the registry hosts.
    Registry,
    /// Registry access, binaries, units and init hooks on every host.
    RegistryAccess,
    /// `kubeadm init` on the first master.
    InitMaster0,
    /// The `n`th other master joins (1-based), one at a time.
    JoinMaster(u32),
    /// The workers join, in parallel.
    JoinNodes,
    /// The image's apps, from the first master.
    Launch,
}

impl Phase {
    /// The steps each host of the phase runs, in order.
    pub fn steps(self) -> &'static [Step] {
        match self {
            Phase::Rootfs => &[Step::Rootfs, Step::Render],
            Phase::Runtime => &[Step::Runtime],
            Phase::Registry => &[Step::Registry],
            Phase::RegistryAccess => &[
                Step::RegistryAccess,
                Step::KubeBinaries,
                Step::HookInit,
                Step::HookInitKube,
            ],
            Phase::InitMaster0 | Phase::JoinMaster(_) | Phase::JoinNodes => &[Step::Kubeadm],
            Phase::Launch => &[Step::Launch],
        }
    }

    /// Whether the phase runs kubeadm (init or a join).
    pub fn is_kubeadm(self) -> bool {
        matches!(
            self,
            Phase::InitMaster0 | Phase::JoinMaster(_) | Phase::JoinNodes
        )
    }

    /// The phase's name (`join-master-1`), also the name of its stage.
    pub fn as_str(self) -> String {
        match self {
            Phase::Rootfs => "rootfs".into(),
            Phase::Runtime => "runtime".into(),
            Phase::Registry => "registry".into(),
            Phase::RegistryAccess => "registry-access".into(),
            Phase::InitMaster0 => "init-master0".into(),
            Phase::JoinMaster(n) => format!("join-master-{n}"),
            Phase::JoinNodes => "join-nodes".into(),
            Phase::Launch => "launch".into(),
        }
    }

    /// The phases a host of `role` takes part in, in order: the registry
    /// phase on a registry host, the launch phase on the first master when
    /// `launch` (the image has something to launch). A joining master's
    /// phase is shown as `JoinMaster(1)`: its place among the masters is the
    /// plan's business.
    pub fn for_host(role: Role, registry_host: bool, launch: bool) -> Vec<Phase> {
        let mut out = vec![Phase::Rootfs, Phase::Runtime];
        if registry_host {
            out.push(Phase::Registry);
        }
        out.push(Phase::RegistryAccess);
        out.push(match role {
            Role::Master0 => Phase::InitMaster0,
            Role::Master => Phase::JoinMaster(1),
            Role::Node => Phase::JoinNodes,
        });
        if role == Role::Master0 && launch {
            out.push(Phase::Launch);
        }
        out
    }
}

impl FromStr for Phase {
    type Err = VocabularyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "rootfs" => Phase::Rootfs,
            "runtime" => Phase::Runtime,
            "registry" => Phase::Registry,
            "registry-access" => Phase::RegistryAccess,
            "init-master0" => Phase::InitMaster0,
            "join-nodes" => Phase::JoinNodes,
            "launch" => Phase::Launch,
            other => match other
                .strip_prefix("join-master-")
                .and_then(|n| n.parse::<u32>().ok())
            {
                Some(n) if n > 0 => Phase::JoinMaster(n),
                _ => return Err(VocabularyError::Phase(s.to_string())),
            },
        })
    }
}

text_serde!(Phase);

/// The steps of a host of `role`, in the order it runs them: the registry
/// step on a registry host, the launch step on the first master when
/// `launch`. The coordinator plans launch only for an image with something
/// to launch; the agent's engine admits it on every first master and runs it
/// as a no-op when the image launches nothing.
pub fn steps_for(role: Role, registry_host: bool, launch: bool) -> Vec<Step> {
    Phase::for_host(role, registry_host, launch)
        .into_iter()
        .flat_map(|p| p.steps().iter().copied())
        .collect()
}

/// A cluster's name. It names a directory on every host
/// (`/var/lib/seaport/data/NAME`) and a record of the coordinator, so one
/// rule holds wherever a name enters (a Clusterfile, `--cluster`, a task):
/// 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter
/// or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    /// The longest name (a DNS label's length: the name shows up in
    /// hostnames and unit descriptions).
    pub const MAX_LEN: usize = 63;

    /// Checks `name` against the rule.
    pub fn parse(name: &str) -> Result<ClusterName, VocabularyError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(ClusterName(name.to_string()))
        } else {
            Err(VocabularyError::ClusterName(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = VocabularyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterName::parse(s)
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for ClusterName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl PartialEq<str> for ClusterName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ClusterName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

text_serde!(ClusterName);

/// What one operation on a cluster does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// A cluster that was not installed.
    Install,
    /// New hosts join.
    ScaleUp,
    /// Hosts that left the spec are cleaned and reset.
    ScaleDown,
    /// A new image.
    Upgrade,
    /// The whole cluster is reset.
    Uninstall,
    /// Nothing changed: every step again, done ones skipped (a repair).
    Converge,
}

impl OperationKind {
    /// The kind as shown and recorded: `install`, `scale up` ...
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Install => "install",
            OperationKind::ScaleUp => "scale up",
            OperationKind::ScaleDown => "scale down",
            OperationKind::Upgrade => "upgrade",
            OperationKind::Uninstall => "uninstall",
            OperationKind::Converge => "converge",
        }
    }

    /// The kind in names (stage names, plugin points): `scale-up`.
    pub fn slug(self) -> &'static str {
        match self {
            OperationKind::ScaleUp => "scale-up",
            OperationKind::ScaleDown => "scale-down",
            other => other.as_str(),
        }
    }
}

impl FromStr for OperationKind {
    type Err = VocabularyError;
    /// Reads the shown form and the slug (`scale up`, `scale-up`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "install" => OperationKind::Install,
            "scale up" | "scale-up" => OperationKind::ScaleUp,
            "scale down" | "scale-down" => OperationKind::ScaleDown,
            "upgrade" => OperationKind::Upgrade,
            "uninstall" => OperationKind::Uninstall,
            "converge" => OperationKind::Converge,
            _ => return Err(VocabularyError::Operation(s.to_string())),
        })
    }
}

text_serde!(OperationKind);

/// What an image name resolves to: the digest of its manifest, or of its
/// multi-platform index. Resolved once per operation; everything after it
/// (distribution, the agents' tasks, the record) names the image by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageDigest(Digest);

impl ImageDigest {
    /// The digest.
    pub fn digest(&self) -> Digest {
        self.0
    }
}

impl From<Digest> for ImageDigest {
    fn from(d: Digest) -> Self {
        ImageDigest(d)
    }
}

impl From<ImageDigest> for Digest {
    fn from(d: ImageDigest) -> Self {
        d.0
    }
}

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageDigest({})", self.0)
    }
}

impl FromStr for ImageDigest {
    type Err = crate::digest::DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ImageDigest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_phases_of_each_role() {
        use Step::*;
        assert_eq!(
            steps_for(Role::Master0, true, true),
            [
                Rootfs,
                Render,
                Runtime,
                Registry,
                RegistryAccess,
                KubeBinaries,
                HookInit,
                HookInitKube,
                Kubeadm,
                Launch
            ]
        );
        assert_eq!(
            steps_for(Role::Node, false, true),
            [
                Rootfs,
                Render,
                Runtime,
                RegistryAccess,
                KubeBinaries,
                HookInit,
                HookInitKube,
                Kubeadm
            ]
        );
        assert!(!steps_for(Role::Master0, true, false).contains(&Launch));
    }

    #[test]
    fn names_read_back_as_written() {
        for s in Step::ALL {
            assert_eq!(s.to_string().parse::<Step>().unwrap(), s);
        }
        for r in [Role::Master0, Role::Master, Role::Node] {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        for p in [
            Phase::JoinMaster(12),
            Phase::InitMaster0,
            Phase::RegistryAccess,
        ] {
            assert_eq!(p.to_string().parse::<Phase>().unwrap(), p);
        }
        assert!("join-master-0".parse::<Phase>().is_err());
        assert_eq!(
            "scale-up".parse::<OperationKind>().unwrap(),
            OperationKind::ScaleUp
        );
        assert_eq!(OperationKind::ScaleDown.to_string(), "scale down");
        let err = "launch-all".parse::<Step>().unwrap_err().to_string();
        assert!(err.contains("registry-access"), "{err}");
    }

    #[test]
    fn one_rule_for_cluster_names() {
        for ok in ["default", "my-cluster", "c1.prod", "A_b", &"a".repeat(63)] {
            ClusterName::parse(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "../x",
            "a/b",
            "a b",
            &"a".repeat(64),
            &"a".repeat(253),
        ] {
            let err = ClusterName::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("cluster name") && err.contains("1 to 63"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_encoding_is_the_text() {
        let task = (
            Role::Master0,
            vec![Step::RegistryAccess],
            ClusterName::parse("c").unwrap(),
        );
        let typed = crate::codec::encode(&task).unwrap();
        let text = crate::codec::encode(&(
            "master0".to_string(),
            vec!["registry-access".to_string()],
            "c".to_string(),
        ))
        .unwrap();
        assert_eq!(typed, text);
        assert_eq!(
            serde_json::to_string(&OperationKind::ScaleUp).unwrap(),
            "\"scale up\""
        );
        // A name that breaks the rule does not decode.
        assert!(crate::codec::decode::<ClusterName>(
            &crate::codec::encode(&"../etc".to_string()).unwrap()
        )
        .is_err());
    }
}
