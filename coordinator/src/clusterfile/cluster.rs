//! The `Cluster` kind (sealer's v2 schema) and its resolved view: hosts with
//! roles, master0, the cluster env as sealer computes it, the registry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_norway::Value;

use seaport_shared::cluster::ClusterName;

use super::error::{ClusterfileError, DocRef, ErrorKind, Warning};
use super::fields::{env_list, ip_list, string_list, string_map, taint_list, Doc};
use super::taint::TaintOp;
use crate::plan::{HostRole, HostSpec};

/// sealer's default local registry domain.
pub const DEFAULT_REGISTRY_DOMAIN: &str = "sea.hub";
/// sealer's default local registry port.
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;

/// Env keys sealer computes from the registry and network settings; a value
/// the user gives for one of them is dropped, as sealer drops it.
pub const COMPUTED_ENV_KEYS: &[&str] = &[
    "LocalRegistryDomain",
    "LocalRegistryPort",
    "LocalRegistryURL",
    "ExternalRegistryDomain",
    "ExternalRegistryPort",
    "ExternalRegistryURL",
    "RegistryDomain",
    "RegistryPort",
    "RegistryURL",
    "ContainerRuntime",
    "DNSSvcIP",
    "KubeSvcIP",
];

/// A `Cluster` document as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Where it was read from (for error messages), if from a file.
    pub document: Option<DocRef>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.image`: the cluster image.
    pub image: String,
    /// `spec.env`, `KEY=VALUE` entries in order (repeats kept).
    pub env: Vec<(String, String)>,
    /// `spec.cmd`: replaces the image's CMD.
    pub cmd: Vec<String>,
    /// `spec.cmd_args`: appended to the image's CMD.
    pub cmd_args: Vec<String>,
    /// `spec.appNames`: the image's apps to launch.
    pub app_names: Vec<String>,
    /// `spec.hosts`.
    pub hosts: Vec<Host>,
    /// `spec.hostAliases`: entries for every host's `/etc/hosts`.
    pub host_aliases: Vec<HostAlias>,
    /// `spec.registry`.
    pub registry: Registry,
    /// `spec.containerRuntime.type`.
    pub container_runtime: Option<String>,
    /// `spec.dataRoot`.
    pub data_root: Option<String>,
    /// `spec.imagePolicy`: Seaport's image signature policy for this
    /// cluster, added to the coordinator's.
    pub image_policy: ImagePolicy,
}

/// `spec.imagePolicy` (Seaport's, not sealer's): images of this cluster
/// must be signed by one of these keys, on top of the coordinator's
/// `--trusted-keys`, and are refused unsigned when `requireSigned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    /// `requireSigned`.
    pub require_signed: bool,
    /// `trustedKeys`: PEM public keys (ECDSA P-256), checked when read.
    pub trusted_keys: Vec<String>,
}

/// One `spec.hosts` entry: IPs sharing roles, env, labels and taints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// `ips` (ranges expanded).
    pub ips: Vec<IpAddr>,
    /// `roles`: `master` or `node`, plus any custom roles plugins select on.
    pub roles: Vec<String>,
    /// `env`, over the cluster's.
    pub env: Vec<(String, String)>,
    /// `labels` for the Kubernetes nodes.
    pub labels: BTreeMap<String, String>,
    /// `taints` to add to (or, with a trailing `-`, remove from) the nodes.
    pub taints: Vec<TaintOp>,
}

/// A `spec.hostAliases` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAlias {
    /// The address.
    pub ip: IpAddr,
    /// Names for it.
    pub hostnames: Vec<String>,
}

/// `spec.registry`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// `localRegistry`: the registry Seaport runs from the image's cache.
    pub local: Option<LocalRegistry>,
    /// `externalRegistry`: a registry the cluster pulls from instead.
    pub external: Option<RegistryEndpoint>,
}

