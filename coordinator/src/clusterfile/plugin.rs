//! The `Plugin` kind: hooks that run at phases of an install, scale, upgrade
//! or removal, in both of sealer's generations.
//!
//! sealer 0.8 and earlier name phases `PreInit`, `PostInstall`, ... and pick
//! hosts with `spec.on` (a role, `master0`, IPs and ranges, or `k=v` node
//! labels); every phase runs on the hosts the operation concerns. sealer 0.9
//! and later name them `pre-init-host`, `post-install`, ... and pick hosts
//! with `spec.scope` (roles joined by `|`); its cluster phases run on the
//! first master only. [`phases_at`] is the mapping: at each stage of each
//! operation, which phases of either generation fire, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::error::{ClusterfileError, DocRef, ErrorKind, Warning};
use super::fields::Doc;
use super::ip;
use super::taint::{check_key, parse_taint, BadKey, TaintError, TaintOp};

/// What a plugin does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginType {
    /// `SHELL`: run `data` as a shell script on the selected hosts.
    Shell,
    /// `LABEL`: set node labels, one `IPS k=v,k=v` line per host group.
    Label,
    /// `TAINT`: add or remove node taints, one `IPS taint` line each.
    Taint,
    /// `HOSTNAME`: set host names, one `IP name` line each.
    Hostname,
}

impl PluginType {
    /// sealer's spelling.
    pub fn name(self) -> &'static str {
        match self {
            PluginType::Shell => "SHELL",
            PluginType::Label => "LABEL",
            PluginType::Taint => "TAINT",
            PluginType::Hostname => "HOSTNAME",
        }
    }

    /// Whether a plugin of this type does anything at `phase`: labels and
    /// taints need the nodes registered in Kubernetes, a host name must be
    /// set before the host joins (sealer ran them only then, too).
    pub fn acts_at(self, phase: Phase) -> bool {
        use Phase::*;
        match self {
            PluginType::Shell => true,
            PluginType::Label | PluginType::Taint => matches!(
                phase,
                PreGuest
                    | PostJoin
                    | PostInstall
                    | PostInitHost
                    | PostInstallCluster
                    | PostScaleUp
                    | UpgradeHost
                    | Upgrade
                    | Rollback
            ),
            PluginType::Hostname => matches!(
                phase,
                Originally
                    | PreInstall
                    | PreInit
                    | PreJoin
                    | PreInstallCluster
                    | PreScaleUp
                    | PreInitHost
            ),
        }
    }
}

/// The sealer generation a phase name comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// sealer 0.8 and earlier: `PreInit`, `PostInstall`, ...
    Legacy,
    /// sealer 0.9 and later: `pre-init-host`, `post-install`, ...
    Current,
}

/// Where a phase's SHELL plugins run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseTarget {
    /// On the first master only, whatever the plugin selects (sealer 0.9's
    /// cluster phases).
    Master0,
    /// On the hosts the operation concerns that the plugin selects.
    Hosts,
}

/// Where a SHELL plugin's script starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellDir {
    /// The host's working directory: the rootfs is not there yet
    /// (`Originally`).
    Host,
    /// The cluster's rootfs directory.
    Rootfs,
    /// The rootfs directory, and the script is skipped on a host without one
    /// (the clean phases, which may run on half-installed hosts).
    RootfsIfPresent,
}

/// A plugin phase of either sealer generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// `Originally`: first thing of an install or scale-up, before the
    /// rootfs is on the hosts.
    Originally,
    /// `PreInstall`: named by sealer 0.8 but never run by it; Seaport runs it
    /// with `Originally`.
    PreInstall,
    /// `PreInit`: before `kubeadm init`, on every host.
    PreInit,
    /// `PreJoin`: before joining hosts in a scale-up.
    PreJoin,
    /// `PostJoin`: after joining hosts in a scale-up.
    PostJoin,
    /// `PreGuest`: cluster up, before the image's apps launch.
    PreGuest,
    /// `PostInstall`: after the install, apps included.
    PostInstall,
    /// `PreClean`: before hosts are reset.
    PreClean,
    /// `PostClean`: after hosts are reset.
    PostClean,
    /// `pre-install`: start of an install, on master0.
    PreInstallCluster,
    /// `post-install`: end of an install, on master0.
    PostInstallCluster,
    /// `pre-uninstall`: start of a removal, on master0.
    PreUninstall,
    /// `post-uninstall`: end of a removal, on master0.
    PostUninstall,
    /// `pre-scaleup`: start of a scale-up, on master0.
    PreScaleUp,
    /// `post-scaleup`: end of a scale-up, on master0.
    PostScaleUp,
    /// `upgrade`: end of an upgrade, on master0.
    Upgrade,
    /// `rollback`: a rollback, on master0.
    Rollback,
    /// `pre-init-host`: before a host is set up.
    PreInitHost,
    /// `post-init-host`: after a host has joined.
    PostInitHost,
    /// `pre-clean-host`: before a host is reset.
    PreCleanHost,
    /// `post-clean-host`: after a host is reset.
    PostCleanHost,
    /// `upgrade-host`: start of an upgrade, on each host.
    UpgradeHost,
}

