//! sealer's Clusterfile, read unchanged: a multi-document YAML file with one
//! `Cluster`, any number of `Config` and `Plugin` documents, an optional
//! `Application`, and kubeadm documents.
//!
//! Pure: text in, model out, no I/O. [`Clusterfile::parse`] checks every
//! document against its schema (unknown kinds and fields are errors that
//! name the document, the field path, the line and column), and collects
//! [`Warning`]s for what is accepted but not acted on, such as SSH settings
//! (Seaport reaches hosts through their enrolled agents) or an apiVersion
//! that is missing or not sealer's (documents are read by kind, as sealer
//! reads them). [`Cluster::resolve`] gives the view the planner needs:
//! hosts with roles, labels and taints, master0, the cluster env as sealer
//! computes it, the registry.
//!
//! - `cluster`: the `Cluster` kind and its resolved view.
//! - `config`: the `Config` kind and the content of the file it writes.
//! - `plugin`: the `Plugin` kind, phases of both sealer generations, host
//!   selection, LABEL/TAINT/HOSTNAME data.
//! - `application`: the `Application` kind.
//! - `ip`: IPs and `FIRST-LAST` ranges.
//! - `error`: errors and warnings.
//!
//! docs/clusterfile.md lists what is accepted and the decisions taken.

mod application;
mod cluster;
mod config;
mod error;
mod fields;
pub mod ip;
mod plugin;
mod taint;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::Deserialize;
use serde_norway::Value;

pub use application::{AppConfig, AppFile, Application};
pub use cluster::{
    Cluster, Host, HostAlias, ImagePolicy, LocalRegistry, Registry, RegistryEndpoint,
    ResolvedCluster, ResolvedHost, ResolvedLocalRegistry, ResolvedRegistry, COMPUTED_ENV_KEYS,
    DEFAULT_REGISTRY_DOMAIN, DEFAULT_REGISTRY_PORT,
};
pub use config::{Config, ConfigError, Processor, Strategy, APP_ROOT};
pub use error::{ClusterfileError, DocRef, ErrorKind, Warning};
pub use plugin::{
    phases_at, plugin_runs, DataError, DataLineError, Generation, HostFacts, HostSelector,
    LabelLine, Operation, Phase, PhaseTarget, Plugin, PluginData, PluginRun, PluginType,
    SelectorError, ShellDir, Stage, TaintLine,
};
pub use taint::{parse_taint, BadKey, TaintEffect, TaintError, TaintOp};

use fields::Doc;

/// apiVersions of sealer's v2 kinds (`Cluster`, `Application`), and of
/// `Config` and `Plugin` written next to them.
pub const V2_API_VERSIONS: &[&str] = &[
    "sealer.io/v2",
    "sealer.cloud/v2",
    "sealer.aliyun.com/v2alpha1",
];

/// The older apiVersions `Config` and `Plugin` documents also carry.
pub const V1_API_VERSIONS: &[&str] = &[
    "sealer.io/v1",
    "sealer.cloud/v1",
    "sealer.aliyun.com/v1alpha1",
    "sealer.aliyun.com/v1",
];

/// kubeadm's kinds and the apiVersions each accepts.
pub const KUBEADM_KINDS: &[(&str, &[&str])] = &[
    ("InitConfiguration", KUBEADM_API_VERSIONS),
    ("ClusterConfiguration", KUBEADM_API_VERSIONS),
    ("JoinConfiguration", KUBEADM_API_VERSIONS),
    ("KubeletConfiguration", &["kubelet.config.k8s.io/v1beta1"]),
    (
        "KubeProxyConfiguration",
        &["kubeproxy.config.k8s.io/v1alpha1"],
    ),
];

const KUBEADM_API_VERSIONS: &[&str] = &[
    "kubeadm.k8s.io/v1beta1",
    "kubeadm.k8s.io/v1beta2",
    "kubeadm.k8s.io/v1beta3",
    "kubeadm.k8s.io/v1beta4",
];

/// A kubeadm document, kept as YAML for the kubeadm configuration merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeadmDocument {
    /// Where it was read from.
    pub document: DocRef,
    /// Its kind.
    pub kind: String,
    /// Its apiVersion; empty when it had none or one kubeadm does not read
    /// for its kind (the merge then keeps the image's).
    pub api_version: String,
    /// The document as YAML (comments dropped).
    pub yaml: String,
}

/// Everything a Clusterfile holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clusterfile {
    /// The `Cluster`, if the file has one (a plugin file has none).
    pub cluster: Option<Cluster>,
    /// `Config` documents, in file order (the order they are written).
    pub configs: Vec<Config>,
    /// `Plugin` documents, in file order (see [`plugin_runs`] for the order
    /// they run in).
    pub plugins: Vec<Plugin>,
    /// The `Application`, if any.
    pub application: Option<Application>,
    /// kubeadm documents, in file order.
    pub kubeadm: Vec<KubeadmDocument>,
    /// What was accepted but is ignored or differs from sealer.
    pub warnings: Vec<Warning>,
}