/// `spec.registry.localRegistry`; unset fields take sealer's defaults when
/// resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalRegistry {
    /// `domain` (default `sea.hub`).
    pub domain: Option<String>,
    /// `port` (default 5000).
    pub port: Option<u16>,
    /// `username`.
    pub username: Option<String>,
    /// `password`.
    pub password: Option<String>,
    /// `ha`: run it on every master (default true).
    pub ha: Option<bool>,
    /// `insecure`: plain HTTP (default false: TLS, as sealer has it).
    pub insecure: Option<bool>,
    /// `cert.subjectAltName.dnsNames`.
    pub cert_dns_names: Vec<String>,
    /// `cert.subjectAltName.ips`.
    pub cert_ips: Vec<IpAddr>,
    /// Seaport's `cert.ca`, `cert.certificate`, `cert.key`: a certificate
    /// to serve instead of a generated one, checked when read.
    pub cert_given: Option<seaport_shared::registry_cert::RegistryCert>,
}

impl LocalRegistry {
    /// Whether the Clusterfile says anything under `cert`.
    fn cert_asked(&self) -> bool {
        !self.cert_dns_names.is_empty() || !self.cert_ips.is_empty() || self.cert_given.is_some()
    }
}

/// `spec.registry.externalRegistry`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// `domain` (required).
    pub domain: String,
    /// `port`; none means the domain alone.
    pub port: Option<u16>,
    /// `username`.
    pub username: Option<String>,
    /// `password`.
    pub password: Option<String>,
}

// ---- as written -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSpec {
    #[serde(default)]
    image: Option<String>,
    #[serde(default, deserialize_with = "env_list")]
    env: Vec<(String, String)>,
    #[serde(default, rename = "cmd_args", deserialize_with = "string_list")]
    cmd_args: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    cmd: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    app_names: Vec<String>,
    #[serde(default)]
    hosts: Option<Vec<RawHost>>,
    #[serde(default)]
    ssh: Option<RawSsh>,
    #[serde(default)]
    container_runtime: Option<RawRuntime>,
    #[serde(default)]
    host_aliases: Option<Vec<RawHostAlias>>,
    #[serde(default)]
    registry: Option<RawRegistry>,
    #[serde(default)]
    data_root: Option<String>,
    #[serde(default)]
    image_policy: Option<RawImagePolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawImagePolicy {
    #[serde(default)]
    require_signed: Option<bool>,
    #[serde(default, deserialize_with = "string_list")]
    trusted_keys: Vec<String>,
}

/// sealer's SSH settings: accepted so existing files parse, never used.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSsh {
    #[serde(default)]
    encrypted: Option<Value>,
    #[serde(default)]
    user: Option<Value>,
    #[serde(default)]
    passwd: Option<Value>,
    #[serde(default)]
    pk: Option<Value>,
    #[serde(default)]
    pk_passwd: Option<Value>,
    #[serde(default)]
    port: Option<Value>,
}

