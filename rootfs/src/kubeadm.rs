//! The kubeadm configuration a host is given: Seaport's defaults, then the
//! image's `etc/kubeadm.yml`, then the Clusterfile's kubeadm documents, merged
//! document by document (by `kind`), then the fields only the install knows.
//!
//! Merging follows sealer: a later document's mapping keys override or extend
//! an earlier one's recursively; a list or scalar replaces the earlier value.
//! The computed fields always win: the advertise address is the host's IP,
//! the image repository is the local registry, the control-plane endpoint and
//! the certificate SANs name the API server, and join documents carry the
//! bootstrap token, the CA certificate hash and (for masters) the
//! certificate key handed over from the first master. The CRI socket
//! (`nodeRegistration.criSocket`) names the container runtime the install
//! set up, and the kubelet's cgroup driver follows docker's, as sealer
//! does.
//!
//! Documents are read in any kubeadm API version (`kubeadm.k8s.io/v1beta2`,
//! `v1beta3`, `v1beta4`) and written in the one the Kubernetes release
//! installed reads without a warning ([`KubeadmApi::for_kubernetes`]):
//! fields that moved or changed shape between versions are converted, and
//! fields the written version does not have are dropped (see
//! [`KubeadmConfig::convert`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// The API server's name, resolved through `/etc/hosts` on every host.
pub const APISERVER_DOMAIN: &str = "apiserver.cluster.local";
/// The API server's port.
pub const APISERVER_PORT: u16 = 6443;
/// sealer's virtual IP of the API server, kept in the SANs for compatibility;
/// workers' node-local API balancer listens on it by default.
pub const APISERVER_VIP: &str = "10.103.97.2";
/// The cluster env key that moves the workers' API balancer to another IPv4
/// address (`127.0.0.1` keeps it on the loopback address).
pub const APISERVER_VIP_ENV: &str = "APIServerVIP";
/// The cluster env key of the port the workers' API balancer listens on.
pub const APISERVER_VIP_PORT_ENV: &str = "APIServerVIPPort";

/// A cluster env value for the API balancer that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalancerAddrError {
    /// Not an IPv4 address, or one no host can listen on.
    #[error("env {key}={value}: not a unicast IPv4 address")]
    Ip {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// Not a port number.
    #[error("env {key}={value}: not a port (1 to 65535)")]
    Port {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

/// Where workers' node-local API balancer listens, from the cluster env
/// (the last value of a key wins): [`APISERVER_VIP`] and
/// [`APISERVER_PORT`] unless [`APISERVER_VIP_ENV`] or
/// [`APISERVER_VIP_PORT_ENV`] say otherwise.
pub fn api_balancer_addr(
    env: &[(String, String)],
) -> Result<std::net::SocketAddrV4, BalancerAddrError> {
    let last = |key: &str| env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
    let ip = match last(APISERVER_VIP_ENV) {
        None => APISERVER_VIP.parse().expect("a valid constant"),
        Some(v) => match v.trim().parse::<std::net::Ipv4Addr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => ip,
            _ => {
                return Err(BalancerAddrError::Ip {
                    key: APISERVER_VIP_ENV,
                    value: v.clone(),
                })
            }
        },
    };
    let port = match last(APISERVER_VIP_PORT_ENV) {
        None => APISERVER_PORT,
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(BalancerAddrError::Port {
                    key: APISERVER_VIP_PORT_ENV,
                    value: v.clone(),
                })
            }
        },
    };
    Ok(std::net::SocketAddrV4::new(ip, port))
}

/// The kinds, in the order they are written.
pub const KINDS: &[&str] = &[
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
    "KubeProxyConfiguration",
    "KubeletConfiguration",
];

/// Seaport's defaults, below the image's own configuration.
pub const DEFAULT_CONFIG: &str = r#"apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  bindPort: 6443
nodeRegistration:
  criSocket: /run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
networking:
  dnsDomain: cluster.local
  podSubnet: 100.64.0.0/10
  serviceSubnet: 10.96.0.0/22
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
nodeRegistration:
  criSocket: /run/containerd/containerd.sock
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
"#;

/// Errors from reading or merging kubeadm documents.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmError {
    /// A document is not YAML or lacks a kind.
    #[error("{origin}: document {index}: {reason}")]
    Document {
        /// Where the documents came from.
        origin: String,
        /// 1-based document number.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Documents by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeadmConfig {
    docs: BTreeMap<String, Value>,
}

/// Data the first master hands to the hosts that join.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinData {
    /// `HOST:PORT` of the API server as joining hosts reach it.
    pub api_server_endpoint: String,
    /// The first master's IP.
    pub master0_ip: String,
    /// Bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// `sha256:HEX` of the cluster CA's SubjectPublicKeyInfo.
    pub ca_cert_hashes: Vec<String>,
    /// Key of the uploaded control-plane certificates (hex), for masters.
    pub certificate_key: String,
}

/// What is wrong with join data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinDataError {
    /// Not a bootstrap token.
    #[error("the token is not a kubeadm bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")]
    Token,
    /// No CA hash.
    #[error("there is no CA certificate hash")]
    NoCaHash,
    /// A CA hash of another shape.
    #[error("CA certificate hash {0:?} is not sha256: and 64 hex digits")]
    CaHash(String),
    /// A certificate key of another shape.
    #[error("the certificate key is not 64 hex digits")]
    CertificateKey,
    /// Another first master.
    #[error("it names {named:?} as the first master, which is {master0}")]
    Master0 {
        /// What it names.
        named: String,
        /// The first master.
        master0: String,
    },
    /// An API server that is not the first master.
    #[error("the API server endpoint {endpoint:?} is not the first master's ({master0}:PORT)")]
    ApiServer {
        /// What it names.
        endpoint: String,
        /// The first master.
        master0: String,
    },
}