impl Phase {
    /// Every phase.
    pub const ALL: &'static [Phase] = &[
        Phase::Originally,
        Phase::PreInstall,
        Phase::PreInit,
        Phase::PreJoin,
        Phase::PostJoin,
        Phase::PreGuest,
        Phase::PostInstall,
        Phase::PreClean,
        Phase::PostClean,
        Phase::PreInstallCluster,
        Phase::PostInstallCluster,
        Phase::PreUninstall,
        Phase::PostUninstall,
        Phase::PreScaleUp,
        Phase::PostScaleUp,
        Phase::Upgrade,
        Phase::Rollback,
        Phase::PreInitHost,
        Phase::PostInitHost,
        Phase::PreCleanHost,
        Phase::PostCleanHost,
        Phase::UpgradeHost,
    ];

    /// The name as written in `spec.action`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Originally => "Originally",
            Phase::PreInstall => "PreInstall",
            Phase::PreInit => "PreInit",
            Phase::PreJoin => "PreJoin",
            Phase::PostJoin => "PostJoin",
            Phase::PreGuest => "PreGuest",
            Phase::PostInstall => "PostInstall",
            Phase::PreClean => "PreClean",
            Phase::PostClean => "PostClean",
            Phase::PreInstallCluster => "pre-install",
            Phase::PostInstallCluster => "post-install",
            Phase::PreUninstall => "pre-uninstall",
            Phase::PostUninstall => "post-uninstall",
            Phase::PreScaleUp => "pre-scaleup",
            Phase::PostScaleUp => "post-scaleup",
            Phase::Upgrade => "upgrade",
            Phase::Rollback => "rollback",
            Phase::PreInitHost => "pre-init-host",
            Phase::PostInitHost => "post-init-host",
            Phase::PreCleanHost => "pre-clean-host",
            Phase::PostCleanHost => "post-clean-host",
            Phase::UpgradeHost => "upgrade-host",
        }
    }

    /// The phase with this exact name (sealer compares names exactly).
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Which sealer generation it comes from.
    pub fn generation(self) -> Generation {
        if self.name().starts_with(|c: char| c.is_ascii_uppercase()) {
            Generation::Legacy
        } else {
            Generation::Current
        }
    }

    /// Where its SHELL plugins run.
    pub fn target(self) -> PhaseTarget {
        use Phase::*;
        match self {
            PreInstallCluster | PostInstallCluster | PreUninstall | PostUninstall | PreScaleUp
            | PostScaleUp | Upgrade | Rollback => PhaseTarget::Master0,
            _ => PhaseTarget::Hosts,
        }
    }

    /// Where its SHELL scripts start.
    pub fn shell_dir(self) -> ShellDir {
        use Phase::*;
        match self {
            Originally => ShellDir::Host,
            PreCleanHost | PostCleanHost | PreUninstall | PostUninstall => {
                ShellDir::RootfsIfPresent
            }
            _ => ShellDir::Rootfs,
        }
    }

    /// The closest phase of the other generation, if one fires at the same
    /// point.
    pub fn counterpart(self) -> Option<Phase> {
        use Phase::*;
        Some(match self {
            Originally | PreInstall => PreInstallCluster,
            PreInit | PreJoin => PreInitHost,
            PostJoin | PreGuest => PostInitHost,
            PostInstall => PostInstallCluster,
            PreClean => PreCleanHost,
            PostClean => PostCleanHost,
            PreInstallCluster => Originally,
            PostInstallCluster => PostInstall,
            PreInitHost => PreInit,
            PostInitHost => PreGuest,
            PreCleanHost => PreClean,
            PostCleanHost => PostClean,
            PreUninstall | PostUninstall | PreScaleUp | PostScaleUp | Upgrade | Rollback
            | UpgradeHost => return None,
        })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the cluster is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A new cluster.
    Install,
    /// Hosts join.
    ScaleUp,
    /// Hosts leave.
    ScaleDown,
    /// The whole cluster is removed.
    Uninstall,
    /// A new image over a running cluster.
    Upgrade,
    /// Back to the previous image.
    Rollback,
}

