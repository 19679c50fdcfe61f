//! Validation of kubeadm configuration files against the kubeadm API
//! version a kubeadm release reads, as kubeadm's strict decoding does:
//! every document's `apiVersion` and `kind` must be registered, every field
//! known at its level and of its type, required fields present.
//!
//! The field lists follow kubeadm's published API types
//! (`cmd/kubeadm/app/apis/kubeadm/v1beta{2,3,4}/types.go` of
//! kubernetes/kubernetes, with `corev1.Taint`, the bootstrap token type and,
//! for v1beta4, `Arg`, `EnvVar`, `Timeouts`). Which versions a release
//! reads for `init`/`join` follows kubeadm's `validateSupportedVersion`
//! (a deprecated version is read with a warning, an old one refused):
//! 1.15–1.21 v1beta2 (v1beta1 deprecated); 1.22–1.26 v1beta3 (v1beta2
//! deprecated); 1.27–1.30 v1beta3 only; from 1.31 v1beta4 (v1beta3
//! deprecated).
//!
//! Stricter than kubeadm where kubeadm only warns: an unknown field
//! (kubeadm up to 1.22 logs "unknown field" from its strict check and goes
//! on) is an error here, so a misspelt or misplaced field fails the install
//! instead of being dropped silently.
//!
//! `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1`) and
//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) are checked
//! by their own apiVersion and as mappings; their fields are not listed
//! (kubeadm passes them to the components' own decoders and only warns on
//! unknown fields there).

use std::path::Path;

use serde_norway::Value;

use crate::config::{self, Document};

/// A field's shape.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
    /// A Go duration (`5m0s`, `4m`, `876000h`).
    Duration,
    /// A list of strings.
    StrList,
    /// A map of strings to strings.
    StrMap,
    /// A map of strings to booleans.
    BoolMap,
    /// An object with these fields.
    Obj(&'static [Field]),
    /// A list of such objects.
    ObjList(&'static [Field]),
    /// Anything (not checked further).
    Any,
}

/// One field of an object.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its JSON name.
    pub name: &'static str,
    /// Its shape.
    pub shape: Shape,
    /// Whether kubeadm's validation requires it.
    pub required: bool,
}

const fn f(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: false,
    }
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: true,
    }
}

use Shape::*;

// Shared by every version.
const BOOTSTRAP_TOKEN: &[Field] = &[
    req("token", Str),
    f("description", Str),
    f("ttl", Duration),
    f("expires", Str),
    f("usages", StrList),
    f("groups", StrList),
];
const TAINT: &[Field] = &[
    req("key", Str),
    f("value", Str),
    req("effect", Str),
    f("timeAdded", Str),
];
const API_ENDPOINT: &[Field] = &[f("advertiseAddress", Str), f("bindPort", Int)];
const NETWORKING: &[Field] = &[
    f("serviceSubnet", Str),
    f("podSubnet", Str),
    f("dnsDomain", Str),
];
const HOST_PATH_MOUNT: &[Field] = &[
    req("name", Str),
    req("hostPath", Str),
    req("mountPath", Str),
    f("readOnly", Bool),
    f("pathType", Str),
];
const EXTERNAL_ETCD: &[Field] = &[
    req("endpoints", StrList),
    f("caFile", Str),
    f("certFile", Str),
    f("keyFile", Str),
];
const BOOTSTRAP_TOKEN_DISCOVERY: &[Field] = &[
    req("token", Str),
    req("apiServerEndpoint", Str),
    f("caCertHashes", StrList),
    f("unsafeSkipCAVerification", Bool),
];
const FILE_DISCOVERY: &[Field] = &[req("kubeConfigPath", Str)];
const JOIN_CONTROL_PLANE: &[Field] = &[
    f("localAPIEndpoint", Obj(API_ENDPOINT)),
    f("certificateKey", Str),
];
const PATCHES: &[Field] = &[f("directory", Str)];

