//! The container runtime of an install: which one the image gets (containerd
//! or docker), its registry mirrors, and the CRI socket kubeadm is given.
//!
//! The choice, first that decides:
//!
//! 1. the cluster env `ContainerRuntime` (what a Clusterfile's
//!    `spec.containerRuntime.type` becomes, as in sealer 0.9+), then
//!    `container_runtime` (the default rootfs's `init.sh` reads it);
//! 2. the image label `cluster.alpha.sealer.io/container-runtime-type`
//!    (sealer 0.9+ images, basefs);
//! 3. what `cri/` ships: a `dockerd` (plain, or in an archive such as
//!    `cri/docker.tar.gz`, as sealer's images before 0.9 carry it) means
//!    docker; anything else containerd.
//!
//! Both runtimes get mirrors for the same domains ([`mirrored_domains`]): the
//! local registry, `docker.io` and every domain cached in the image's
//! `registry/`. containerd reads them from `hosts.toml` files; docker from
//! `/etc/docker/daemon.json` ([`docker_daemon_json`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Errors choosing and configuring the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The env or a label names no runtime the agent knows.
    #[error("{from}={value}: unknown container runtime (containerd or docker)")]
    Unknown {
        /// What named it.
        from: &'static str,
        /// What it said.
        value: String,
    },
    /// Kubernetes without a docker shim and no cri-dockerd.
    #[error("Kubernetes {0} has no docker shim (removed in v1.24): an image with docker as its runtime must ship cri-dockerd in cri/ or bin/, or use containerd")]
    NoDockerShim(String),
    /// A configuration file of the image is unusable.
    #[error("{file}: {problem}")]
    Config {
        /// The file (`etc/daemon.json`).
        file: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A directory setting is unusable.
    #[error("{file}: {key} {value:?}: {problem}")]
    Dir {
        /// The file.
        file: &'static str,
        /// The setting.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: DirProblem,
    },
    /// The image's cached registry cannot be read.
    #[error(transparent)]
    Cache(#[from] seaport_rootfs::imagecache::CacheError),
}

/// What is wrong with a directory setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    /// Relative.
    #[error("not an absolute path")]
    NotAbsolute,
    /// `.` or `..` in it.
    #[error("has . or .. components")]
    DotComponents,
    /// `/` itself.
    #[error("is the root directory")]
    Root,
}

fn daemon_json(problem: impl Into<String>) -> RuntimeError {
    RuntimeError::Config {
        file: "etc/daemon.json",
        problem: problem.into(),
    }
}

/// The label sealer 0.9+ images name their container runtime with.
pub const LABEL_CONTAINER_RUNTIME: &str = "cluster.alpha.sealer.io/container-runtime-type";
/// The label sealer 0.9+ images name their Kubernetes version with.
pub const LABEL_CLUSTER_RUNTIME_VERSION: &str = "cluster.alpha.sealer.io/cluster-runtime-version";
/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The kubelet's built-in docker shim (Kubernetes before v1.24), as sealer
/// gives it to kubeadm.
pub const DOCKERSHIM_SOCKET: &str = "/var/run/dockershim.sock";
/// cri-dockerd's socket (its `cri-docker.socket` unit).
pub const CRI_DOCKERD_SOCKET: &str = "unix:///var/run/cri-dockerd.sock";
/// Where a CRI script of a sealer 0.9+ image writes the socket kubeadm is
/// to use; it wins over the computed one.
pub const SOCKET_PATH_FILE: &str = "/etc/sealerio/cri/socket-path";
/// docker's default data root.
pub const DOCKER_DATA_ROOT: &str = "/var/lib/docker";
/// docker's default exec root.
pub const DOCKER_EXEC_ROOT: &str = "/run/docker";
/// The bridge docker creates unless told otherwise.
pub const DOCKER_BRIDGE: &str = "docker0";
/// containerd's default root.
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";
/// The key only sealer's own docker build understands in `daemon.json`:
/// mirrors for any registry domain, not only Docker Hub.
const MIRROR_REGISTRIES: &str = "mirror-registries";

/// A container runtime the agent installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// containerd, its CRI plugin serving kubelet.
    Containerd,
    /// dockerd, with the kubelet's docker shim or cri-dockerd.
    Docker,
}