/// A point in an operation where plugins run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before anything changes on the hosts.
    Start,
    /// Hosts have the rootfs; Kubernetes not yet set up on them.
    HostsReady,
    /// Kubernetes is up on the hosts; the image's apps are not launched.
    ClusterReady,
    /// Everything is done.
    Done,
}

/// The phases that fire at `stage` of `operation`, in the order they run.
pub fn phases_at(operation: Operation, stage: Stage) -> &'static [Phase] {
    use Operation as O;
    use Phase::*;
    use Stage as S;
    match (operation, stage) {
        (O::Install, S::Start) => &[Originally, PreInstall, PreInstallCluster],
        (O::Install, S::HostsReady) => &[PreInit, PreInitHost],
        (O::Install, S::ClusterReady) => &[PreGuest, PostInitHost],
        (O::Install, S::Done) => &[PostInstall, PostInstallCluster],
        (O::ScaleUp, S::Start) => &[Originally, PreScaleUp],
        (O::ScaleUp, S::HostsReady) => &[PreJoin, PreInitHost],
        (O::ScaleUp, S::ClusterReady) => &[PreGuest, PostJoin, PostInitHost],
        (O::ScaleUp, S::Done) => &[PostScaleUp],
        (O::ScaleDown, S::Start) => &[PreClean, PreCleanHost],
        (O::ScaleDown, S::Done) => &[PostClean, PostCleanHost],
        (O::Uninstall, S::Start) => &[PreUninstall, PreClean, PreCleanHost],
        (O::Uninstall, S::Done) => &[PostClean, PostCleanHost, PostUninstall],
        (O::Upgrade, S::Start) => &[UpgradeHost],
        (O::Upgrade, S::Done) => &[Upgrade],
        (O::Rollback, S::Start) => &[Rollback],
        _ => &[],
    }
}

// ---- host selection ---------------------------------------------------

/// Which hosts a SHELL plugin picks (`spec.on` or `spec.scope`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSelector {
    /// Every host the operation concerns (neither `on` nor `scope`).
    All,
    /// The first master (`on: master0`).
    Master0,
    /// Hosts with any of these roles (`on: master`, `scope: master|node`).
    Roles(Vec<String>),
    /// These IPs (`on: 10.0.0.2,10.0.0.5-10.0.0.7`).
    Ips(Vec<IpAddr>),
    /// Hosts whose labels carry all of these (`on: disk=ssd,zone=a`).
    Labels(Vec<(String, String)>),
}

/// What selection needs to know about a host.
#[derive(Clone, Copy, Debug)]
pub struct HostFacts<'a> {
    /// Its IP.
    pub ip: IpAddr,
    /// Its roles (`master`, `node`, custom).
    pub roles: &'a [String],
    /// Its node labels from the Clusterfile.
    pub labels: &'a BTreeMap<String, String>,
    /// Whether it is the first master.
    pub master0: bool,
}

/// The node-role labels kubeadm puts on control-plane nodes; sealer users
/// select masters with them (`on: node-role.kubernetes.io/master=`).
const CONTROL_PLANE_LABELS: &[&str] = &[
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/control-plane",
];

impl HostSelector {
    /// Whether the host is selected.
    pub fn matches(&self, host: &HostFacts<'_>) -> bool {
        match self {
            HostSelector::All => true,
            HostSelector::Master0 => host.master0,
            HostSelector::Roles(roles) => host.roles.iter().any(|r| roles.contains(r)),
            HostSelector::Ips(ips) => ips.contains(&host.ip),
            HostSelector::Labels(wanted) => wanted.iter().all(|(k, v)| {
                host.labels.get(k) == Some(v)
                    || (v.is_empty()
                        && CONTROL_PLANE_LABELS.contains(&k.as_str())
                        && host.roles.iter().any(|r| r == "master"))
            }),
        }
    }