impl JoinData {
    /// Checks the shape of join data the first master reported: a bootstrap
    /// token `[a-z0-9]{6}.[a-z0-9]{16}`, CA hashes `sha256:` and 64 hex
    /// digits, a certificate key of 64 hex digits, and the API server at
    /// `master0_ip` (the first master's address as the cluster knows it).
    pub fn check(&self, master0_ip: &str) -> Result<(), JoinDataError> {
        let lower_alnum = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match self.token.split_once('.') {
            Some((id, secret)) if lower_alnum(id, 6) && lower_alnum(secret, 16) => {}
            _ => return Err(JoinDataError::Token),
        }
        if self.ca_cert_hashes.is_empty() {
            return Err(JoinDataError::NoCaHash);
        }
        for h in &self.ca_cert_hashes {
            if !h.strip_prefix("sha256:").is_some_and(|x| hex(x, 64)) {
                return Err(JoinDataError::CaHash(h.chars().take(80).collect()));
            }
        }
        if !hex(&self.certificate_key, 64) {
            return Err(JoinDataError::CertificateKey);
        }
        if self.master0_ip != master0_ip {
            return Err(JoinDataError::Master0 {
                named: self.master0_ip.chars().take(80).collect(),
                master0: master0_ip.to_string(),
            });
        }
        match self.api_server_endpoint.rsplit_once(':') {
            Some((host, port)) if host == master0_ip && port.parse::<u16>().is_ok() => Ok(()),
            _ => Err(JoinDataError::ApiServer {
                endpoint: self.api_server_endpoint.chars().take(80).collect(),
                master0: master0_ip.to_string(),
            }),
        }
    }
}

/// A kubeadm configuration API version (`kubeadm.k8s.io/VERSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeadmApi {
    /// Read by kubeadm 1.15 to 1.26 (deprecated from 1.22).
    V1beta2,
    /// Read by kubeadm 1.22 and later (deprecated from 1.31).
    V1beta3,
    /// Read by kubeadm 1.31 and later.
    V1beta4,
}

impl KubeadmApi {
    /// The version kubeadm of Kubernetes `major.minor` reads without a
    /// deprecation warning (kubeadm's `validateSupportedVersion`): v1beta2
    /// up to 1.21, v1beta3 from 1.22 (kubeadm refuses v1beta2 from 1.27),
    /// v1beta4 from 1.31.
    pub fn for_kubernetes(major: u32, minor: u32) -> Self {
        match (major, minor) {
            (0, _) | (1, 0..=21) => Self::V1beta2,
            (1, 22..=30) => Self::V1beta3,
            _ => Self::V1beta4,
        }
    }

    /// The version an `apiVersion` names (`kubeadm.k8s.io/v1beta3`).
    pub fn parse(api_version: &str) -> Option<Self> {
        match api_version.strip_prefix("kubeadm.k8s.io/")? {
            "v1beta2" => Some(Self::V1beta2),
            "v1beta3" => Some(Self::V1beta3),
            "v1beta4" => Some(Self::V1beta4),
            _ => None,
        }
    }

    /// `kubeadm.k8s.io/VERSION`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::V1beta2 => "kubeadm.k8s.io/v1beta2",
            Self::V1beta3 => "kubeadm.k8s.io/v1beta3",
            Self::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

/// The kubeadm documents (the others are the components' own).
const KUBEADM_KINDS: &[&str] = &[
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
];

/// Arguments maps in v1beta2/v1beta3, `name`/`value` lists in v1beta4.
const EXTRA_ARGS: &[(&str, &[&str])] = &[
    ("ClusterConfiguration", &["apiServer", "extraArgs"]),
    ("ClusterConfiguration", &["controllerManager", "extraArgs"]),
    ("ClusterConfiguration", &["scheduler", "extraArgs"]),
    ("ClusterConfiguration", &["etcd", "local", "extraArgs"]),
    (
        "InitConfiguration",
        &["nodeRegistration", "kubeletExtraArgs"],
    ),
    (
        "JoinConfiguration",
        &["nodeRegistration", "kubeletExtraArgs"],
    ),
];

/// Fields only v1beta2 has.
const ONLY_V1BETA2: &[(&str, &[&str])] = &[
    ("ClusterConfiguration", &["dns", "type"]),
    ("ClusterConfiguration", &["useHyperKubeImage"]),
];

/// Fields v1beta3 added (and v1beta4 kept).
const SINCE_V1BETA3: &[(&str, &[&str])] = &[
    ("InitConfiguration", &["skipPhases"]),
    ("InitConfiguration", &["patches"]),
    (
        "InitConfiguration",
        &["nodeRegistration", "imagePullPolicy"],
    ),
    ("JoinConfiguration", &["skipPhases"]),
    ("JoinConfiguration", &["patches"]),
    (
        "JoinConfiguration",
        &["nodeRegistration", "imagePullPolicy"],
    ),
];

/// Fields v1beta4 added.
const SINCE_V1BETA4: &[(&str, &[&str])] = &[
    ("InitConfiguration", &["dryRun"]),
    ("InitConfiguration", &["timeouts"]),
    (
        "InitConfiguration",
        &["nodeRegistration", "imagePullSerial"],
    ),
    ("JoinConfiguration", &["dryRun"]),
    ("JoinConfiguration", &["timeouts"]),
    (
        "JoinConfiguration",
        &["nodeRegistration", "imagePullSerial"],
    ),
    ("ClusterConfiguration", &["proxy"]),
    ("ClusterConfiguration", &["dns", "disabled"]),
    ("ClusterConfiguration", &["encryptionAlgorithm"]),
    ("ClusterConfiguration", &["certificateValidityPeriod"]),
    ("ClusterConfiguration", &["caCertificateValidityPeriod"]),
    ("ClusterConfiguration", &["apiServer", "extraEnvs"]),
    ("ClusterConfiguration", &["controllerManager", "extraEnvs"]),
    ("ClusterConfiguration", &["scheduler", "extraEnvs"]),
    ("ClusterConfiguration", &["etcd", "local", "extraEnvs"]),
];

/// What the install computes for one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    /// This host's IP (the advertise address).
    pub host_ip: String,
    /// The IPs of every master, for the SANs.
    pub master_ips: Vec<String>,
    /// `domain:port` of the local registry (the image repository).
    pub image_repository: String,
    /// The cluster env, for the pod and service subnets.
    pub env: BTreeMap<String, String>,
    /// `nodeRegistration.criSocket` of the init and join documents: the
    /// installed runtime's socket (None: the merged documents' value).
    pub cri_socket: Option<String>,
    /// `cgroupDriver` of the KubeletConfiguration, when the runtime decides
    /// it (docker's `native.cgroupdriver`).
    pub cgroup_driver: Option<String>,
    /// The kubeadm API version to write, from the Kubernetes version
    /// installed (None: the version the merged ClusterConfiguration names).
    pub kubeadm_api: Option<KubeadmApi>,
}

