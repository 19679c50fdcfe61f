//! What one host's apply is given: the image, the cluster, this host's role
//! and addresses, env, kubeadm documents, join data, where things live.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use seaport_rootfs::kubeadm::JoinData;
use seaport_shared::cluster::{ClusterName, Role, Step};
use seaport_shared::digest::Digest;

use super::image::{ImageError, LayoutImage};

/// Default root of cluster data on a host.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/seaport/data";
/// The local registry's default domain.
pub const DEFAULT_REGISTRY_DOMAIN: &str = "sea.hub";
/// The local registry's default port.
pub const DEFAULT_REGISTRY_PORT: &str = "5000";

/// Timeouts of the long-running parts.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Each hook script.
    pub hook: Duration,
    /// `kubeadm init`/`join`/`reset`.
    pub kubeadm: Duration,
    /// A service answering after start (containerd, the registry).
    pub service: Duration,
    /// A `systemctl` call.
    pub systemctl: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            hook: Duration::from_secs(300),
            kubeadm: Duration::from_secs(600),
            service: Duration::from_secs(60),
            systemctl: Duration::from_secs(90),
        }
    }
}

/// Where the image comes from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// An OCI image layout directory and the image's name in it.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The image's name (or manifest digest) in it.
        name: String,
    },
    /// The agent's blob store (blobs by hex digest) and the manifest.
    Blobs {
        /// The directory of blobs.
        dir: PathBuf,
        /// The manifest digest.
        manifest: Digest,
    },
}

impl ImageSource {
    /// Opens the image (this host's platform of a multi-platform one).
    pub fn open(&self) -> Result<LayoutImage, ImageError> {
        match self {
            ImageSource::Layout { dir, name } => LayoutImage::open(dir, name),
            ImageSource::Blobs { dir, manifest } => LayoutImage::from_blobs(dir, dir, manifest),
        }
    }
}

/// Everything one host's apply needs.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The image.
    pub image: ImageSource,
    /// Only these steps (in the role's order); the steps before them must be
    /// done. `None`: every step.
    pub only: Option<Vec<Step>>,
    /// The first master's IP (default: this host for master0, else from the
    /// join data).
    pub master0_ip: Option<String>,
    /// The cluster name.
    pub cluster: ClusterName,
    /// This host's role.
    pub role: Role,
    /// This host's IP (default: its first non-loopback IPv4).
    pub host_ip: Option<String>,
    /// The registry host's IP (default: this host for master0, else the
    /// first master from the join data).
    pub registry_ip: Option<String>,
    /// Every master's IP (for the certificate SANs).
    pub master_ips: Vec<String>,
    /// Cluster env (Clusterfile `env`, `-e`).
    pub env: Vec<(String, String)>,
    /// This host's own env (Clusterfile host `env`).
    pub host_env: Vec<(String, String)>,
    /// kubeadm documents from the Clusterfile.
    pub kubeadm_config: Option<String>,
    /// Join data from the first master (masters and nodes).
    pub join_data: Option<JoinData>,
    /// Where the first master writes join data (besides the data dir).
    pub join_data_out: Option<PathBuf>,
    /// The local registry's username and password (htpasswd on registry
    /// hosts, pull credentials on every host). Secret.
    pub registry_auth: Option<seaport_shared::wire::RegistryCredentials>,
    /// The local registry's TLS: the CA every host trusts, the certificate
    /// and key on registry hosts. None: plain HTTP. Secret (the key).
    pub registry_tls: Option<seaport_shared::wire::RegistryTls>,
    /// The agent's state directory (the journal lives here).
    pub state_dir: PathBuf,
    /// Root of cluster data (`/var/lib/seaport/data`).
    pub data_root: PathBuf,
    /// The host root (`/`; a temporary directory in unit tests).
    pub host_root: PathBuf,
    /// Allow device nodes in layers.
    pub allow_devices: bool,
    /// Allow setuid/setgid files in layers.
    pub allow_setuid: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Move a cluster installed here from another image to this one: the
    /// steps whose inputs changed run again (kubeadm never does). Without
    /// it another image is refused.
    pub upgrade: bool,
}

impl ApplyOptions {
    /// `<data-root>/<cluster>`.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_root.join(&self.cluster)
    }

    /// `<data-root>/<cluster>/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.cluster_dir().join("rootfs")
    }
}

/// `K=V` pairs into a map, later ones winning.
pub fn env_map<'a>(
    layers: impl IntoIterator<Item = &'a [(String, String)]>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for layer in layers {
        for (k, v) in layer {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}