    /// sealer 0.8's `spec.on`.
    fn parse_on(on: &str) -> Result<Self, SelectorError> {
        let on = on.trim();
        if on.is_empty() {
            return Ok(HostSelector::All);
        }
        if on.contains('=') {
            let mut labels = Vec::new();
            for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() && !v.contains('=') => {
                        labels.push((k.trim().to_string(), v.trim().to_string()))
                    }
                    _ => return Err(SelectorError::Label(part.to_string())),
                }
            }
            return Ok(HostSelector::Labels(labels));
        }
        if on == "master0" {
            return Ok(HostSelector::Master0);
        }
        if on.starts_with(|c: char| c.is_ascii_digit()) || on.contains(':') {
            return Ok(HostSelector::Ips(ip::expand_list(on)?));
        }
        Ok(HostSelector::Roles(split_roles(on)))
    }
}

fn split_roles(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

// ---- data -------------------------------------------------------------

/// One `LABEL` line: labels for a group of hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelLine {
    /// The hosts.
    pub ips: Vec<IpAddr>,
    /// Labels to set.
    pub labels: Vec<(String, String)>,
}

/// One `TAINT` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintLine {
    /// The hosts.
    pub ips: Vec<IpAddr>,
    /// The taint to add or remove.
    pub taint: TaintOp,
}

/// A plugin's `spec.data`, parsed for its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginData {
    /// The script, one trailing newline removed (as sealer does).
    Shell(String),
    /// `IPS k=v,k=v` lines.
    Labels(Vec<LabelLine>),
    /// `IPS taint` lines.
    Taints(Vec<TaintLine>),
    /// `IP hostname` lines.
    Hostnames(Vec<(IpAddr, String)>),
}

/// The non-blank, non-comment lines, numbered from 1, split at whitespace.
fn data_lines(data: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    data.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim();
        (!l.is_empty() && !l.starts_with('#')).then(|| (i + 1, l.split_whitespace().collect()))
    })
}

/// Why `spec.on` selects nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Not `KEY=VALUE`.
    #[error("{0:?} is not a label selector KEY=VALUE")]
    Label(String),
    /// Not IPs.
    #[error(transparent)]
    Ip(#[from] ip::IpError),
}

/// What is wrong with a line of a LABEL, TAINT or HOSTNAME plugin's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataLineError {
    /// Not two fields.
    #[error("expected `{form}`, got {got:?}")]
    Fields {
        /// The form wanted.
        form: &'static str,
        /// The line.
        got: String,
    },
    /// Not IPs.
    #[error(transparent)]
    Ip(#[from] ip::IpError),
    /// A label that is not `KEY=VALUE`.
    #[error("label {0:?} is not KEY=VALUE")]
    Label(String),
    /// A bad label key.
    #[error(transparent)]
    Key(#[from] BadKey),
    /// A bad taint.
    #[error(transparent)]
    Taint(#[from] TaintError),
    /// Not one IP.
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
    /// Not a host name.
    #[error("{0:?} is not a valid host name")]
    Hostname(String),
    /// One host named twice.
    #[error("{0} is given a name twice")]
    Twice(IpAddr),
}

/// A line of plugin data that is wrong, and its number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct DataError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub error: DataLineError,
}

fn two_fields<'a>(
    fields: &[&'a str],
    form: &'static str,
) -> Result<(&'a str, &'a str), DataLineError> {
    match fields {
        [a, b] => Ok((a, b)),
        _ => Err(DataLineError::Fields {
            form,
            got: fields.join(" "),
        }),
    }
}

fn check_hostname(name: &str) -> Result<(), DataLineError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(DataLineError::Hostname(name.to_string()))
    }
}

fn label_line(fields: &[&str]) -> Result<LabelLine, DataLineError> {
    let (ips, labels) = two_fields(fields, "IPS KEY=VALUE,KEY=VALUE")?;
    let ips = ip::expand_list(ips)?;
    let mut kvs = Vec::new();
    for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| DataLineError::Label(kv.to_string()))?;
        check_key(k, "label")?;
        kvs.push((k.to_string(), v.to_string()));
    }
    Ok(LabelLine { ips, labels: kvs })
}