// v1beta2.
const B2_NODE_REGISTRATION: &[Field] = &[
    f("name", Str),
    f("criSocket", Str),
    f("taints", ObjList(TAINT)),
    f("kubeletExtraArgs", StrMap),
    f("ignorePreflightErrors", StrList),
];
const B2_COMPONENT: &[Field] = &[
    f("extraArgs", StrMap),
    f("extraVolumes", ObjList(HOST_PATH_MOUNT)),
];
const B2_API_SERVER: &[Field] = &[
    f("extraArgs", StrMap),
    f("extraVolumes", ObjList(HOST_PATH_MOUNT)),
    f("certSANs", StrList),
    f("timeoutForControlPlane", Duration),
];
const B2_DNS: &[Field] = &[
    f("type", Str),
    f("imageRepository", Str),
    f("imageTag", Str),
];
const B2_LOCAL_ETCD: &[Field] = &[
    f("imageRepository", Str),
    f("imageTag", Str),
    f("dataDir", Str),
    f("extraArgs", StrMap),
    f("serverCertSANs", StrList),
    f("peerCertSANs", StrList),
];
const B2_ETCD: &[Field] = &[
    f("local", Obj(B2_LOCAL_ETCD)),
    f("external", Obj(EXTERNAL_ETCD)),
];
const B2_INIT: &[Field] = &[
    f("bootstrapTokens", ObjList(BOOTSTRAP_TOKEN)),
    f("nodeRegistration", Obj(B2_NODE_REGISTRATION)),
    f("localAPIEndpoint", Obj(API_ENDPOINT)),
    f("certificateKey", Str),
];
const B2_CLUSTER: &[Field] = &[
    f("etcd", Obj(B2_ETCD)),
    f("networking", Obj(NETWORKING)),
    f("kubernetesVersion", Str),
    f("controlPlaneEndpoint", Str),
    f("apiServer", Obj(B2_API_SERVER)),
    f("controllerManager", Obj(B2_COMPONENT)),
    f("scheduler", Obj(B2_COMPONENT)),
    f("dns", Obj(B2_DNS)),
    f("certificatesDir", Str),
    f("imageRepository", Str),
    f("useHyperKubeImage", Bool),
    f("featureGates", BoolMap),
    f("clusterName", Str),
];
const B2_DISCOVERY: &[Field] = &[
    f("bootstrapToken", Obj(BOOTSTRAP_TOKEN_DISCOVERY)),
    f("file", Obj(FILE_DISCOVERY)),
    f("tlsBootstrapToken", Str),
    f("timeout", Duration),
];
const B2_JOIN: &[Field] = &[
    f("nodeRegistration", Obj(B2_NODE_REGISTRATION)),
    f("caCertPath", Str),
    req("discovery", Obj(B2_DISCOVERY)),
    f("controlPlane", Obj(JOIN_CONTROL_PLANE)),
];
const B2_CLUSTER_STATUS: &[Field] = &[f("apiEndpoints", Any)];

// v1beta3: no dns.type, no useHyperKubeImage, no ClusterStatus;
// imagePullPolicy, skipPhases, patches.
const B3_NODE_REGISTRATION: &[Field] = &[
    f("name", Str),
    f("criSocket", Str),
    f("taints", ObjList(TAINT)),
    f("kubeletExtraArgs", StrMap),
    f("ignorePreflightErrors", StrList),
    f("imagePullPolicy", Str),
];
const B3_DNS: &[Field] = &[f("imageRepository", Str), f("imageTag", Str)];
const B3_INIT: &[Field] = &[
    f("bootstrapTokens", ObjList(BOOTSTRAP_TOKEN)),
    f("nodeRegistration", Obj(B3_NODE_REGISTRATION)),
    f("localAPIEndpoint", Obj(API_ENDPOINT)),
    f("certificateKey", Str),
    f("skipPhases", StrList),
    f("patches", Obj(PATCHES)),
];
const B3_CLUSTER: &[Field] = &[
    f("etcd", Obj(B2_ETCD)),
    f("networking", Obj(NETWORKING)),
    f("kubernetesVersion", Str),
    f("controlPlaneEndpoint", Str),
    f("apiServer", Obj(B2_API_SERVER)),
    f("controllerManager", Obj(B2_COMPONENT)),
    f("scheduler", Obj(B2_COMPONENT)),
    f("dns", Obj(B3_DNS)),
    f("certificatesDir", Str),
    f("imageRepository", Str),
    f("featureGates", BoolMap),
    f("clusterName", Str),
];
const B3_JOIN: &[Field] = &[
    f("nodeRegistration", Obj(B3_NODE_REGISTRATION)),
    f("caCertPath", Str),
    req("discovery", Obj(B2_DISCOVERY)),
    f("controlPlane", Obj(JOIN_CONTROL_PLANE)),
    f("skipPhases", StrList),
    f("patches", Obj(PATCHES)),
];