impl RawSsh {
    fn is_empty(&self) -> bool {
        [
            &self.encrypted,
            &self.user,
            &self.passwd,
            &self.pk,
            &self.pk_passwd,
            &self.port,
        ]
        .iter()
        .all(|v| v.is_none())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHost {
    #[serde(default, deserialize_with = "ip_list")]
    ips: Vec<IpAddr>,
    #[serde(default, deserialize_with = "string_list")]
    roles: Vec<String>,
    #[serde(default)]
    ssh: Option<RawSsh>,
    #[serde(default, deserialize_with = "env_list")]
    env: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_map")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "taint_list")]
    taints: Vec<TaintOp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRuntime {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHostAlias {
    #[serde(default)]
    ip: String,
    #[serde(default, deserialize_with = "string_list")]
    hostnames: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRegistry {
    #[serde(default)]
    local_registry: Option<RawLocalRegistry>,
    #[serde(default)]
    external_registry: Option<RawEndpoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLocalRegistry {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ha: Option<bool>,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    cert: Option<RawCert>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCert {
    #[serde(default)]
    subject_alt_name: Option<RawSan>,
    /// Seaport's: the CA hosts trust (PEM).
    #[serde(default)]
    ca: Option<String>,
    /// Seaport's: the server certificate and intermediates (PEM).
    #[serde(default)]
    certificate: Option<String>,
    /// Seaport's: the server's key (PEM).
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSan {
    #[serde(default, deserialize_with = "string_list")]
    dns_names: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn port(p: Option<u16>) -> Option<u16> {
    p.filter(|p| *p != 0)
}

/// Reads a Cluster document; `warnings` collects what is ignored.
pub(crate) fn from_doc(
    doc: Doc<RawSpec>,
    at: &DocRef,
    warnings: &mut Vec<Warning>,
) -> Result<Cluster, ClusterfileError> {
    let spec = doc.spec.unwrap_or_default();
    let warn = |warnings: &mut Vec<Warning>, path: String, message: String| {
        warnings.push(Warning {
            document: Some(at.clone()),
            path: Some(path),
            message,
        })
    };
    let invalid = |path: String, message: String| {
        ClusterfileError::new(ErrorKind::InvalidValue, message)
            .in_doc(at)
            .at(path)
    };

    if spec.ssh.as_ref().is_some_and(|s| !s.is_empty()) {
        warn(
            warnings,
            "spec.ssh".into(),
            "ignored: Seaport reaches hosts through their enrolled agents, not SSH".into(),
        );
    }
    for (i, (k, _)) in spec.env.iter().enumerate() {
        if COMPUTED_ENV_KEYS.contains(&k.as_str()) {
            warn(
                warnings,
                format!("spec.env[{i}]"),
                format!("{k} is ignored: it is computed from spec.registry and spec.containerRuntime, as sealer does"),
            );
        }
    }

    let mut hosts = Vec::new();
    for (i, h) in spec.hosts.unwrap_or_default().into_iter().enumerate() {
        if h.ssh.as_ref().is_some_and(|s| !s.is_empty()) {
            warn(
                warnings,
                format!("spec.hosts[{i}].ssh"),
                "ignored: Seaport reaches hosts through their enrolled agents, not SSH".into(),
            );
        }
        hosts.push(Host {
            ips: h.ips,
            roles: h.roles,
            env: h.env,
            labels: h.labels,
            taints: h.taints,
        });
    }

    let mut host_aliases = Vec::new();
    for (i, a) in spec
        .host_aliases
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let ip = a.ip.trim().parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("spec.hostAliases[{i}].ip"),
                format!("{:?} is not an IP address", a.ip),
            )
        })?;
        if a.hostnames.is_empty() {
            return Err(ClusterfileError::new(
                ErrorKind::MissingField,
                "a host alias needs hostnames",
            )
            .in_doc(at)
            .at(format!("spec.hostAliases[{i}].hostnames")));
        }
        host_aliases.push(HostAlias {
            ip,
            hostnames: a.hostnames,
        });
    }

    let raw_registry = spec.registry.unwrap_or_default();
    let external = match raw_registry.external_registry {
        None => None,
        Some(e) => Some(RegistryEndpoint {
            domain: non_empty(e.domain).ok_or_else(|| {
                ClusterfileError::new(
                    ErrorKind::MissingField,
                    "an external registry needs a domain",
                )
                .in_doc(at)
                .at("spec.registry.externalRegistry.domain")
            })?,
            port: port(e.port),
            username: non_empty(e.username),
            password: non_empty(e.password),
        }),
    };
    let local = match raw_registry.local_registry {
        None => None,
        Some(l) => Some(local_registry(l, &invalid, at, warnings)?),
    };

    let raw_policy = spec.image_policy.unwrap_or_default();
    for (i, key) in raw_policy.trusted_keys.iter().enumerate() {
        seaport_rootfs::signing::PublicKey::from_pem(key)
            .map_err(|e| invalid(format!("spec.imagePolicy.trustedKeys[{i}]"), e.to_string()))?;
    }
    let image_policy = ImagePolicy {
        require_signed: raw_policy.require_signed.unwrap_or(false),
        trusted_keys: raw_policy.trusted_keys,
    };

    let name = doc.metadata.name;
    if !name.is_empty() {
        ClusterName::parse(&name).map_err(|e| invalid("metadata.name".into(), e.to_string()))?;
    }
    Ok(Cluster {
        document: Some(at.clone()),
        name,
        labels: doc.metadata.labels,
        annotations: doc.metadata.annotations,
        image: spec.image.unwrap_or_default(),
        env: spec.env,
        cmd: spec.cmd,
        cmd_args: spec.cmd_args,
        app_names: spec.app_names,
        hosts,
        host_aliases,
        registry: Registry { local, external },
        container_runtime: non_empty(spec.container_runtime.and_then(|r| r.kind)),
        data_root: non_empty(spec.data_root),
        image_policy,
    })
}

/// `spec.registry.localRegistry` as written, checked: the htpasswd user,
/// the certificate's names, a given certificate.
fn local_registry(
    l: RawLocalRegistry,
    invalid: &dyn Fn(String, String) -> ClusterfileError,
    doc: &DocRef,
    warnings: &mut Vec<Warning>,
) -> Result<LocalRegistry, ClusterfileError> {
    let at = "spec.registry.localRegistry";
    let mut warn = |path: String, message: String| {
        warnings.push(Warning {
            document: Some(doc.clone()),
            path: Some(path),
            message,
        })
    };
    let cert = l.cert.unwrap_or_default();
    let san = cert.subject_alt_name.unwrap_or_default();
    let mut cert_ips = Vec::new();
    for (i, ip) in san.ips.iter().enumerate() {
        cert_ips.push(ip.trim().parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("{at}.cert.subjectAltName.ips[{i}]"),
                format!("{ip:?} is not an IP address"),
            )
        })?);
    }
    for (i, n) in san.dns_names.iter().enumerate() {
        let ok = !n.is_empty()
            && n.parse::<IpAddr>().is_err()
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_ok();
        if !ok {
            return Err(invalid(
                format!("{at}.cert.subjectAltName.dnsNames[{i}]"),
                format!("{n:?} is not a DNS name"),
            ));
        }
    }
    let domain = non_empty(l.domain);
    let insecure = l.insecure;
    let pem = [
        ("ca", non_empty(cert.ca)),
        ("certificate", non_empty(cert.certificate)),
        ("key", non_empty(cert.key)),
    ];
    let cert_given = if pem.iter().all(|(_, v)| v.is_none()) {
        None
    } else if let Some((missing, _)) = pem.iter().find(|(_, v)| v.is_none()) {
        return Err(ClusterfileError::new(
            ErrorKind::MissingField,
            "a given registry certificate needs ca, certificate and key (PEM) together",
        )
        .in_doc(doc)
        .at(format!("{at}.cert.{missing}")));
    } else {
        let [(_, Some(ca)), (_, Some(certificate)), (_, Some(key))] = pem else {
            unreachable!("all three are set")
        };
        let given = seaport_shared::registry_cert::RegistryCert {
            ca,
            certificate,
            key,
        };
        let name = domain.as_deref().unwrap_or(DEFAULT_REGISTRY_DOMAIN);
        // Refused here, before any host changes: a certificate the hosts
        // would not accept for the registry's name, or that has expired.
        if insecure != Some(true) {
            use seaport_shared::registry_cert::{check, RegistryCertError as E};
            check(&given, name, std::time::SystemTime::now()).map_err(|e| {
                let field = match &e {
                    E::KeyMismatch => "key",
                    E::BadCa(_) => "ca",
                    E::Pem(seaport_shared::pki::PkiError::NoKey(_)) => "key",
                    E::Pem(seaport_shared::pki::PkiError::NoCertificate(w)) if w == "the CA" => {
                        "ca"
                    }
                    _ => "certificate",
                };
                invalid(format!("{at}.cert.{field}"), e.to_string())
            })?;
        }
        Some(given)
    };
    let local = LocalRegistry {
        domain,
        port: port(l.port),
        username: non_empty(l.username),
        password: non_empty(l.password),
        ha: l.ha,
        insecure,
        cert_dns_names: san.dns_names,
        cert_ips,
        cert_given,
    };

    // Username and password protect the local registry (htpasswd) only
    // together, as sealer has it.
    if let Some(u) = &local.username {
        if u.contains(':') || u.chars().any(char::is_control) {
            return Err(invalid(
                format!("{at}.username"),
                "must not contain ':' or control characters (an htpasswd user name)".into(),
            ));
        }
    }
    if local
        .password
        .as_ref()
        .is_some_and(|p| p.chars().any(char::is_control))
    {
        return Err(invalid(
            format!("{at}.password"),
            "must not contain control characters".into(),
        ));
    }
    if local.username.is_some() != local.password.is_some() {
        let (set, unset) = if local.username.is_some() {
            ("username", "password")
        } else {
            ("password", "username")
        };
        warn(
            format!("{at}.{set}"),
            format!("ignored without {unset}: the local registry serves without authentication"),
        );
    }
    if local.insecure == Some(true) && local.cert_asked() {
        warn(
            format!("{at}.cert"),
            "ignored with insecure: true: the local registry serves plain HTTP".into(),
        );
    }
    Ok(local)
}

// ---- resolved ---------------------------------------------------------

/// A host of the cluster with everything about it in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedHost {
    /// Its IP.
    pub ip: IpAddr,
    /// Master or node.
    pub role: HostRole,
    /// Every role given, custom ones included (plugins select on them).
    pub roles: Vec<String>,
    /// Whether it is the first master.
    pub master0: bool,
    /// Its own env entries (the agent's host env).
    pub own_env: Vec<(String, String)>,
    /// The env its scripts see: the cluster's, its own over it, and
    /// `HostIP` unless given.
    pub env: BTreeMap<String, String>,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<TaintOp>,
}

/// The registry the cluster uses, sealer's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRegistry {
    /// The domain images are pulled from (the external registry's when one
    /// is given, else the local one's).
    pub domain: String,
    /// Its port, if any.
    pub port: Option<u16>,
    /// `domain:port`, or the domain alone.
    pub url: String,
    /// The local registry, when Seaport runs one.
    pub local: Option<ResolvedLocalRegistry>,
    /// The external registry, when given.
    pub external: Option<RegistryEndpoint>,
    /// The hosts that run the local registry: every master when `ha`, else
    /// master0; none without a local registry.
    pub hosts: Vec<IpAddr>,
}