enum Kind {
    Cluster,
    Config,
    Plugin,
    Application,
    Kubeadm,
}

/// What the first pass learns of a document.
struct Head {
    at: DocRef,
    kind: Kind,
    value: Value,
}

fn known_kinds() -> String {
    let mut kinds = vec!["Cluster", "Config", "Plugin", "Application"];
    kinds.extend(KUBEADM_KINDS.iter().map(|(k, _)| *k));
    kinds.join(", ")
}

/// First pass: every document as a YAML value, checked for kind; an
/// apiVersion that is missing or not sealer's is a warning.
fn heads(text: &str, warnings: &mut Vec<Warning>) -> Result<Vec<Option<Head>>, ClusterfileError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut at = DocRef {
            index: i + 1,
            kind: None,
            name: None,
        };
        // After a syntax error the iterator yields the same error again and
        // again: return on the first.
        let value = Value::deserialize(de).map_err(|e| {
            let mut err = ClusterfileError::new(ErrorKind::Syntax, format!("not valid YAML: {e}"))
                .in_doc(&at);
            err.location = error::yaml_location(&e);
            err
        })?;
        if value.is_null() {
            out.push(None);
            continue;
        }
        let not_object =
            |at: &DocRef, m: &str| ClusterfileError::new(ErrorKind::NotAnObject, m).in_doc(at);
        if !value.is_mapping() {
            return Err(not_object(
                &at,
                "a document must be a mapping with apiVersion and kind",
            ));
        }
        at.name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(kind) = value
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Err(not_object(&at, "the document has no kind"));
        };
        at.kind = Some(kind.clone());
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let (kind, versions): (Kind, Vec<&str>) = match kind.as_str() {
            "Cluster" => (Kind::Cluster, V2_API_VERSIONS.to_vec()),
            "Application" => (Kind::Application, V2_API_VERSIONS.to_vec()),
            "Config" | "Plugin" => (
                if kind == "Config" {
                    Kind::Config
                } else {
                    Kind::Plugin
                },
                V2_API_VERSIONS
                    .iter()
                    .chain(V1_API_VERSIONS)
                    .copied()
                    .collect(),
            ),
            other => match KUBEADM_KINDS.iter().find(|(k, _)| *k == other) {
                Some((_, versions)) => (Kind::Kubeadm, versions.to_vec()),
                None => {
                    return Err(ClusterfileError::new(
                        ErrorKind::UnknownKind,
                        format!(
                            "unknown kind {other:?}: a Clusterfile holds {}",
                            known_kinds()
                        ),
                    )
                    .in_doc(&at)
                    .at("kind"))
                }
            },
        };
        let mut value = value;
        match api_version.as_deref() {
            Some(v) if versions.contains(&v) => {}
            // sealer reads every document by its kind and never looks at
            // apiVersion, so neither does Seaport, beyond saying so; a v1
            // Cluster keeps its own error (its fields differ).
            Some(v)
                if matches!(kind, Kind::Cluster)
                    && V1_API_VERSIONS.contains(&v)
                    && ["masters", "nodes", "provider"]
                        .iter()
                        .any(|f| value.get("spec").and_then(|s| s.get(f)).is_some()) =>
            {
                return Err(ClusterfileError::new(
                    ErrorKind::UnsupportedApiVersion,
                    format!(
                        "{v} is sealer's v1 Cluster (masters and nodes), which Seaport does not read: write it as apiVersion sealer.io/v2 with spec.hosts"
                    ),
                )
                .in_doc(&at)
                .at("apiVersion"));
            }
            found => {
                let what = match found {
                    Some(v) => format!(
                        "apiVersion {v:?} is not one sealer writes for {}",
                        at.kind.as_deref().unwrap_or_default()
                    ),
                    None => "the document has no apiVersion".to_string(),
                };
                let then = if matches!(kind, Kind::Kubeadm) {
                    // kubeadm reads apiVersion: the merged document keeps
                    // the image's (or the default one).
                    if let Some(m) = value.as_mapping_mut() {
                        m.remove("apiVersion");
                    }
                    "; it is merged by its kind, with the apiVersion of the image's etc/kubeadm.yml"
                } else {
                    ""
                };
                warnings.push(Warning {
                    document: Some(at.clone()),
                    path: Some("apiVersion".into()),
                    message: format!(
                        "{what}; read by its kind, as sealer reads it (expected one of {}){then}",
                        versions.join(", ")
                    ),
                });
            }
        }
        out.push(Some(Head { at, kind, value }));
    }
    Ok(out)
}