// v1beta4: extraArgs as name/value lists, extraEnvs, timeouts, dryRun,
// proxy, dns.disabled, encryptionAlgorithm, validity periods;
// apiServer.timeoutForControlPlane and discovery.timeout moved to timeouts.
const ARG: &[Field] = &[req("name", Str), req("value", Str)];
const ENV_VAR: &[Field] = &[req("name", Str), f("value", Str), f("valueFrom", Any)];
const TIMEOUTS: &[Field] = &[
    f("controlPlaneComponentHealthCheck", Duration),
    f("kubeletHealthCheck", Duration),
    f("kubernetesAPICall", Duration),
    f("etcdAPICall", Duration),
    f("tlsBootstrap", Duration),
    f("discovery", Duration),
    f("upgradeManifests", Duration),
];
const B4_NODE_REGISTRATION: &[Field] = &[
    f("name", Str),
    f("criSocket", Str),
    f("taints", ObjList(TAINT)),
    f("kubeletExtraArgs", ObjList(ARG)),
    f("ignorePreflightErrors", StrList),
    f("imagePullPolicy", Str),
    f("imagePullSerial", Bool),
];
const B4_COMPONENT: &[Field] = &[
    f("extraArgs", ObjList(ARG)),
    f("extraVolumes", ObjList(HOST_PATH_MOUNT)),
    f("extraEnvs", ObjList(ENV_VAR)),
];
const B4_API_SERVER: &[Field] = &[
    f("extraArgs", ObjList(ARG)),
    f("extraVolumes", ObjList(HOST_PATH_MOUNT)),
    f("extraEnvs", ObjList(ENV_VAR)),
    f("certSANs", StrList),
];
const B4_DNS: &[Field] = &[
    f("imageRepository", Str),
    f("imageTag", Str),
    f("disabled", Bool),
];
const B4_PROXY: &[Field] = &[f("disabled", Bool)];
const B4_LOCAL_ETCD: &[Field] = &[
    f("imageRepository", Str),
    f("imageTag", Str),
    f("dataDir", Str),
    f("extraArgs", ObjList(ARG)),
    f("extraEnvs", ObjList(ENV_VAR)),
    f("serverCertSANs", StrList),
    f("peerCertSANs", StrList),
];
const B4_ETCD: &[Field] = &[
    f("local", Obj(B4_LOCAL_ETCD)),
    f("external", Obj(EXTERNAL_ETCD)),
];
const B4_INIT: &[Field] = &[
    f("bootstrapTokens", ObjList(BOOTSTRAP_TOKEN)),
    f("dryRun", Bool),
    f("nodeRegistration", Obj(B4_NODE_REGISTRATION)),
    f("localAPIEndpoint", Obj(API_ENDPOINT)),
    f("certificateKey", Str),
    f("skipPhases", StrList),
    f("patches", Obj(PATCHES)),
    f("timeouts", Obj(TIMEOUTS)),
];
const B4_CLUSTER: &[Field] = &[
    f("etcd", Obj(B4_ETCD)),
    f("networking", Obj(NETWORKING)),
    f("kubernetesVersion", Str),
    f("controlPlaneEndpoint", Str),
    f("apiServer", Obj(B4_API_SERVER)),
    f("controllerManager", Obj(B4_COMPONENT)),
    f("scheduler", Obj(B4_COMPONENT)),
    f("dns", Obj(B4_DNS)),
    f("proxy", Obj(B4_PROXY)),
    f("certificatesDir", Str),
    f("imageRepository", Str),
    f("featureGates", BoolMap),
    f("clusterName", Str),
    f("encryptionAlgorithm", Str),
    f("certificateValidityPeriod", Duration),
    f("caCertificateValidityPeriod", Duration),
];
const B4_DISCOVERY: &[Field] = &[
    f("bootstrapToken", Obj(BOOTSTRAP_TOKEN_DISCOVERY)),
    f("file", Obj(FILE_DISCOVERY)),
    f("tlsBootstrapToken", Str),
];
const B4_JOIN: &[Field] = &[
    f("dryRun", Bool),
    f("nodeRegistration", Obj(B4_NODE_REGISTRATION)),
    f("caCertPath", Str),
    req("discovery", Obj(B4_DISCOVERY)),
    f("controlPlane", Obj(JOIN_CONTROL_PLANE)),
    f("skipPhases", StrList),
    f("patches", Obj(PATCHES)),
    f("timeouts", Obj(TIMEOUTS)),
];
const B4_RESET: &[Field] = &[
    f("cleanupTmpDir", Bool),
    f("certificatesDir", Str),
    f("criSocket", Str),
    f("dryRun", Bool),
    f("force", Bool),
    f("ignorePreflightErrors", StrList),
    f("skipPhases", StrList),
    f("unmountFlags", StrList),
    f("timeouts", Obj(TIMEOUTS)),
];
const B4_UPGRADE: &[Field] = &[
    f("apply", Any),
    f("diff", Any),
    f("node", Any),
    f("plan", Any),
    f("timeouts", Obj(TIMEOUTS)),
];