/// The local registry with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedLocalRegistry {
    /// Domain.
    pub domain: String,
    /// Port.
    pub port: u16,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Whether it runs on every master.
    pub ha: bool,
    /// Whether it serves plain HTTP.
    pub insecure: bool,
    /// Extra DNS names for its certificate.
    pub cert_dns_names: Vec<String>,
    /// Extra IPs for its certificate.
    pub cert_ips: Vec<IpAddr>,
    /// The certificate the Clusterfile gives (checked), if any.
    pub cert_given: Option<seaport_shared::registry_cert::RegistryCert>,
}

/// A cluster ready to plan: hosts with roles, master0, env, registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedCluster {
    /// The cluster's name.
    pub name: ClusterName,
    /// The cluster image.
    pub image: String,
    /// Every host, in Clusterfile order.
    pub hosts: Vec<ResolvedHost>,
    /// The first master.
    pub master0: IpAddr,
    /// The cluster env as sealer computes it: the user's entries (computed
    /// keys dropped), then the service IPs from `SvcCIDR`, the registry
    /// keys, `ContainerRuntime`, and `HostIPFamily=IPv6` on IPv6 clusters.
    pub env: Vec<(String, String)>,
    /// `spec.cmd`.
    pub cmd: Vec<String>,
    /// `spec.cmd_args`.
    pub cmd_args: Vec<String>,
    /// `spec.appNames`.
    pub app_names: Vec<String>,
    /// `spec.hostAliases`.
    pub host_aliases: Vec<HostAlias>,
    /// The registry.
    pub registry: ResolvedRegistry,
    /// `spec.containerRuntime.type`.
    pub container_runtime: Option<String>,
    /// `spec.dataRoot`; none means Seaport's default.
    pub data_root: Option<String>,
}