impl Runtime {
    /// `containerd` or `docker`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Docker => "docker",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "containerd" => Some(Runtime::Containerd),
            "docker" => Some(Runtime::Docker),
            _ => None,
        }
    }

    /// Its systemd unit.
    pub fn unit(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd.service",
            Runtime::Docker => "docker.service",
        }
    }
}

/// The runtime chosen and what chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The runtime.
    pub runtime: Runtime,
    /// What decided, for the step's summary (`env ContainerRuntime`, ...).
    pub reason: String,
}

/// What the runtime step set up, kept in the journal for the later steps
/// (the hooks' env, the mirrors, kubeadm) and for reset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// The runtime.
    pub runtime: Runtime,
    /// The CRI socket kubeadm is given.
    pub cri_socket: String,
    /// The cgroup driver the runtime uses, when the kubelet must follow it
    /// (docker's, from `exec-opts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_driver: Option<String>,
}

/// Chooses the runtime from the cluster env, the image labels and the
/// names of the executables `cri/` ships.
pub fn choose(
    env: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    cri_executables: &[String],
) -> Result<Choice, RuntimeError> {
    let explicit = [
        ("env ContainerRuntime", env.get("ContainerRuntime")),
        ("env container_runtime", env.get("container_runtime")),
        (
            "label cluster.alpha.sealer.io/container-runtime-type",
            labels.get(LABEL_CONTAINER_RUNTIME),
        ),
    ];
    for (source, value) in explicit {
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return Runtime::parse(value)
            .map(|runtime| Choice {
                runtime,
                reason: format!("{source}={value}"),
            })
            .ok_or_else(|| RuntimeError::Unknown {
                from: source,
                value: value.clone(),
            });
    }
    if cri_executables.iter().any(|n| n == "dockerd") {
        return Ok(Choice {
            runtime: Runtime::Docker,
            reason: "cri/ ships dockerd".into(),
        });
    }
    Ok(Choice {
        runtime: Runtime::Containerd,
        reason: "cri/ ships no dockerd".into(),
    })
}

/// The domains the runtime mirrors to the local registry `local`
/// (`domain:port`): the local registry itself, `docker.io`, then every
/// domain cached in the image's `registry/` directory.
pub fn mirrored_domains(local: &str, registry_dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let mut domains = vec![local.to_string(), "docker.io".to_string()];
    let cached = seaport_rootfs::imagecache::cached_domains(registry_dir)?;
    for d in cached {
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    Ok(domains)
}

/// `vMAJOR.MINOR[.PATCH...]` as (major, minor).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The Kubernetes version of an install: the first of `candidates` that
/// parses (kubeadm's `kubernetesVersion`, then the image's labels and
/// `Metadata`).
pub fn kube_version<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .find(|v| parse_version(v).is_some())
        .map(str::to_string)
}

/// The `version` (or `kubeVersion`) of a rootfs's `Metadata` file.
pub fn metadata_version(rootfs: &Path) -> Option<String> {
    let text = fs::read_to_string(rootfs.join("Metadata")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    ["version", "kubeVersion"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str).map(str::to_string))
}

/// How kubelet reaches docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerCri {
    /// The kubelet's built-in shim (Kubernetes before v1.24).
    Dockershim,
    /// cri-dockerd, shipped by the image.
    CriDockerd,
}

impl DockerCri {
    /// The socket kubeadm is given.
    pub fn socket(self) -> &'static str {
        match self {
            DockerCri::Dockershim => DOCKERSHIM_SOCKET,
            DockerCri::CriDockerd => CRI_DOCKERD_SOCKET,
        }
    }
}

/// The docker shim for Kubernetes `version` (None: unknown) when the image
/// ships cri-dockerd or not: dockershim before v1.24, as sealer gives it;
/// cri-dockerd from v1.24 (the kubelet has no shim any more) and when the
/// version is unknown.
pub fn docker_cri(version: Option<&str>, has_cri_dockerd: bool) -> Result<DockerCri, RuntimeError> {
    let modern = version.and_then(parse_version).map(|v| v >= (1, 24));
    match (modern, has_cri_dockerd) {
        (Some(false), _) => Ok(DockerCri::Dockershim),
        (_, true) => Ok(DockerCri::CriDockerd),
        (None, false) => Ok(DockerCri::Dockershim),
        (Some(true), false) => Err(RuntimeError::NoDockerShim(
            version.unwrap_or_default().to_string(),
        )),
    }
}