impl KubeadmConfig {
    /// Parses documents; those without a known kind are errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KubeadmError> {
        let mut cfg = Self::default();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let err = |reason: String| KubeadmError::Document {
                origin: origin.to_string(),
                index: i + 1,
                reason,
            };
            let value = Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| err("it has no `kind`".into()))?
                .to_string();
            if !KINDS.contains(&kind.as_str()) {
                return Err(err(format!(
                    "kind {kind} is not a kubeadm document (one of {})",
                    KINDS.join(", ")
                )));
            }
            cfg.merge_doc(&kind, value);
        }
        cfg.canonicalize();
        Ok(cfg)
    }

    /// Seaport's defaults.
    pub fn defaults() -> Self {
        Self::parse(DEFAULT_CONFIG, "built-in defaults").expect("the defaults parse")
    }

    /// Merges `other` over `self`.
    pub fn merge(&mut self, other: &KubeadmConfig) {
        for (kind, doc) in &other.docs {
            self.merge_doc(kind, doc.clone());
        }
    }

    fn merge_doc(&mut self, kind: &str, doc: Value) {
        match self.docs.get_mut(kind) {
            Some(existing) => merge_value(existing, doc),
            None => {
                self.docs.insert(kind.to_string(), doc);
            }
        }
    }

    /// One document.
    pub fn doc(&self, kind: &str) -> Option<&Value> {
        self.docs.get(kind)
    }

    fn doc_mut(&mut self, kind: &str) -> &mut Value {
        self.docs.entry(kind.to_string()).or_insert_with(|| {
            let api = match kind {
                "KubeletConfiguration" => "kubelet.config.k8s.io/v1beta1",
                "KubeProxyConfiguration" => "kubeproxy.config.k8s.io/v1alpha1",
                _ => "kubeadm.k8s.io/v1beta2",
            };
            let mut m = Mapping::new();
            m.insert("apiVersion".into(), api.into());
            m.insert("kind".into(), kind.into());
            Value::Mapping(m)
        })
    }

    /// The configuration for `kubeadm init` on the first master.
    pub fn for_init(&self, c: &Computed, token: &str, certificate_key: &str) -> String {
        let mut cfg = self.clone();
        cfg.fill_cluster(c);
        let init = cfg.doc_mut("InitConfiguration");
        set(
            init,
            &["localAPIEndpoint", "advertiseAddress"],
            c.host_ip.clone().into(),
        );
        if get(init, &["localAPIEndpoint", "bindPort"]).is_none() {
            set(
                init,
                &["localAPIEndpoint", "bindPort"],
                APISERVER_PORT.into(),
            );
        }
        let mut tok = Mapping::new();
        tok.insert("token".into(), token.into());
        tok.insert("ttl".into(), "24h0m0s".into());
        set(
            init,
            &["bootstrapTokens"],
            Value::Sequence(vec![Value::Mapping(tok)]),
        );
        set(init, &["certificateKey"], certificate_key.into());
        if let Some(sock) = &c.cri_socket {
            set_cri_socket(init, sock);
        }
        if let Some(driver) = &c.cgroup_driver {
            let kubelet = cfg.doc_mut("KubeletConfiguration");
            set(kubelet, &["cgroupDriver"], driver.clone().into());
        }
        if let Some(api) = c.kubeadm_api.or_else(|| cfg.named_api()) {
            cfg.convert(api);
        }
        cfg.write(&[
            "InitConfiguration",
            "ClusterConfiguration",
            "KubeProxyConfiguration",
            "KubeletConfiguration",
        ])
    }

    /// The configuration for `kubeadm join` (a master when `master`).
    pub fn for_join(&self, c: &Computed, join: &JoinData, master: bool) -> String {
        let mut cfg = self.clone();
        let doc = cfg.doc_mut("JoinConfiguration");
        if let Some(sock) = &c.cri_socket {
            set_cri_socket(doc, sock);
        }
        let endpoint = join.api_server_endpoint.clone();
        set(
            doc,
            &["discovery", "bootstrapToken", "apiServerEndpoint"],
            endpoint.into(),
        );
        set(
            doc,
            &["discovery", "bootstrapToken", "token"],
            join.token.clone().into(),
        );
        let hashes = join
            .ca_cert_hashes
            .iter()
            .map(|h| Value::from(h.clone()))
            .collect();
        set(
            doc,
            &["discovery", "bootstrapToken", "caCertHashes"],
            Value::Sequence(hashes),
        );
        if master {
            set(
                doc,
                &["controlPlane", "localAPIEndpoint", "advertiseAddress"],
                c.host_ip.clone().into(),
            );
            if get(doc, &["controlPlane", "localAPIEndpoint", "bindPort"]).is_none() {
                set(
                    doc,
                    &["controlPlane", "localAPIEndpoint", "bindPort"],
                    APISERVER_PORT.into(),
                );
            }
            set(
                doc,
                &["controlPlane", "certificateKey"],
                join.certificate_key.clone().into(),
            );
        } else if let Value::Mapping(m) = doc {
            m.remove("controlPlane");
        }
        if let Some(api) = c.kubeadm_api.or_else(|| cfg.named_api()) {
            cfg.convert(api);
        }
        cfg.write(&["JoinConfiguration"])
    }

    /// Brings documents of any kubeadm API version into the shape they are
    /// merged in, so that a later file overrides an earlier one whatever
    /// versions they were written in: extra arguments as maps (v1beta4's
    /// `name`/`value` lists turned into maps, a repeated name keeping its
    /// last value), the control plane's health-check timeout in
    /// `ClusterConfiguration.apiServer.timeoutForControlPlane` (from
    /// v1beta4's `timeouts.controlPlaneComponentHealthCheck`), the join's
    /// discovery timeout in `discovery.timeout` (from v1beta4's
    /// `timeouts.tlsBootstrap`).
    fn canonicalize(&mut self) {
        for (kind, path) in EXTRA_ARGS {
            if let Some(args) = self.docs.get_mut(*kind).and_then(|d| get_mut(d, path)) {
                *args = args_as_map(args);
            }
        }
        for kind in ["JoinConfiguration", "InitConfiguration"] {
            if let Some(t) = self.take(kind, &["timeouts", "controlPlaneComponentHealthCheck"]) {
                // Without naming an apiVersion: it is the other file's.
                let doc = self
                    .docs
                    .entry("ClusterConfiguration".to_string())
                    .or_insert_with(|| {
                        let mut m = Mapping::new();
                        m.insert("kind".into(), "ClusterConfiguration".into());
                        Value::Mapping(m)
                    });
                set(doc, &["apiServer", "timeoutForControlPlane"], t);
            }
        }
        if let Some(t) = self.take("JoinConfiguration", &["timeouts", "tlsBootstrap"]) {
            let doc = self.doc_mut("JoinConfiguration");
            set(doc, &["discovery", "timeout"], t);
        }
        for kind in ["InitConfiguration", "JoinConfiguration"] {
            let empty = self
                .docs
                .get(kind)
                .and_then(|d| get(d, &["timeouts"]))
                .and_then(Value::as_mapping)
                .is_some_and(Mapping::is_empty);
            if empty {
                self.take(kind, &["timeouts"]);
            }
        }
    }

    /// The kubeadm API version the documents are written in without a
    /// Kubernetes version to decide: the ClusterConfiguration's, else the
    /// JoinConfiguration's.
    fn named_api(&self) -> Option<KubeadmApi> {
        [
            "ClusterConfiguration",
            "JoinConfiguration",
            "InitConfiguration",
        ]
        .iter()
        .filter_map(|k| self.docs.get(*k))
        .filter_map(|d| d.get("apiVersion").and_then(Value::as_str))
        .find_map(KubeadmApi::parse)
    }

    /// Writes the merged documents in `api`: extra arguments as maps
    /// (v1beta2, v1beta3) or `name`/`value` lists in the map's order
    /// (v1beta4); for v1beta4 `apiServer.timeoutForControlPlane` moved to
    /// the init and join documents' `timeouts.controlPlaneComponentHealthCheck`
    /// and the join's `discovery.timeout` to `timeouts.tlsBootstrap`. Fields
    /// `api` does not have are dropped, as sealer's decoding of every
    /// version into one version's types drops them: v1beta2's `dns.type`
    /// and `useHyperKubeImage` from v1beta3 on; v1beta3's `skipPhases`,
    /// `patches` and `imagePullPolicy` for v1beta2; v1beta4's additions
    /// below v1beta4.
    pub fn convert(&mut self, api: KubeadmApi) {
        self.canonicalize();
        let v4 = api == KubeadmApi::V1beta4;
        if v4 {
            if let Some(t) = self.take(
                "ClusterConfiguration",
                &["apiServer", "timeoutForControlPlane"],
            ) {
                for kind in ["InitConfiguration", "JoinConfiguration"] {
                    if let Some(doc) = self.docs.get_mut(kind) {
                        set(
                            doc,
                            &["timeouts", "controlPlaneComponentHealthCheck"],
                            t.clone(),
                        );
                    }
                }
            }
            if let Some(t) = self.take("JoinConfiguration", &["discovery", "timeout"]) {
                let doc = self.doc_mut("JoinConfiguration");
                set(doc, &["timeouts", "tlsBootstrap"], t);
            }
            for (kind, path) in EXTRA_ARGS {
                if let Some(args) = self.docs.get_mut(*kind).and_then(|d| get_mut(d, path)) {
                    *args = args_as_list(args);
                }
            }
        }
        let mut dropped: Vec<&(&str, &[&str])> = Vec::new();
        if api == KubeadmApi::V1beta2 {
            dropped.extend(SINCE_V1BETA3);
        } else {
            dropped.extend(ONLY_V1BETA2);
        }
        if !v4 {
            dropped.extend(SINCE_V1BETA4);
        }
        for (kind, path) in dropped {
            self.take(kind, path);
        }
        for kind in KUBEADM_KINDS {
            if let Some(doc) = self.docs.get_mut(*kind) {
                set(doc, &["apiVersion"], api.api_version().into());
            }
        }
    }

    /// Removes the field at `path` of the `kind` document, returning it.
    fn take(&mut self, kind: &str, path: &[&str]) -> Option<Value> {
        let (last, parents) = path.split_last()?;
        let parent = get_mut(self.docs.get_mut(kind)?, parents)?;
        parent.as_mapping_mut()?.remove(*last)
    }

    fn fill_cluster(&mut self, c: &Computed) {
        let doc = self.doc_mut("ClusterConfiguration");
        set(doc, &["imageRepository"], c.image_repository.clone().into());
        if get(doc, &["controlPlaneEndpoint"]).is_none() {
            set(
                doc,
                &["controlPlaneEndpoint"],
                format!("{APISERVER_DOMAIN}:{APISERVER_PORT}").into(),
            );
        }
        if let Some(p) = c.env.get("pod_cidr") {
            set(doc, &["networking", "podSubnet"], p.clone().into());
        }
        if let Some(s) = c.env.get("svc_cidr") {
            set(doc, &["networking", "serviceSubnet"], s.clone().into());
        }
        let mut sans: Vec<String> = get(doc, &["apiServer", "certSANs"])
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let wanted = ["127.0.0.1", APISERVER_DOMAIN, APISERVER_VIP]
            .into_iter()
            .map(str::to_string)
            .chain(std::iter::once(c.host_ip.clone()))
            .chain(c.master_ips.iter().cloned());
        for s in wanted {
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
        let sans = sans.into_iter().map(Value::from).collect();
        set(doc, &["apiServer", "certSANs"], Value::Sequence(sans));
    }

    fn write(&self, kinds: &[&str]) -> String {
        let mut out = String::new();
        for kind in kinds {
            if let Some(doc) = self.docs.get(*kind) {
                if !out.is_empty() {
                    out.push_str("---\n");
                }
                out.push_str(&serde_norway::to_string(doc).expect("YAML values serialize"));
            }
        }
        out
    }
}