impl ResolvedCluster {
    /// The masters, in order (the first is master0).
    pub fn masters(&self) -> impl Iterator<Item = &ResolvedHost> {
        self.hosts.iter().filter(|h| h.role == HostRole::Master)
    }

    /// The workers, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &ResolvedHost> {
        self.hosts.iter().filter(|h| h.role == HostRole::Node)
    }

    /// The host with this IP.
    pub fn host(&self, ip: IpAddr) -> Option<&ResolvedHost> {
        self.hosts.iter().find(|h| h.ip == ip)
    }

    /// The planner's hosts: masters first in order, then the workers.
    pub fn plan_hosts(&self) -> Vec<HostSpec> {
        self.masters()
            .chain(self.nodes())
            .map(|h| HostSpec {
                ip: h.ip.to_string(),
                role: h.role,
            })
            .collect()
    }
}

impl Cluster {
    /// Checks what a cluster needs and computes hosts, master0, env and
    /// registry the way sealer does.
    pub fn resolve(&self) -> Result<ResolvedCluster, ClusterfileError> {
        let err = |kind: ErrorKind, path: &str, message: String| {
            let mut e = ClusterfileError::new(kind, message).at(path);
            e.document = self.document.clone();
            e
        };
        if self.name.is_empty() {
            return Err(err(
                ErrorKind::MissingField,
                "metadata.name",
                "the cluster needs a name".into(),
            ));
        }
        let name = ClusterName::parse(&self.name)
            .map_err(|e| err(ErrorKind::InvalidValue, "metadata.name", e.to_string()))?;
        if self.image.trim().is_empty() {
            return Err(err(
                ErrorKind::MissingField,
                "spec.image",
                "the cluster needs an image".into(),
            ));
        }
        if self.hosts.is_empty() {
            return Err(err(
                ErrorKind::Incomplete,
                "spec.hosts",
                "the cluster has no hosts".into(),
            ));
        }

        let cluster_env = self.cluster_env()?;
        let cluster_map: BTreeMap<String, String> = cluster_env.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        let mut hosts = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let path = format!("spec.hosts[{i}]");
            if h.ips.is_empty() {
                return Err(err(
                    ErrorKind::MissingField,
                    &format!("{path}.ips"),
                    "a host entry needs at least one IP".into(),
                ));
            }
            let master = h.roles.iter().any(|r| r == "master");
            let node = h.roles.iter().any(|r| r == "node");
            let role = match (master, node) {
                (true, _) => HostRole::Master,
                (false, true) => HostRole::Node,
                (false, false) => {
                    return Err(err(
                        ErrorKind::InvalidValue,
                        &format!("{path}.roles"),
                        format!("roles {:?} include neither master nor node", h.roles),
                    ))
                }
            };
            for ip in &h.ips {
                if !seen.insert(*ip) {
                    return Err(err(
                        ErrorKind::Duplicate,
                        &format!("{path}.ips"),
                        format!("host {ip} is listed twice"),
                    ));
                }
                let mut env = cluster_map.clone();
                env.extend(h.env.iter().cloned());
                env.entry("HostIP".into()).or_insert_with(|| ip.to_string());
                hosts.push(ResolvedHost {
                    ip: *ip,
                    role,
                    roles: h.roles.clone(),
                    master0: false,
                    own_env: h.env.clone(),
                    env,
                    labels: h.labels.clone(),
                    taints: h.taints.clone(),
                });
            }
        }
        let Some(master0) = hosts.iter_mut().find(|h| h.role == HostRole::Master) else {
            return Err(err(
                ErrorKind::Incomplete,
                "spec.hosts",
                "the cluster has no master: give one host the role master".into(),
            ));
        };
        master0.master0 = true;
        let master0 = master0.ip;
        if hosts.iter().any(|h| h.ip.is_ipv4() != master0.is_ipv4()) {
            return Err(err(
                ErrorKind::InvalidValue,
                "spec.hosts",
                "all hosts must be in the same IP family, not a mix of IPv4 and IPv6".into(),
            ));
        }