/// The kubeadm API group.
pub const KUBEADM_GROUP: &str = "kubeadm.k8s.io";
/// The kubelet's configuration apiVersion.
pub const KUBELET_API: &str = "kubelet.config.k8s.io/v1beta1";
/// kube-proxy's configuration apiVersion.
pub const KUBE_PROXY_API: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// The kinds of a kubeadm API version and their fields.
pub fn kinds(version: &str) -> &'static [(&'static str, &'static [Field])] {
    match version {
        // v1beta1 is read (deprecated) by 1.15-1.21 only; its field list
        // is taken as v1beta2's, which added a few fields to it.
        "v1beta1" | "v1beta2" => &[
            ("InitConfiguration", B2_INIT),
            ("ClusterConfiguration", B2_CLUSTER),
            ("JoinConfiguration", B2_JOIN),
            ("ClusterStatus", B2_CLUSTER_STATUS),
        ],
        "v1beta3" => &[
            ("InitConfiguration", B3_INIT),
            ("ClusterConfiguration", B3_CLUSTER),
            ("JoinConfiguration", B3_JOIN),
        ],
        "v1beta4" => &[
            ("InitConfiguration", B4_INIT),
            ("ClusterConfiguration", B4_CLUSTER),
            ("JoinConfiguration", B4_JOIN),
            ("ResetConfiguration", B4_RESET),
            ("UpgradeConfiguration", B4_UPGRADE),
        ],
        _ => &[],
    }
}

/// A Kubernetes release, `vMAJOR.MINOR.PATCH[-suffix]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl Version {
    /// Parses `v1.19.8`, `1.19.8`, `v1.19.8-rc.1`.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next().unwrap_or(Some(0))?,
        };
        it.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a kubeadm release does with a kubeadm API version in `init`/`join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read.
    Read,
    /// Read with a deprecation warning.
    Deprecated,
    /// Refused (older, or only for `kubeadm config migrate`).
    Refused,
}

/// How kubeadm `release` treats `kubeadm.k8s.io/VERSION` in init and join.
pub fn support(release: Version, version: &str) -> Support {
    let m = release.minor;
    match version {
        "v1beta1" if (15..=21).contains(&m) => Support::Deprecated,
        "v1beta2" if (15..=21).contains(&m) => Support::Read,
        "v1beta2" if (22..=26).contains(&m) => Support::Deprecated,
        "v1beta3" if (22..=30).contains(&m) => Support::Read,
        "v1beta3" if m >= 31 => Support::Deprecated,
        "v1beta4" if m >= 31 => Support::Read,
        _ => Support::Refused,
    }
}

/// The kubeadm API version a release writes (what it reads without warning).
pub fn current_version(release: Version) -> &'static str {
    match release.minor {
        0..=21 => "v1beta2",
        22..=30 => "v1beta3",
        _ => "v1beta4",
    }
}

/// A rejected configuration: the message names file, document and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What `kubeadm init` or `kubeadm join` reads from `--config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `kubeadm init`.
    Init,
    /// `kubeadm join`.
    Join,
}

/// Validates the file `path` for `cmd` of kubeadm `release`; returns
/// warnings (deprecated API versions) on success.
pub fn validate_file(path: &Path, release: Version, cmd: Command) -> Result<Vec<String>, Invalid> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Invalid(format!(
            "unable to read config from {:?}: {e}",
            path.display()
        ))
    })?;
    validate(path, &text, release, cmd)
}