/// Sets `nodeRegistration.criSocket` and keeps the kubelet arguments that
/// name a runtime endpoint in step with it: with the docker shim the
/// kubelet takes no `container-runtime`/`container-runtime-endpoint`
/// arguments; with any other socket an endpoint argument names it.
fn set_cri_socket(doc: &mut Value, sock: &str) {
    set(doc, &["nodeRegistration", "criSocket"], sock.into());
    let Some(Value::Mapping(args)) = doc
        .get_mut("nodeRegistration")
        .and_then(|r| r.get_mut("kubeletExtraArgs"))
    else {
        return;
    };
    if sock.ends_with("/dockershim.sock") {
        args.remove("container-runtime");
        args.remove("container-runtime-endpoint");
    } else if args.contains_key("container-runtime-endpoint") {
        let endpoint = if sock.contains("://") {
            sock.to_string()
        } else {
            format!("unix://{sock}")
        };
        args.insert("container-runtime-endpoint".into(), endpoint.into());
    }
}

fn merge_value(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_value(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Extra arguments as v1beta4 writes them: `[{name, value}]`, in the map's
/// order (a list stays as it is).
fn args_as_list(args: &Value) -> Value {
    match args {
        Value::Mapping(m) => Value::Sequence(
            m.iter()
                .map(|(k, v)| {
                    let mut arg = Mapping::new();
                    arg.insert("name".into(), k.clone());
                    arg.insert("value".into(), scalar_string(v).into());
                    Value::Mapping(arg)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Extra arguments as v1beta2 and v1beta3 write them: a map (from a
/// v1beta4 list, a repeated name keeps its last value).
fn args_as_map(args: &Value) -> Value {
    match args {
        Value::Sequence(list) => {
            let mut m = Mapping::new();
            for arg in list {
                if let Some(name) = arg.get("name") {
                    let value = arg.get("value").map(scalar_string).unwrap_or_default();
                    m.insert(name.clone(), value.into());
                }
            }
            Value::Mapping(m)
        }
        other => other.clone(),
    }
}

/// A scalar as the string kubeadm's argument types hold.
fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

fn set(v: &mut Value, path: &[&str], value: Value) {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let m = cur.as_mapping_mut().expect("made a mapping");
        if i + 1 == path.len() {
            m.insert((*k).into(), value);
            return;
        }
        cur = m.entry((*k).into()).or_insert(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_balancer_address_comes_from_the_cluster_env_or_sealers_vip() {
        let env = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            api_balancer_addr(&[]).unwrap().to_string(),
            "10.103.97.2:6443"
        );
        assert_eq!(
            api_balancer_addr(&env(&[
                ("APIServerVIP", "10.0.0.9"),
                ("APIServerVIP", "127.0.0.1"),
                ("APIServerVIPPort", "7443")
            ]))
            .unwrap()
            .to_string(),
            "127.0.0.1:7443"
        );
        let e = api_balancer_addr(&env(&[("APIServerVIP", "apiserver")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "env APIServerVIP=apiserver: not a unicast IPv4 address"
        );
        assert!(api_balancer_addr(&env(&[("APIServerVIP", "0.0.0.0")])).is_err());
        let e = api_balancer_addr(&env(&[("APIServerVIPPort", "0")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "env APIServerVIPPort=0: not a port (1 to 65535)"
        );
    }

    #[test]
    fn join_data_of_the_wrong_shape_or_for_another_master_is_refused() {
        let good = JoinData {
            api_server_endpoint: "10.0.0.1:6443".into(),
            master0_ip: "10.0.0.1".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32))],
            certificate_key: "0f".repeat(32),
        };
        good.check("10.0.0.1").unwrap();
        let bad = |f: &dyn Fn(&mut JoinData), want: &str| {
            let mut j = good.clone();
            f(&mut j);
            let err = j.check("10.0.0.1").unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        };
        bad(
            &|j| j.token = "ABCDEF.0123456789abcdef".into(),
            "bootstrap token",
        );
        bad(
            &|j| j.token = "abcdef0123456789abcdef".into(),
            "bootstrap token",
        );
        bad(&|j| j.ca_cert_hashes = vec![], "no CA");
        bad(&|j| j.ca_cert_hashes = vec!["sha256:00".into()], "64 hex");
        bad(&|j| j.certificate_key = "k".into(), "certificate key");
        bad(&|j| j.master0_ip = "10.0.0.9".into(), "first master");
        bad(
            &|j| j.api_server_endpoint = "10.0.0.9:6443".into(),
            "API server",
        );
        bad(&|j| j.api_server_endpoint = "10.0.0.1".into(), "API server");
    }
    use super::*;

    fn computed() -> Computed {
        Computed {
            host_ip: "198.18.0.11".into(),
            master_ips: vec!["198.18.0.11".into()],
            image_repository: "sea.hub:5000".into(),
            env: [("pod_cidr".to_string(), "10.244.0.0/16".to_string())].into(),
            cri_socket: None,
            cgroup_driver: None,
            kubeadm_api: None,
        }
    }

    #[test]
    fn image_and_clusterfile_merge_over_defaults_then_computed_fields_win() {
        let mut cfg = KubeadmConfig::defaults();
        let image = KubeadmConfig::parse(
            "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: v1.19.8\nimageRepository: k8s.gcr.io\napiServer:\n  certSANs: [extra.example]\n",
            "etc/kubeadm.yml",
        )
        .unwrap();
        let user = KubeadmConfig::parse(
            "kind: ClusterConfiguration\nkubernetesVersion: v1.19.9\n---\nkind: KubeletConfiguration\nmaxPods: 50\n",
            "Clusterfile",
        )
        .unwrap();
        cfg.merge(&image);
        cfg.merge(&user);
        let text = cfg.for_init(&computed(), "abcdef.0123456789abcdef", "k3y");
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let cluster = docs
            .iter()
            .find(|d| d["kind"] == "ClusterConfiguration")
            .unwrap();
        assert_eq!(cluster["kubernetesVersion"], "v1.19.9");
        assert_eq!(cluster["imageRepository"], "sea.hub:5000");
        assert_eq!(
            cluster["controlPlaneEndpoint"],
            "apiserver.cluster.local:6443"
        );
        assert_eq!(cluster["networking"]["podSubnet"], "10.244.0.0/16");
        assert_eq!(cluster["networking"]["dnsDomain"], "cluster.local");
        let sans: Vec<&str> = cluster["apiServer"]["certSANs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            sans.contains(&"extra.example") && sans.contains(&"198.18.0.11"),
            "{sans:?}"
        );
        let init = docs
            .iter()
            .find(|d| d["kind"] == "InitConfiguration")
            .unwrap();
        assert_eq!(init["localAPIEndpoint"]["advertiseAddress"], "198.18.0.11");
        assert_eq!(
            init["bootstrapTokens"][0]["token"],
            "abcdef.0123456789abcdef"
        );
        assert_eq!(init["certificateKey"], "k3y");
        let kubelet = docs
            .iter()
            .find(|d| d["kind"] == "KubeletConfiguration")
            .unwrap();
        assert_eq!(kubelet["maxPods"], 50);
        assert_eq!(kubelet["cgroupDriver"], "systemd");
        assert!(!text.contains("JoinConfiguration"));
    }

    /// The base rootfs's `etc/kubeadm.yml` over the defaults, written for
    /// init and for a master's join for Kubernetes `version`, checked by the
    /// kubeadm double's validator (kubeadm's field tables per version).
    fn validated(version: &str, user: Option<&str>) -> (Vec<Value>, Value) {
        use seaport_kube_double::kubeadm_api::{validate, Command, Version};
        let mut cfg = KubeadmConfig::defaults();
        let base = include_str!("../base/etc/kubeadm.yml").replace(
            "kubernetesVersion: v1.19.8",
            &format!("kubernetesVersion: {version}"),
        );
        cfg.merge(&KubeadmConfig::parse(&base, "etc/kubeadm.yml").unwrap());
        if let Some(user) = user {
            cfg.merge(&KubeadmConfig::parse(user, "Clusterfile").unwrap());
        }
        let release = Version::parse(version).unwrap();
        let mut c = computed();
        c.kubeadm_api = Some(KubeadmApi::for_kubernetes(release.major, release.minor));
        let init = cfg.for_init(&c, "abcdef.0123456789abcdef", &"0f".repeat(32));
        let path = std::path::Path::new("kubeadm.yaml");
        let warnings = validate(path, &init, release, Command::Init)
            .unwrap_or_else(|e| panic!("init for {version}: {e}\n{init}"));
        assert!(
            warnings.is_empty(),
            "init for {version}: {warnings:?}\n{init}"
        );
        let join = JoinData {
            api_server_endpoint: "198.18.0.11:6443".into(),
            master0_ip: "198.18.0.11".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32))],
            certificate_key: "0f".repeat(32),
        };
        let joined = cfg.for_join(&c, &join, true);
        let warnings = validate(path, &joined, release, Command::Join)
            .unwrap_or_else(|e| panic!("join for {version}: {e}\n{joined}"));
        assert!(
            warnings.is_empty(),
            "join for {version}: {warnings:?}\n{joined}"
        );
        let docs = serde_norway::Deserializer::from_str(&init)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        (docs, serde_norway::from_str(&joined).unwrap())
    }

    fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter().find(|d| d["kind"] == kind).unwrap()
    }

    #[test]
    fn the_kubeadm_api_version_follows_the_kubernetes_version() {
        for (minor, api) in [
            (15, KubeadmApi::V1beta2),
            (21, KubeadmApi::V1beta2),
            (22, KubeadmApi::V1beta3),
            (27, KubeadmApi::V1beta3),
            (30, KubeadmApi::V1beta3),
            (31, KubeadmApi::V1beta4),
            (33, KubeadmApi::V1beta4),
        ] {
            assert_eq!(KubeadmApi::for_kubernetes(1, minor), api, "1.{minor}");
        }
    }

    #[test]
    fn kubernetes_1_19_gets_v1beta2_that_kubeadm_1_19_reads() {
        let (docs, join) = validated("v1.19.8", None);
        for kind_ in ["InitConfiguration", "ClusterConfiguration"] {
            assert_eq!(kind(&docs, kind_)["apiVersion"], "kubeadm.k8s.io/v1beta2");
        }
        assert_eq!(join["apiVersion"], "kubeadm.k8s.io/v1beta2");
        let cluster = kind(&docs, "ClusterConfiguration");
        assert_eq!(
            cluster["apiServer"]["extraArgs"]["audit-log-format"],
            "json"
        );
        assert_eq!(join["discovery"]["timeout"], "5m0s");
    }

    #[test]
    fn kubernetes_1_25_and_1_28_get_v1beta3_without_v1beta2_only_fields() {
        let user = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nuseHyperKubeImage: false\ndns:\n  type: CoreDNS\n  imageTag: 1.8.0\n";
        for version in ["v1.25.3", "v1.28.2"] {
            let (docs, join) = validated(version, Some(user));
            let cluster = kind(&docs, "ClusterConfiguration");
            assert_eq!(cluster["apiVersion"], "kubeadm.k8s.io/v1beta3", "{version}");
            assert_eq!(join["apiVersion"], "kubeadm.k8s.io/v1beta3", "{version}");
            assert!(cluster.get("useHyperKubeImage").is_none(), "{version}");
            assert!(cluster["dns"].get("type").is_none(), "{version}");
            assert_eq!(cluster["dns"]["imageTag"], "1.8.0", "{version}");
            assert_eq!(cluster["apiServer"]["extraArgs"]["audit-log-maxage"], "7");
        }
    }

    #[test]
    fn kubernetes_1_31_gets_v1beta4_with_argument_lists_and_moved_timeouts() {
        let user = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\napiServer:\n  timeoutForControlPlane: 4m0s\n---\napiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\nnodeRegistration:\n  kubeletExtraArgs:\n    max-pods: \"50\"\n";
        let (docs, join) = validated("v1.31.1", Some(user));
        let cluster = kind(&docs, "ClusterConfiguration");
        let init = kind(&docs, "InitConfiguration");
        assert_eq!(cluster["apiVersion"], "kubeadm.k8s.io/v1beta4");
        assert_eq!(join["apiVersion"], "kubeadm.k8s.io/v1beta4");
        let args = cluster["apiServer"]["extraArgs"].as_sequence().unwrap();
        assert_eq!(args[0]["name"], "etcd-servers");
        assert_eq!(args[0]["value"], "https://localhost:2379");
        assert!(args
            .iter()
            .any(|a| a["name"] == "audit-log-maxage" && a["value"] == "7"));
        assert_eq!(
            init["nodeRegistration"]["kubeletExtraArgs"][0],
            serde_norway::from_str::<Value>("{name: max-pods, value: \"50\"}").unwrap()
        );
        assert!(cluster["apiServer"].get("timeoutForControlPlane").is_none());
        assert_eq!(init["timeouts"]["controlPlaneComponentHealthCheck"], "4m0s");
        assert_eq!(join["timeouts"]["controlPlaneComponentHealthCheck"], "4m0s");
        assert!(join["discovery"].get("timeout").is_none());
        assert_eq!(join["timeouts"]["tlsBootstrap"], "5m0s");
    }

    #[test]
    fn a_v1beta4_user_config_is_written_back_as_v1beta3_for_kubernetes_1_28() {
        let user = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nencryptionAlgorithm: ECDSA-P256\nscheduler:\n  extraArgs:\n  - name: v\n    value: \"2\"\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ntimeouts:\n  tlsBootstrap: 3m0s\n";
        let (docs, join) = validated("v1.28.2", Some(user));
        let cluster = kind(&docs, "ClusterConfiguration");
        assert_eq!(cluster["scheduler"]["extraArgs"]["v"], "2");
        assert!(cluster.get("encryptionAlgorithm").is_none());
        assert_eq!(join["discovery"]["timeout"], "3m0s", "the later file wins");
        assert!(join.get("timeouts").is_none());
    }

    #[test]
    fn without_conversion_v1beta2_is_refused_by_kubeadm_1_27() {
        use seaport_kube_double::kubeadm_api::{validate, Command, Version};
        let mut cfg = KubeadmConfig::defaults();
        cfg.merge(
            &KubeadmConfig::parse(include_str!("../base/etc/kubeadm.yml"), "etc/kubeadm.yml")
                .unwrap(),
        );
        let init = cfg.for_init(&computed(), "abcdef.0123456789abcdef", "k3y");
        let release = Version::parse("v1.27.0").unwrap();
        let path = std::path::Path::new("kubeadm.yaml");
        assert!(validate(path, &init, release, Command::Init).is_err());
    }

    #[test]
    fn join_documents_carry_the_join_data() {
        let cfg = KubeadmConfig::defaults();
        let join = JoinData {
            api_server_endpoint: "198.18.0.11:6443".into(),
            master0_ip: "198.18.0.11".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec!["sha256:00ff".into()],
            certificate_key: "k3y".into(),
        };
        let mut c = computed();
        c.host_ip = "198.18.0.12".into();
        let node: Value = serde_norway::from_str(&cfg.for_join(&c, &join, false)).unwrap();
        assert_eq!(
            node["discovery"]["bootstrapToken"]["token"],
            "abcdef.0123456789abcdef"
        );
        assert_eq!(
            node["discovery"]["bootstrapToken"]["caCertHashes"][0],
            "sha256:00ff"
        );
        assert!(node.get("controlPlane").is_none());
        let master: Value = serde_norway::from_str(&cfg.for_join(&c, &join, true)).unwrap();
        assert_eq!(master["controlPlane"]["certificateKey"], "k3y");
        assert_eq!(
            master["controlPlane"]["localAPIEndpoint"]["advertiseAddress"],
            "198.18.0.12"
        );
    }

    #[test]
    fn the_installed_runtime_names_the_cri_socket_and_the_cgroup_driver() {
        let mut cfg = KubeadmConfig::defaults();
        // An image written for containerd, installed with docker.
        cfg.merge(
            &KubeadmConfig::parse(
                "kind: InitConfiguration\nnodeRegistration:\n  criSocket: /run/containerd/containerd.sock\n  name: n1\n  kubeletExtraArgs:\n    container-runtime: remote\n    container-runtime-endpoint: unix:///run/containerd/containerd.sock\n    v: '2'\n---\nkind: JoinConfiguration\nnodeRegistration:\n  criSocket: /run/containerd/containerd.sock\n  kubeletExtraArgs:\n    container-runtime-endpoint: unix:///run/containerd/containerd.sock\n",
                "etc/kubeadm.yml",
            )
            .unwrap(),
        );
        let mut c = computed();
        let untouched = cfg.for_init(&c, "abcdef.0123456789abcdef", "k");
        assert!(
            untouched.contains("criSocket: /run/containerd/containerd.sock"),
            "{untouched}"
        );
        c.cri_socket = Some("/var/run/dockershim.sock".into());
        c.cgroup_driver = Some("cgroupfs".into());
        let docs: Vec<Value> =
            serde_norway::Deserializer::from_str(&cfg.for_init(&c, "abcdef.0123456789abcdef", "k"))
                .map(|d| Value::deserialize(d).unwrap())
                .collect();
        let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
        let reg = &kind("InitConfiguration")["nodeRegistration"];
        assert_eq!(reg["criSocket"], "/var/run/dockershim.sock");
        assert_eq!(reg["name"], "n1");
        // The kubelet is not pointed at containerd any more.
        assert_eq!(
            reg["kubeletExtraArgs"],
            serde_norway::from_str::<Value>("v: '2'").unwrap()
        );
        assert_eq!(kind("KubeletConfiguration")["cgroupDriver"], "cgroupfs");
        let join = JoinData {
            api_server_endpoint: "198.18.0.11:6443".into(),
            master0_ip: "198.18.0.11".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec!["sha256:00ff".into()],
            certificate_key: "k".into(),
        };
        c.cri_socket = Some("unix:///var/run/cri-dockerd.sock".into());
        let node: Value = serde_norway::from_str(&cfg.for_join(&c, &join, false)).unwrap();
        assert_eq!(
            node["nodeRegistration"]["criSocket"],
            "unix:///var/run/cri-dockerd.sock"
        );
        assert_eq!(
            node["nodeRegistration"]["kubeletExtraArgs"]["container-runtime-endpoint"],
            "unix:///var/run/cri-dockerd.sock"
        );
    }

    #[test]
    fn documents_without_a_known_kind_are_refused_with_their_number() {
        let err = KubeadmConfig::parse("kind: InitConfiguration\n---\nfoo: 1\n", "Clusterfile")
            .unwrap_err();
        assert_eq!(err.to_string(), "Clusterfile: document 2: it has no `kind`");
    }
}