        let mut env = cluster_env;
        if master0.is_ipv6() && !env.iter().any(|(k, v)| k == "HostIPFamily" && v == "IPv6") {
            env.push(("HostIPFamily".into(), "IPv6".into()));
            for h in &mut hosts {
                h.env
                    .entry("HostIPFamily".into())
                    .or_insert_with(|| "IPv6".into());
            }
        }

        let masters: Vec<IpAddr> = hosts
            .iter()
            .filter(|h| h.role == HostRole::Master)
            .map(|h| h.ip)
            .collect();
        let local = self.resolved_local();
        let registry_hosts = match &local {
            Some(l) if l.ha => masters,
            Some(_) => vec![master0],
            None => vec![],
        };
        let (domain, port) = match (&self.registry.external, &local) {
            (Some(e), _) => (e.domain.clone(), e.port),
            (None, Some(l)) => (l.domain.clone(), Some(l.port)),
            (None, None) => {
                unreachable!("resolved_local gives a registry when there is no external one")
            }
        };
        Ok(ResolvedCluster {
            name,
            image: self.image.clone(),
            hosts,
            master0,
            env,
            cmd: self.cmd.clone(),
            cmd_args: self.cmd_args.clone(),
            app_names: self.app_names.clone(),
            host_aliases: self.host_aliases.clone(),
            registry: ResolvedRegistry {
                url: registry_url(&domain, port),
                domain,
                port,
                local,
                external: self.registry.external.clone(),
                hosts: registry_hosts,
            },
            container_runtime: self.container_runtime.clone(),
            data_root: self.data_root.clone(),
        })
    }

    fn resolved_local(&self) -> Option<ResolvedLocalRegistry> {
        let local = match (&self.registry.local, &self.registry.external) {
            (Some(l), _) => l.clone(),
            (None, None) => LocalRegistry::default(),
            (None, Some(_)) => return None,
        };
        Some(ResolvedLocalRegistry {
            domain: local
                .domain
                .unwrap_or_else(|| DEFAULT_REGISTRY_DOMAIN.to_string()),
            port: local.port.unwrap_or(DEFAULT_REGISTRY_PORT),
            username: local.username,
            password: local.password,
            ha: local.ha.unwrap_or(true),
            // TLS unless `insecure: true`, as sealer has it.
            insecure: local.insecure.unwrap_or(false),
            cert_dns_names: local.cert_dns_names,
            cert_ips: local.cert_ips,
            cert_given: local.cert_given,
        })
    }

    /// sealer's cluster env, in its order (see [`ResolvedCluster::env`]).
    fn cluster_env(&self) -> Result<Vec<(String, String)>, ClusterfileError> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| !COMPUTED_ENV_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        let svc_cidr = env
            .iter()
            .rev()
            .find(|(k, _)| k == "SvcCIDR")
            .map(|(_, v)| v.clone());
        if let Some(cidr) = svc_cidr.filter(|c| !c.is_empty()) {
            let first = cidr.split(',').next().unwrap_or_default();
            let ips = index_ip(first, 1).and_then(|kube| Ok((kube, index_ip(first, 10)?)));
            let (kube, dns) = ips.map_err(|m| {
                let mut e = ClusterfileError::new(ErrorKind::InvalidValue, format!("SvcCIDR: {m}"))
                    .at("spec.env");
                e.document = self.document.clone();
                e
            })?;
            env.push(("KubeSvcIP".into(), kube.to_string()));
            env.push(("DNSSvcIP".into(), dns.to_string()));
        }
        let mut set = |prefix: &str, domain: &str, port: Option<u16>| {
            env.push((format!("{prefix}Domain"), domain.to_string()));
            env.push((
                format!("{prefix}Port"),
                port.map(|p| p.to_string()).unwrap_or_default(),
            ));
            env.push((format!("{prefix}URL"), registry_url(domain, port)));
        };
        let local = self.resolved_local();
        if let Some(l) = &local {
            set("LocalRegistry", &l.domain, Some(l.port));
        }
        if let Some(e) = &self.registry.external {
            set("ExternalRegistry", &e.domain, e.port);
        }
        match (&self.registry.external, &local) {
            (Some(e), _) => set("Registry", &e.domain, e.port),
            (None, Some(l)) => set("Registry", &l.domain, Some(l.port)),
            (None, None) => {}
        }
        if let Some(rt) = &self.container_runtime {
            env.push(("ContainerRuntime".into(), rt.clone()));
        }
        Ok(env)
    }
}