/// Validates the text of a configuration file.
pub fn validate(
    path: &Path,
    text: &str,
    release: Version,
    cmd: Command,
) -> Result<Vec<String>, Invalid> {
    let show = path.display().to_string();
    let docs = config::documents(path, text).map_err(|e| Invalid(e.to_string()))?;
    let mut warnings = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for d in &docs {
        let at = format!("{show}: document {}", d.number);
        if !d.value.is_mapping() {
            return Err(Invalid(format!("{at}: not a YAML mapping")));
        }
        let (api, kind) = (d.api_version(), d.kind());
        if api.is_empty() {
            return Err(Invalid(format!("{at}: Object 'apiVersion' is missing")));
        }
        if kind.is_empty() {
            return Err(Invalid(format!("{at}: Object 'Kind' is missing")));
        }
        if seen.iter().any(|k| k == kind) {
            return Err(Invalid(format!("{at}: duplicate document of kind {kind}")));
        }
        seen.push(kind.to_string());
        match kind {
            "KubeletConfiguration" => {
                expect_api(&at, kind, api, KUBELET_API)?;
                continue;
            }
            "KubeProxyConfiguration" => {
                expect_api(&at, kind, api, KUBE_PROXY_API)?;
                continue;
            }
            _ => {}
        }
        let Some(version) = api
            .strip_prefix(KUBEADM_GROUP)
            .and_then(|v| v.strip_prefix('/'))
        else {
            return Err(Invalid(format!(
                "{at}: no kind \"{kind}\" is registered for version \"{api}\""
            )));
        };
        match support(release, version) {
            Support::Read => {}
            Support::Deprecated => warnings.push(format!(
                "{at}: {api} is deprecated in kubeadm {release}; use {KUBEADM_GROUP}/{}",
                current_version(release)
            )),
            Support::Refused => {
                return Err(Invalid(format!(
                    "{at}: kubeadm {release} does not read {api} (it reads {KUBEADM_GROUP}/{}); run 'kubeadm config migrate' with a kubeadm that reads it",
                    current_version(release)
                )))
            }
        }
        let Some((_, fields)) = kinds(version).iter().find(|(k, _)| *k == kind) else {
            return Err(Invalid(format!(
                "{at}: no kind \"{kind}\" is registered for version \"{api}\""
            )));
        };
        let prefix = format!("{at} ({kind} {api})");
        // kubeadm ignores, with a warning, the documents the command does
        // not use (a JoinConfiguration given to init): their fields are
        // still checked, what they require is not.
        let used = match cmd {
            Command::Init => kind != "JoinConfiguration",
            Command::Join => kind == "JoinConfiguration",
        };
        check_object(&prefix, "", &d.value, fields, true, used)?;
        if used {
            check_semantics(&prefix, kind, d)?;
        }
    }
    let need = match cmd {
        Command::Init => "InitConfiguration",
        Command::Join => "JoinConfiguration",
    };
    let has = |kind: &str| seen.iter().any(|k| k == kind);
    let usable = has(need) || (cmd == Command::Init && has("ClusterConfiguration"));
    if !usable {
        return Err(Invalid(format!("{show}: no {need} document")));
    }
    Ok(warnings)
}

fn expect_api(at: &str, kind: &str, api: &str, want: &str) -> Result<(), Invalid> {
    if api == want {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{at}: no kind \"{kind}\" is registered for version \"{api}\" (it is {want})"
        )))
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn check_object(
    at: &str,
    path: &str,
    v: &Value,
    fields: &[Field],
    top: bool,
    required: bool,
) -> Result<(), Invalid> {
    let Some(map) = v.as_mapping() else {
        return Err(Invalid(format!(
            "{at}: {}: expected an object, got {}",
            if path.is_empty() { "document" } else { path },
            kind_of(v)
        )));
    };
    for (k, val) in map {
        let Some(name) = k.as_str() else {
            return Err(Invalid(format!("{at}: {path}: a key is not a string")));
        };
        if top && (name == "apiVersion" || name == "kind") {
            continue;
        }
        let here = join(path, name);
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            return Err(Invalid(format!("{at}: unknown field \"{here}\"")));
        };
        check_value(at, &here, val, field.shape, required)?;
    }
    for fd in fields.iter().filter(|f| f.required && required) {
        let present = map
            .get(fd.name)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
        if !present {
            return Err(Invalid(format!(
                "{at}: {}: Required value",
                join(path, fd.name)
            )));
        }
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "an object",
        Value::Tagged(_) => "a tagged value",
    }
}