/// Whether the dockerd binary at `path` understands `mirror-registries`
/// (sealer's docker build does; upstream docker refuses to start with it).
pub fn dockerd_knows_mirror_registries(path: &Path) -> bool {
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let needle = MIRROR_REGISTRIES.as_bytes();
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        if contains(&window, needle) {
            return true;
        }
        let keep = needle.len().saturating_sub(1).min(window.len());
        carry = window[window.len() - keep..].to_vec();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return false;
        }
        if &hay[at..at + needle.len()] == needle {
            return true;
        }
        from = at + 1;
    }
    false
}

/// `/etc/docker/daemon.json` as the install writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonJson {
    /// The file's text.
    pub text: String,
    /// `data-root` (docker's default when unset).
    pub data_root: String,
    /// `exec-root` (docker's default when unset).
    pub exec_root: String,
    /// The cgroup driver from `exec-opts` (`cgroupfs`, docker's default,
    /// when unset).
    pub cgroup_driver: String,
    /// What the install changed that the user should know.
    pub notes: Vec<String>,
}

/// The image's `etc/daemon.json` (`image`, None when it ships none) with
/// the local registry `local` as an insecure (plain HTTP) registry, or
/// with `tls` as an `https://` one (its CA in docker's `certs.d`), and a
/// mirror for every domain of `domains`: per domain in `mirror-registries`
/// when the dockerd knows that key, else in `registry-mirrors` (which
/// upstream docker applies to Docker Hub only). Everything else the image
/// sets is kept.
pub fn docker_daemon_json(
    image: Option<&str>,
    local: &str,
    domains: &[String],
    knows_mirror_registries: bool,
    tls: bool,
) -> Result<DaemonJson, RuntimeError> {
    let mut cfg: Map<String, Value> = match image.map(str::trim).filter(|t| !t.is_empty()) {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(daemon_json("not a JSON object")),
            Err(e) => return Err(daemon_json(format!("not valid JSON: {e}"))),
        },
    };
    let mut notes = Vec::new();
    let local_url = if tls {
        format!("https://{local}")
    } else {
        format!("http://{local}")
    };
    let is_local = |url: &str| {
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        host == local
    };
    let strings = |v: Option<&Value>, key: &str| -> Result<Vec<String>, RuntimeError> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| daemon_json(format!("{key}: not a list of strings")))
                })
                .collect(),
            Some(_) => Err(daemon_json(format!("{key}: not a list"))),
        }
    };
    let mut insecure = strings(cfg.get("insecure-registries"), "insecure-registries")?;
    if tls {
        // Verified against the cluster's registry CA, never skipped.
        insecure.retain(|r| !is_local(r));
        if insecure.is_empty() {
            cfg.remove("insecure-registries");
        } else {
            cfg.insert("insecure-registries".into(), json_strings(&insecure));
        }
    } else {
        if !insecure.iter().any(|r| r == local) {
            insecure.push(local.to_string());
        }
        cfg.insert("insecure-registries".into(), json_strings(&insecure));
    }
    // Mirrors naming the local registry use the scheme it speaks (sealer's
    // images name it `https://`).
    let mut mirrors = strings(cfg.get("registry-mirrors"), "registry-mirrors")?;
    for m in mirrors.iter_mut() {
        if is_local(m) {
            *m = local_url.clone();
        }
    }
    let others: Vec<&String> = domains.iter().filter(|d| d.as_str() != local).collect();
    if knows_mirror_registries {
        let mut entries = match cfg.remove(MIRROR_REGISTRIES) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(daemon_json(format!("{MIRROR_REGISTRIES}: not a list"))),
        };
        for e in entries.iter_mut() {
            let Some(list) = e.get_mut("mirrors").and_then(Value::as_array_mut) else {
                continue;
            };
            for m in list.iter_mut() {
                if m.as_str().is_some_and(is_local) {
                    *m = Value::String(local_url.clone());
                }
            }
        }
        for d in &others {
            let existing = entries
                .iter_mut()
                .find(|e| e.get("domain").and_then(Value::as_str) == Some(d.as_str()));
            match existing {
                Some(e) => {
                    let has = e
                        .get("mirrors")
                        .and_then(Value::as_array)
                        .is_some_and(|l| l.iter().any(|m| m.as_str() == Some(&local_url)));
                    if !has {
                        let mut list = e
                            .get("mirrors")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        list.insert(0, Value::String(local_url.clone()));
                        e["mirrors"] = Value::Array(list);
                    }
                }
                None => {
                    let mut entry = Map::new();
                    entry.insert("domain".into(), Value::String((*d).clone()));
                    entry.insert(
                        "mirrors".into(),
                        json_strings(std::slice::from_ref(&local_url)),
                    );
                    entries.push(Value::Object(entry));
                }
            }
        }
        cfg.insert(MIRROR_REGISTRIES.into(), Value::Array(entries));
    } else {
        if cfg.remove(MIRROR_REGISTRIES).is_some() {
            notes.push(format!(
                "etc/daemon.json sets {MIRROR_REGISTRIES}, which only sealer's docker build understands and this dockerd would refuse: replaced by registry-mirrors"
            ));
        }
        if !mirrors.contains(&local_url) {
            mirrors.insert(0, local_url.clone());
        }
        let unmirrored: Vec<&str> = others
            .iter()
            .map(|d| d.as_str())
            .filter(|d| *d != "docker.io")
            .collect();
        if !unmirrored.is_empty() {
            notes.push(format!(
                "this dockerd mirrors Docker Hub only: images of {} pull as {local}/REPOSITORY:TAG",
                unmirrored.join(", ")
            ));
        }
    }
    if !mirrors.is_empty() {
        cfg.insert("registry-mirrors".into(), json_strings(&mirrors));
    }
    let data_root = root_setting(&cfg, "data-root", DOCKER_DATA_ROOT)?;
    let exec_root = root_setting(&cfg, "exec-root", DOCKER_EXEC_ROOT)?;
    let cgroup_driver = strings(cfg.get("exec-opts"), "exec-opts")?
        .iter()
        .filter_map(|o| {
            let (k, v) = o.split_once('=')?;
            (k.trim() == "native.cgroupdriver").then(|| v.trim().to_string())
        })
        .next_back()
        .unwrap_or_else(|| "cgroupfs".to_string());
    let text = serde_json::to_string_pretty(&Value::Object(cfg)).expect("JSON serializes") + "\n";
    Ok(DaemonJson {
        text,
        data_root,
        exec_root,
        cgroup_driver,
        notes,
    })
}