fn taint_line(fields: &[&str]) -> Result<TaintLine, DataLineError> {
    let (ips, taint) = two_fields(fields, "IPS KEY=VALUE:EFFECT")?;
    Ok(TaintLine {
        ips: ip::expand_list(ips)?,
        taint: parse_taint(taint)?,
    })
}

fn hostname_line(fields: &[&str]) -> Result<(IpAddr, String), DataLineError> {
    let (ip, name) = two_fields(fields, "IP HOSTNAME")?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| DataLineError::NotAnIp(ip.to_string()))?;
    check_hostname(name)?;
    Ok((ip, name.to_string()))
}

impl PluginData {
    fn parse(kind: PluginType, data: &str) -> Result<Self, DataError> {
        let at = |line| move |error| DataError { line, error };
        match kind {
            PluginType::Shell => Ok(PluginData::Shell(
                data.strip_suffix('\n').unwrap_or(data).to_string(),
            )),
            PluginType::Label => {
                let mut lines = Vec::new();
                for (n, fields) in data_lines(data) {
                    lines.push(label_line(&fields).map_err(at(n))?);
                }
                Ok(PluginData::Labels(lines))
            }
            PluginType::Taint => {
                let mut lines = Vec::new();
                for (n, fields) in data_lines(data) {
                    lines.push(taint_line(&fields).map_err(at(n))?);
                }
                Ok(PluginData::Taints(lines))
            }
            PluginType::Hostname => {
                let mut names: Vec<(IpAddr, String)> = Vec::new();
                for (n, fields) in data_lines(data) {
                    let (ip, name) = hostname_line(&fields).map_err(at(n))?;
                    if names.iter().any(|(seen, _)| *seen == ip) {
                        return Err(at(n)(DataLineError::Twice(ip)));
                    }
                    names.push((ip, name));
                }
                Ok(PluginData::Hostnames(names))
            }
        }
    }

    /// The hosts named in LABEL, TAINT and HOSTNAME data, in order, once.
    fn named_hosts(&self) -> Vec<IpAddr> {
        let all: Vec<IpAddr> = match self {
            PluginData::Shell(_) => vec![],
            PluginData::Labels(lines) => lines.iter().flat_map(|l| l.ips.clone()).collect(),
            PluginData::Taints(lines) => lines.iter().flat_map(|l| l.ips.clone()).collect(),
            PluginData::Hostnames(names) => names.iter().map(|(ip, _)| *ip).collect(),
        };
        let mut seen = BTreeSet::new();
        all.into_iter().filter(|ip| seen.insert(*ip)).collect()
    }
}

// ---- the kind ---------------------------------------------------------

/// A `Plugin` document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plugin {
    /// Where it was read from.
    pub document: Option<DocRef>,
    /// `metadata.name`; plugins of a phase run in name order.
    pub name: String,
    /// `spec.type`.
    pub kind: PluginType,
    /// `spec.action`, split at `|`.
    pub phases: Vec<Phase>,
    /// `spec.on` or `spec.scope`.
    pub selector: HostSelector,
    /// `spec.data`, parsed.
    pub data: PluginData,
}

impl Plugin {
    /// The hosts this plugin acts on at `phase`. `hosts` are the cluster's
    /// hosts, `targets` the IPs the operation concerns (every host for an
    /// install or removal, the joining or leaving ones for a scale).
    ///
    /// SHELL plugins at a master0 phase run on the first master; at other
    /// phases on the targets their selector picks, in cluster order. LABEL,
    /// TAINT and HOSTNAME act on the targets their data names. Nothing is
    /// selected at a phase the plugin does not list, or where its type does
    /// nothing ([`PluginType::acts_at`]).
    pub fn select_hosts(
        &self,
        phase: Phase,
        hosts: &[HostFacts<'_>],
        targets: &[IpAddr],
    ) -> Vec<IpAddr> {
        if !self.phases.contains(&phase) || !self.kind.acts_at(phase) {
            return vec![];
        }
        match &self.data {
            PluginData::Shell(_) => match phase.target() {
                PhaseTarget::Master0 => hosts.iter().filter(|h| h.master0).map(|h| h.ip).collect(),
                PhaseTarget::Hosts => hosts
                    .iter()
                    .filter(|h| targets.contains(&h.ip) && self.selector.matches(h))
                    .map(|h| h.ip)
                    .collect(),
            },
            data => data
                .named_hosts()
                .into_iter()
                .filter(|ip| targets.contains(ip))
                .collect(),
        }
    }
}

/// One plugin to run at one phase, on these hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRun<'a> {
    /// The plugin.
    pub plugin: &'a Plugin,
    /// The phase it runs for.
    pub phase: Phase,
    /// The hosts, in cluster order (data order for LABEL, TAINT, HOSTNAME).
    pub hosts: Vec<IpAddr>,
}