fn check_value(
    at: &str,
    path: &str,
    v: &Value,
    shape: Shape,
    required: bool,
) -> Result<(), Invalid> {
    let wrong = |want: &str| {
        Err(Invalid(format!(
            "{at}: {path}: cannot unmarshal {} into a field of type {want}",
            kind_of(v)
        )))
    };
    if v.is_null() {
        return Ok(());
    }
    match shape {
        Any => Ok(()),
        Str => match v {
            Value::String(_) => Ok(()),
            _ => wrong("string"),
        },
        Bool => match v {
            Value::Bool(_) => Ok(()),
            _ => wrong("bool"),
        },
        Int => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => wrong("int32"),
        },
        Duration => match v.as_str() {
            Some(s) if is_duration(s) => Ok(()),
            Some(s) => Err(Invalid(format!(
                "{at}: {path}: time: invalid duration \"{s}\""
            ))),
            None => wrong("duration (a string such as 5m0s)"),
        },
        StrList => match v.as_sequence() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check_value(at, &format!("{path}[{i}]"), x, Str, required)?;
                }
                Ok(())
            }
            None => wrong("[]string"),
        },
        StrMap | BoolMap => match v.as_mapping() {
            Some(m) => {
                for (k, x) in m {
                    let key = k.as_str().unwrap_or("?");
                    let inner = if matches!(shape, StrMap) { Str } else { Bool };
                    check_value(at, &format!("{path}.{key}"), x, inner, required)?;
                }
                Ok(())
            }
            None => wrong(if matches!(shape, StrMap) {
                "map[string]string"
            } else {
                "map[string]bool"
            }),
        },
        Obj(fields) => check_object(at, path, v, fields, false, required),
        ObjList(fields) => match v.as_sequence() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check_object(at, &format!("{path}[{i}]"), x, fields, false, required)?;
                }
                Ok(())
            }
            None => wrong("a list of objects"),
        },
    }
}

/// Go's `time.ParseDuration` syntax: `[-+]?(NUMBER UNIT)+` or `0`.
fn is_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return false;
        }
        rest = &rest[num_len..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(*u))
            .max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// What kubeadm's validation adds to the types: the discovery method, CA
/// pinning, taint effects, image pull policy.
fn check_semantics(at: &str, kind: &str, d: &Document) -> Result<(), Invalid> {
    let v = &d.value;
    if kind == "JoinConfiguration" {
        let disc = v.get("discovery");
        let bt = disc
            .and_then(|x| x.get("bootstrapToken"))
            .filter(|x| !x.is_null());
        let file = disc.and_then(|x| x.get("file")).filter(|x| !x.is_null());
        match (bt, file) {
            (None, None) => {
                return Err(Invalid(format!(
                    "{at}: discovery: Invalid value: bootstrapToken or file must be set"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(Invalid(format!(
                    "{at}: discovery: Invalid value: bootstrapToken and file cannot both be set"
                )))
            }
            _ => {}
        }
        if let Some(bt) = bt {
            let hashes = config::strs_at(bt, &["caCertHashes"]);
            let unsafe_skip = bt
                .get("unsafeSkipCAVerification")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if hashes.is_empty() && !unsafe_skip {
                return Err(Invalid(format!(
                    "{at}: discovery.bootstrapToken.caCertHashes: Invalid value: using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue"
                )));
            }
            for h in &hashes {
                if seaport_shared::pki::CaPin::parse(h).is_err() {
                    return Err(Invalid(format!(
                        "{at}: discovery.bootstrapToken.caCertHashes: Invalid value: \"{h}\": not of the form sha256:<64 hex characters>"
                    )));
                }
            }
        }
    }
    let taints = v
        .get("nodeRegistration")
        .and_then(|n| n.get("taints"))
        .and_then(Value::as_sequence);
    for (i, t) in taints.into_iter().flatten().enumerate() {
        let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
        if !matches!(e, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(Invalid(format!(
                "{at}: nodeRegistration.taints[{i}].effect: Unsupported value: \"{e}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            )));
        }
    }
    if let Some(p) = config::str_at(v, &["nodeRegistration", "imagePullPolicy"]) {
        if !matches!(p, "Always" | "IfNotPresent" | "Never") {
            return Err(Invalid(format!(
                "{at}: nodeRegistration.imagePullPolicy: Unsupported value: \"{p}\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
            )));
        }
    }
    let tokens = v.get("bootstrapTokens").and_then(Value::as_sequence);
    for (i, t) in tokens.into_iter().flatten().enumerate() {
        let tok = t.get("token").and_then(Value::as_str).unwrap_or("");
        if !is_token(tok) {
            return Err(Invalid(format!(
                "{at}: bootstrapTokens[{i}].token: Invalid value: the bootstrap token \"{tok}\" was not of the form \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\""
            )));
        }
    }
    Ok(())
}

fn is_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

#[cfg(test)]
mod tests;