fn json_strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

/// An absolute, normalized directory setting (`data-root`, `exec-root`).
fn root_setting(
    cfg: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<String, RuntimeError> {
    let Some(v) = cfg.get(key) else {
        return Ok(default.to_string());
    };
    let s = v
        .as_str()
        .ok_or_else(|| daemon_json(format!("{key}: not a string")))?;
    check_abs_dir(s).map_err(|problem| RuntimeError::Dir {
        file: "etc/daemon.json",
        key: key.to_string(),
        value: s.to_string(),
        problem,
    })
}

/// An absolute path without `..` or `.` components, without a trailing `/`.
pub fn check_abs_dir(s: &str) -> Result<String, DirProblem> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(DirProblem::NotAbsolute);
    }
    if p.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )
    }) {
        return Err(DirProblem::DotComponents);
    }
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        return Err(DirProblem::Root);
    }
    Ok(t.to_string())
}

/// A top-level directory setting of containerd's configuration (`root`,
/// `state`), or `default`.
pub fn containerd_dir(config: &str, key: &str, default: &str) -> Result<String, RuntimeError> {
    for line in config.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            break;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim().trim_matches('"');
            return check_abs_dir(v).map_err(|problem| RuntimeError::Dir {
                file: "etc/containerd.toml",
                key: key.to_string(),
                value: v.to_string(),
                problem,
            });
        }
    }
    Ok(default.to_string())
}

/// The pause image among the cached ones, as the local registry serves it
/// (`LOCAL/REPOSITORY:TAG`), for cri-dockerd's sandbox image.
pub fn cached_pause_image(registry_dir: &Path, local: &str) -> Option<String> {
    let index = seaport_rootfs::imagecache::ImageIndex::load(registry_dir).ok()?;
    index
        .images
        .iter()
        .filter(|i| i.repository.rsplit('/').next() == Some("pause"))
        .filter_map(|i| {
            let tag = i.name.rsplit_once(':').map(|(_, t)| t)?;
            (!tag.contains('/')).then(|| format!("{local}/{}:{tag}", i.repository))
        })
        .max()
}