/// What runs at `stage` of `operation`: phase by phase in
/// [`phases_at`]'s order, and within a phase the plugins by name (then by
/// their order in the file). Plugins that select no host are left out.
pub fn plugin_runs<'a>(
    plugins: &'a [Plugin],
    operation: Operation,
    stage: Stage,
    hosts: &[HostFacts<'_>],
    targets: &[IpAddr],
) -> Vec<PluginRun<'a>> {
    let mut runs = Vec::new();
    for &phase in phases_at(operation, stage) {
        let mut at_phase: Vec<&Plugin> = plugins
            .iter()
            .filter(|p| p.phases.contains(&phase))
            .collect();
        at_phase.sort_by(|a, b| a.name.cmp(&b.name));
        for plugin in at_phase {
            let hosts = plugin.select_hosts(phase, hosts, targets);
            if !hosts.is_empty() {
                runs.push(PluginRun {
                    plugin,
                    phase,
                    hosts,
                });
            }
        }
    }
    runs
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    on: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// sealer plugin types Seaport accepts but does not run.
const IGNORED_TYPES: &[(&str, &str)] = &[
    (
        "CLUSTERCHECK",
        "Seaport launches apps after kubeadm init and every join returned, with no separate cluster check",
    ),
    (
        "ETCD",
        "sealer ran etcd backups only on demand (`sealer plugin`)",
    ),
];