impl Clusterfile {
    /// Parses a Clusterfile given as bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ClusterfileError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ClusterfileError::new(
                ErrorKind::NotUtf8,
                format!("the file is not UTF-8 text: {e}"),
            )
        })?;
        Self::parse(text)
    }

    /// Parses and checks every document.
    pub fn parse(text: &str) -> Result<Self, ClusterfileError> {
        let mut file = Clusterfile::default();
        let heads = heads(text, &mut file.warnings)?;
        // Second pass: each document into its schema, so errors carry the
        // field path and position.
        for (head, de) in heads
            .into_iter()
            .zip(serde_norway::Deserializer::from_str(text))
        {
            let Some(Head { at, kind, value }) = head else {
                continue;
            };
            let yaml_err = |e: serde_norway::Error| ClusterfileError::from_yaml(&e, &at);
            match kind {
                Kind::Cluster => {
                    let doc = Doc::deserialize(de).map_err(yaml_err)?;
                    if let Some(first) = &file.cluster {
                        return Err(duplicate(&at, "Cluster", first.document.as_ref()));
                    }
                    file.cluster = Some(cluster::from_doc(doc, &at, &mut file.warnings)?);
                }
                Kind::Config => {
                    let doc = Doc::deserialize(de).map_err(yaml_err)?;
                    file.configs
                        .push(config::from_doc(doc, &at, &mut file.warnings)?);
                }
                Kind::Plugin => {
                    let doc = Doc::deserialize(de).map_err(yaml_err)?;
                    if let Some(p) = plugin::from_doc(doc, &at, &mut file.warnings)? {
                        file.plugins.push(p);
                    }
                }
                Kind::Application => {
                    let doc = Doc::deserialize(de).map_err(yaml_err)?;
                    if let Some(first) = &file.application {
                        return Err(duplicate(&at, "Application", first.document.as_ref()));
                    }
                    file.application = Some(application::from_doc(doc, &at)?);
                }
                Kind::Kubeadm => {
                    let kind = at.kind.clone().unwrap_or_default();
                    if let Some(first) = file.kubeadm.iter().find(|d| d.kind == kind) {
                        return Err(duplicate(&at, &kind, Some(&first.document)));
                    }
                    file.kubeadm.push(KubeadmDocument {
                        api_version: value
                            .get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        yaml: serde_norway::to_string(&value).map_err(|e| {
                            ClusterfileError::new(ErrorKind::InvalidValue, e.to_string())
                                .in_doc(&at)
                        })?,
                        kind,
                        document: at,
                    });
                }
            }
        }
        Ok(file)
    }

    /// The cluster's resolved view; the file must have a `Cluster`.
    pub fn resolve(&self) -> Result<ResolvedCluster, ClusterfileError> {
        self.cluster
            .as_ref()
            .ok_or_else(|| {
                ClusterfileError::new(ErrorKind::Incomplete, "the Clusterfile has no Cluster document (kind: Cluster, apiVersion: sealer.io/v2)")
            })?
            .resolve()
    }

    /// The kubeadm documents as one multi-document YAML text, for the
    /// kubeadm configuration merge; `None` when there are none.
    pub fn kubeadm_yaml(&self) -> Option<String> {
        if self.kubeadm.is_empty() {
            return None;
        }
        Some(
            self.kubeadm
                .iter()
                .map(|d| d.yaml.as_str())
                .collect::<Vec<_>>()
                .join("---\n"),
        )
    }
}

fn duplicate(at: &DocRef, kind: &str, first: Option<&DocRef>) -> ClusterfileError {
    let first = first
        .map(|d| format!(" (the first is document {})", d.index))
        .unwrap_or_default();
    ClusterfileError::new(
        ErrorKind::Duplicate,
        format!("a Clusterfile holds one {kind}{first}"),
    )
    .in_doc(at)
    .at("kind")
}

impl ResolvedCluster {
    /// The hosts as plugin selection sees them.
    pub fn host_facts(&self) -> Vec<HostFacts<'_>> {
        self.hosts
            .iter()
            .map(|h| HostFacts {
                ip: h.ip,
                roles: &h.roles,
                labels: &h.labels,
                master0: h.master0,
            })
            .collect()
    }

    /// Every host's IP, in order (the targets of an install or removal).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.hosts.iter().map(|h| h.ip).collect()
    }

    /// The plugin runs at `stage` of `operation` on `targets`
    /// ([`plugin_runs`] with this cluster's hosts).
    pub fn plugin_runs<'a>(
        &self,
        plugins: &'a [Plugin],
        operation: Operation,
        stage: Stage,
        targets: &[IpAddr],
    ) -> Vec<PluginRun<'a>> {
        plugin_runs(plugins, operation, stage, &self.host_facts(), targets)
    }
}