/// docker's unit when the image ships none.
pub const DEFAULT_DOCKER_UNIT: &str = "[Unit]\nDescription=Docker Application Container Engine\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nType=notify\nExecStart=/usr/bin/dockerd\nExecStartPost=-/usr/sbin/iptables -P FORWARD ACCEPT\nExecReload=/bin/kill -s HUP $MAINPID\nTimeoutStartSec=0\nRestart=always\nRestartSec=2\nLimitNOFILE=infinity\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\nDelegate=yes\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n";

/// cri-dockerd's socket unit when the image ships none.
pub const DEFAULT_CRI_DOCKER_SOCKET: &str = "[Unit]\nDescription=CRI socket of cri-dockerd\nPartOf=cri-docker.service\n\n[Socket]\nListenStream=/var/run/cri-dockerd.sock\nSocketMode=0660\nSocketUser=root\nSocketGroup=root\n\n[Install]\nWantedBy=sockets.target\n";

/// cri-dockerd's service unit when the image ships none; `pause` is the
/// sandbox image (from the local registry) when one is cached.
pub fn default_cri_docker_service(pause: Option<&str>) -> String {
    let pause = pause
        .map(|p| format!(" --pod-infra-container-image={p}"))
        .unwrap_or_default();
    format!(
        "[Unit]\nDescription=CRI interface for docker (cri-dockerd)\nAfter=network-online.target docker.service cri-docker.socket\nRequires=docker.service cri-docker.socket\n\n[Service]\nType=notify\nExecStart=/usr/bin/cri-dockerd --container-runtime-endpoint fd:// --network-plugin=cni{pause}\nRestart=always\nRestartSec=2\nDelegate=yes\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// containerd's CRI credentials for the registry `local` (`host:port`), a
/// table appended to its `config.toml`.
pub fn containerd_registry_auth(
    local: &str,
    auth: &seaport_shared::wire::RegistryCredentials,
) -> String {
    format!(
        "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{}\".auth]\n  username = \"{}\"\n  password = \"{}\"\n",
        toml_escape(local),
        toml_escape(&auth.username),
        toml_escape(&auth.password)
    )
}

/// `s` as the inside of a TOML basic string.
fn toml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_credentials_are_a_cri_auth_table_with_escaped_strings() {
        let auth = seaport_shared::wire::RegistryCredentials {
            username: "admin".into(),
            password: "p\"w\\x".into(),
        };
        let text = containerd_registry_auth("sea.hub:5000", &auth);
        assert_eq!(
            text,
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"sea.hub:5000\".auth]\n  username = \"admin\"\n  password = \"p\\\"w\\\\x\"\n"
        );
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_runtime_is_chosen_by_env_then_label_then_what_cri_ships() {
        let docker_cri = names(&["containerd", "ctr", "docker", "dockerd", "runc"]);
        let containerd_cri = names(&["containerd", "ctr", "runc"]);
        let label = map(&[(LABEL_CONTAINER_RUNTIME, "docker")]);
        let none = BTreeMap::new();

        let c = choose(&none, &none, &docker_cri).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        assert_eq!(c.reason, "cri/ ships dockerd");
        let c = choose(&none, &none, &containerd_cri).unwrap();
        assert_eq!(c.runtime, Runtime::Containerd);
        let c = choose(&none, &none, &[]).unwrap();
        assert_eq!(c.runtime, Runtime::Containerd);

        let c = choose(&none, &label, &containerd_cri).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        assert!(c.reason.contains("container-runtime-type=docker"), "{c:?}");

        // The Clusterfile's spec.containerRuntime.type (env ContainerRuntime)
        // wins over container_runtime, which wins over the label.
        let env = map(&[
            ("ContainerRuntime", "containerd"),
            ("container_runtime", "docker"),
        ]);
        let c = choose(&env, &label, &docker_cri).unwrap();
        assert_eq!(c.runtime, Runtime::Containerd);
        assert_eq!(c.reason, "env ContainerRuntime=containerd");
        let env = map(&[("container_runtime", "Docker")]);
        let c = choose(&env, &none, &containerd_cri).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);

        let err = choose(&map(&[("ContainerRuntime", "crio")]), &none, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ContainerRuntime=crio") && err.contains("containerd or docker"),
            "{err}"
        );
    }

    #[test]
    fn docker_gets_dockershim_before_1_24_and_cri_dockerd_from_1_24() {
        assert_eq!(
            docker_cri(Some("v1.19.8"), false).unwrap(),
            DockerCri::Dockershim
        );
        assert_eq!(
            docker_cri(Some("v1.23.17"), true).unwrap(),
            DockerCri::Dockershim
        );
        assert_eq!(
            docker_cri(Some("v1.24.0"), true).unwrap(),
            DockerCri::CriDockerd
        );
        assert_eq!(docker_cri(None, true).unwrap(), DockerCri::CriDockerd);
        assert_eq!(docker_cri(None, false).unwrap(), DockerCri::Dockershim);
        let err = docker_cri(Some("v1.26.3"), false).unwrap_err().to_string();
        assert!(
            err.contains("v1.26.3") && err.contains("cri-dockerd"),
            "{err}"
        );
        assert_eq!(DockerCri::Dockershim.socket(), "/var/run/dockershim.sock");
        assert_eq!(
            DockerCri::CriDockerd.socket(),
            "unix:///var/run/cri-dockerd.sock"
        );
    }

    #[test]
    fn versions_come_from_the_first_source_that_parses() {
        assert_eq!(parse_version("v1.24.3"), Some((1, 24)));
        assert_eq!(parse_version("1.19"), Some((1, 19)));
        assert_eq!(parse_version("v1.25.0-rc.1"), Some((1, 25)));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(
            kube_version([None, Some("stable"), Some("v1.22.15"), Some("v1.19.8")]).as_deref(),
            Some("v1.22.15")
        );
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Metadata"),
            r#"{"version": "v1.19.8", "arch": "amd64"}"#,
        )
        .unwrap();
        assert_eq!(metadata_version(dir.path()).as_deref(), Some("v1.19.8"));
    }

    #[test]
    fn stock_dockerd_gets_registry_mirrors_and_the_local_registry_as_insecure() {
        let image = r#"{
  "max-concurrent-downloads": 20,
  "insecure-registries": ["sea.hub:5000"],
  "registry-mirrors": ["https://sea.hub:5000", "https://mirror.example"],
  "mirror-registries": [{"domain": "*", "mirrors": ["https://sea.hub:5000"]}],
  "exec-opts": ["native.cgroupdriver=systemd"],
  "data-root": "/data/docker/"
}"#;
        let domains = names(&["sea.hub:5000", "docker.io", "quay.io"]);
        let d = docker_daemon_json(Some(image), "sea.hub:5000", &domains, false, false).unwrap();
        let v: Value = serde_json::from_str(&d.text).unwrap();
        assert_eq!(v["max-concurrent-downloads"], 20, "{}", d.text);
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["sea.hub:5000"])
        );
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://sea.hub:5000", "https://mirror.example"])
        );
        assert!(v.get("mirror-registries").is_none(), "{}", d.text);
        assert_eq!(d.data_root, "/data/docker");
        assert_eq!(d.exec_root, "/run/docker");
        assert_eq!(d.cgroup_driver, "systemd");
        assert!(
            d.notes.iter().any(|n| n.contains("mirror-registries")),
            "{:?}",
            d.notes
        );
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("quay.io") && n.contains("sea.hub:5000/REPOSITORY:TAG")),
            "{:?}",
            d.notes
        );

        // No daemon.json: docker's defaults plus the registry settings.
        let d = docker_daemon_json(None, "reg.local:5001", &domains[1..], false, false).unwrap();
        let v: Value = serde_json::from_str(&d.text).unwrap();
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["reg.local:5001"])
        );
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://reg.local:5001"])
        );
        assert_eq!(d.data_root, "/var/lib/docker");
        assert_eq!(d.cgroup_driver, "cgroupfs");
    }

    #[test]
    fn with_tls_the_local_registry_is_an_https_mirror_and_never_insecure() {
        let image = r#"{
  "insecure-registries": ["sea.hub:5000", "other.example:5000"],
  "registry-mirrors": ["http://sea.hub:5000"]
}"#;
        let domains = names(&["sea.hub:5000", "docker.io"]);
        let d = docker_daemon_json(Some(image), "sea.hub:5000", &domains, false, true).unwrap();
        let v: Value = serde_json::from_str(&d.text).unwrap();
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["other.example:5000"])
        );
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["https://sea.hub:5000"])
        );
        let d = docker_daemon_json(None, "sea.hub:5000", &domains, true, true).unwrap();
        let v: Value = serde_json::from_str(&d.text).unwrap();
        assert!(v.get("insecure-registries").is_none(), "{}", d.text);
        assert_eq!(
            v["mirror-registries"],
            serde_json::json!([{"domain": "docker.io", "mirrors": ["https://sea.hub:5000"]}])
        );
    }

    #[test]
    fn sealers_dockerd_gets_a_mirror_per_cached_domain() {
        let image = r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://sea.hub:5000"]},
                        {"domain": "quay.io", "mirrors": ["https://quay.example"]}]}"#;
        let domains = names(&["sea.hub:5000", "docker.io", "quay.io", "k8s.gcr.io"]);
        let d = docker_daemon_json(Some(image), "sea.hub:5000", &domains, true, false).unwrap();
        let v: Value = serde_json::from_str(&d.text).unwrap();
        let entries = v["mirror-registries"].as_array().unwrap();
        let mirrors = |domain: &str| {
            entries
                .iter()
                .find(|e| e["domain"] == domain)
                .unwrap_or_else(|| panic!("no entry for {domain}: {}", d.text))["mirrors"]
                .clone()
        };
        assert_eq!(mirrors("*"), serde_json::json!(["http://sea.hub:5000"]));
        assert_eq!(
            mirrors("quay.io"),
            serde_json::json!(["http://sea.hub:5000", "https://quay.example"])
        );
        assert_eq!(
            mirrors("docker.io"),
            serde_json::json!(["http://sea.hub:5000"])
        );
        assert_eq!(
            mirrors("k8s.gcr.io"),
            serde_json::json!(["http://sea.hub:5000"])
        );
        assert!(!entries.iter().any(|e| e["domain"] == "sea.hub:5000"));
        assert!(v.get("registry-mirrors").is_none(), "{}", d.text);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    #[test]
    fn bad_daemon_json_is_an_error_naming_the_file_and_key() {
        let domains = names(&["sea.hub:5000"]);
        for (text, want) in [
            ("{ not json", "etc/daemon.json: not valid JSON"),
            ("[1]", "etc/daemon.json: not a JSON object"),
            (
                r#"{"insecure-registries": "sea.hub:5000"}"#,
                "insecure-registries: not a list",
            ),
            (r#"{"data-root": "var/lib/docker"}"#, "data-root"),
            (r#"{"data-root": "/var/lib/../../etc"}"#, ".. components"),
            (r#"{"exec-root": "/"}"#, "root directory"),
        ] {
            let err = docker_daemon_json(Some(text), "sea.hub:5000", &domains, false, false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_mirror_registries_key_is_found_in_a_dockerd_binary() {
        let dir = tempfile::tempdir().unwrap();
        let patched = dir.path().join("patched");
        // Across a read boundary.
        let mut bytes = vec![b'x'; (1 << 20) - 5];
        bytes.extend_from_slice(b"json:\"mirror-registries,omitempty\"");
        bytes.extend(vec![b'y'; 100]);
        fs::write(&patched, &bytes).unwrap();
        assert!(dockerd_knows_mirror_registries(&patched));
        let stock = dir.path().join("stock");
        fs::write(
            &stock,
            b"json:\"registry-mirrors,omitempty\" mirror-registrie",
        )
        .unwrap();
        assert!(!dockerd_knows_mirror_registries(&stock));
        assert!(!dockerd_knows_mirror_registries(&dir.path().join("absent")));
    }

    #[test]
    fn containerd_directories_come_from_the_top_of_its_config() {
        let cfg = "version = 2\nroot = \"/data/containerd\"\n[grpc]\nstate = \"/x\"\n";
        assert_eq!(
            containerd_dir(cfg, "root", CONTAINERD_ROOT).unwrap(),
            "/data/containerd"
        );
        assert_eq!(
            containerd_dir(cfg, "state", "/run/containerd").unwrap(),
            "/run/containerd"
        );
        let err = containerd_dir("root = \"relative\"\n", "root", CONTAINERD_ROOT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("etc/containerd.toml: root"), "{err}");
    }
}