/// Reads a Plugin document; `None` for a type that is accepted and ignored.
pub(crate) fn from_doc(
    doc: Doc<RawSpec>,
    at: &DocRef,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Plugin>, ClusterfileError> {
    let spec = doc.spec.unwrap_or_default();
    let err = |kind: ErrorKind, path: &str, message: String| {
        ClusterfileError::new(kind, message).in_doc(at).at(path)
    };
    let warn = |warnings: &mut Vec<Warning>, path: &str, message: String| {
        warnings.push(Warning {
            document: Some(at.clone()),
            path: Some(path.to_string()),
            message,
        })
    };
    if doc.metadata.name.is_empty() {
        return Err(err(
            ErrorKind::MissingField,
            "metadata.name",
            "a plugin needs a name".into(),
        ));
    }
    let type_name = spec.kind.unwrap_or_default();
    let kind = match type_name.to_ascii_uppercase().as_str() {
        "SHELL" => PluginType::Shell,
        "LABEL" => PluginType::Label,
        "TAINT" => PluginType::Taint,
        "HOSTNAME" => PluginType::Hostname,
        "" => {
            return Err(err(
                ErrorKind::MissingField,
                "spec.type",
                "a plugin needs a type: SHELL, LABEL, TAINT or HOSTNAME".into(),
            ))
        }
        other => {
            if let Some((_, why)) = IGNORED_TYPES.iter().find(|(t, _)| *t == other) {
                warn(
                    warnings,
                    "spec.type",
                    format!("{type_name} plugins are ignored: {why}"),
                );
                return Ok(None);
            }
            return Err(err(
                ErrorKind::InvalidValue,
                "spec.type",
                format!("plugin type {type_name:?} is not supported: use SHELL, LABEL, TAINT or HOSTNAME"),
            ));
        }
    };

    let mut phases = Vec::new();
    for name in spec.action.unwrap_or_default().split('|').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let phase = Phase::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
            err(
                ErrorKind::InvalidValue,
                "spec.action",
                format!("unknown phase {name:?}: use one of {}", known.join(", ")),
            )
        })?;
        if !kind.acts_at(phase) {
            warn(
                warnings,
                "spec.action",
                format!(
                    "a {} plugin does nothing at {phase}: it never runs there",
                    kind.name()
                ),
            );
        }
        if !phases.contains(&phase) {
            phases.push(phase);
        }
    }
    if phases.is_empty() {
        warn(
            warnings,
            "spec.action",
            "no phase is given: the plugin never runs".into(),
        );
    }

    let on = spec.on.unwrap_or_default();
    let scope = spec.scope.unwrap_or_default();
    let selector = match (on.trim().is_empty(), scope.trim().is_empty()) {
        (false, false) => {
            return Err(err(
                ErrorKind::InvalidValue,
                "spec.scope",
                "give either spec.on or spec.scope, not both".into(),
            ))
        }
        (false, true) => HostSelector::parse_on(&on)
            .map_err(|e| err(ErrorKind::InvalidValue, "spec.on", e.to_string()))?,
        (true, false) => HostSelector::Roles(split_roles(&scope)),
        (true, true) => HostSelector::All,
    };
    if kind != PluginType::Shell && selector != HostSelector::All {
        warn(
            warnings,
            if on.trim().is_empty() {
                "spec.scope"
            } else {
                "spec.on"
            },
            format!(
                "ignored: a {} plugin acts on the hosts its data names",
                kind.name()
            ),
        );
    }

    let data_text = spec.data.unwrap_or_default();
    let data = PluginData::parse(kind, &data_text)
        .map_err(|e| err(ErrorKind::InvalidValue, "spec.data", e.to_string()))?;
    if data_text.trim().is_empty() {
        warn(
            warnings,
            "spec.data",
            "is empty: the plugin does nothing".into(),
        );
    }
    Ok(Some(Plugin {
        document: Some(at.clone()),
        name: doc.metadata.name,
        kind,
        phases,
        selector,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_name_round_trips_and_knows_its_generation() {
        for &p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
        }
        assert_eq!(Phase::parse("preinit"), None);
        assert_eq!(Phase::PreInit.generation(), Generation::Legacy);
        assert_eq!(Phase::PreInitHost.generation(), Generation::Current);
        // The mapping goes both ways where both generations have the point.
        for (legacy, current) in [
            (Phase::PreInit, Phase::PreInitHost),
            (Phase::PreGuest, Phase::PostInitHost),
            (Phase::PostInstall, Phase::PostInstallCluster),
            (Phase::PreClean, Phase::PreCleanHost),
            (Phase::PostClean, Phase::PostCleanHost),
        ] {
            assert_eq!(legacy.counterpart(), Some(current));
            assert_eq!(current.counterpart(), Some(legacy));
        }
        // Each phase fires somewhere, so no plugin is silently dead.
        use Operation as O;
        use Stage as S;
        let mut fired = BTreeSet::new();
        for op in [
            O::Install,
            O::ScaleUp,
            O::ScaleDown,
            O::Uninstall,
            O::Upgrade,
            O::Rollback,
        ] {
            for stage in [S::Start, S::HostsReady, S::ClusterReady, S::Done] {
                fired.extend(phases_at(op, stage).iter().copied());
            }
        }
        assert_eq!(fired.len(), Phase::ALL.len());
    }

    #[test]
    fn on_field_forms() {
        assert_eq!(HostSelector::parse_on("").unwrap(), HostSelector::All);
        assert_eq!(
            HostSelector::parse_on("master0").unwrap(),
            HostSelector::Master0
        );
        assert_eq!(
            HostSelector::parse_on("master").unwrap(),
            HostSelector::Roles(vec!["master".into()])
        );
        assert_eq!(
            HostSelector::parse_on("192.168.56.113-192.168.56.114,192.168.56.120").unwrap(),
            HostSelector::Ips(vec![
                "192.168.56.113".parse().unwrap(),
                "192.168.56.114".parse().unwrap(),
                "192.168.56.120".parse().unwrap()
            ])
        );
        assert_eq!(
            HostSelector::parse_on("node-role.kubernetes.io/master=").unwrap(),
            HostSelector::Labels(vec![(
                "node-role.kubernetes.io/master".into(),
                String::new()
            )])
        );
        assert!(HostSelector::parse_on("192.168.56.9-192.168.56.1").is_err());
    }
}