fn registry_url(domain: &str, port: Option<u16>) -> String {
    match port {
        None => domain.to_string(),
        Some(p) if domain.contains(':') => format!("[{domain}]:{p}"),
        Some(p) => format!("{domain}:{p}"),
    }
}

/// The address `index` after a CIDR's network address, if inside it.
/// A CIDR that does not hold the address asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CidrError {
    /// Not a CIDR.
    #[error("{0:?} is not a CIDR such as 10.96.0.0/16")]
    NotACidr(String),
    /// Too small.
    #[error("{cidr:?} is too small to hold address number {index}")]
    TooSmall {
        /// The CIDR.
        cidr: String,
        /// The index.
        index: u128,
    },
}

fn index_ip(cidr: &str, index: u128) -> Result<IpAddr, CidrError> {
    let cidr = cidr.trim();
    let bad = || CidrError::NotACidr(cidr.to_string());
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    if len > bits {
        return Err(bad());
    }
    let host_bits = bits - len;
    let value = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let network = if host_bits >= 128 {
        0
    } else {
        value >> host_bits << host_bits
    };
    let size_ok = host_bits >= 128 || index < (1u128 << host_bits);
    if !size_ok {
        return Err(CidrError::TooSmall {
            cidr: cidr.to_string(),
            index,
        });
    }
    let n = network + index;
    Ok(match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).map_err(|_| bad())?)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ips_come_from_the_first_svc_cidr() {
        assert_eq!(
            index_ip("10.96.0.0/22", 1).unwrap().to_string(),
            "10.96.0.1"
        );
        assert_eq!(
            index_ip("10.96.0.0/22", 10).unwrap().to_string(),
            "10.96.0.10"
        );
        // A host address in the CIDR counts from the network address, as
        // Go's net.ParseCIDR does.
        assert_eq!(
            index_ip("10.96.3.7/22", 10).unwrap().to_string(),
            "10.96.0.10"
        );
        assert_eq!(
            index_ip("fd00:10::/108", 10).unwrap().to_string(),
            "fd00:10::a"
        );
        assert!(index_ip("10.96.0.0/29", 10)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(index_ip("10.96.0.0", 1).is_err());
        assert!(index_ip("10.96.0.0/33", 1).is_err());
    }

    #[test]
    fn registry_urls_bracket_ipv6_and_drop_an_absent_port() {
        assert_eq!(registry_url("sea.hub", Some(5000)), "sea.hub:5000");
        assert_eq!(registry_url("reg.example.com", None), "reg.example.com");
        assert_eq!(registry_url("fd00::1", Some(5000)), "[fd00::1]:5000");
    }
}
