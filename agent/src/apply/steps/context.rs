//! What every step works with, and the helpers they share.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use seaport_rootfs::kubeadm::{api_balancer_addr, KubeadmConfig, APISERVER_DOMAIN};
use seaport_shared::cluster::{Role, Step};

use super::super::effects::{CommandOutput, CommandSpec, Effects};
use super::super::files::HostFiles;
use super::super::image::LayoutImage;
use super::super::journal::{Change, Journal, StepStatus};
use super::super::options::{
    env_map, ApplyOptions, DEFAULT_REGISTRY_DOMAIN, DEFAULT_REGISTRY_PORT,
};
use super::super::outcome::ApplyError;
use super::super::runtime;
use super::error::StepError;

/// One host's apply in progress: the options, the image, the journal and
/// what is computed from them once (addresses, env, the registry's name).
pub(crate) struct StepContext<'a> {
    pub(crate) opts: &'a ApplyOptions,
    pub(crate) fx: &'a dyn Effects,
    pub(crate) img: LayoutImage,
    pub(crate) journal: Journal,
    pub(crate) files: HostFiles,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) host_ip: String,
    pub(crate) registry_ip: String,
    pub(crate) master0_ip: String,
    pub(crate) registry_domain: String,
    pub(crate) registry_port: String,
    /// The step running now has run on this host before (an upgrade, new
    /// env, or an interrupted or failed attempt): services it starts are
    /// restarted so they pick up new binaries and configuration.
    pub(crate) rerun: bool,
    /// The step running now was interrupted last time (kubeadm starts
    /// clean then).
    pub(crate) interrupted: bool,
}

impl<'a> StepContext<'a> {
    pub(crate) fn new(
        opts: &'a ApplyOptions,
        fx: &'a dyn Effects,
        img: LayoutImage,
        journal: Journal,
    ) -> Result<Self, ApplyError> {
        let host_ip = match &opts.host_ip {
            Some(ip) => ip.clone(),
            None => crate::facts::host_ips()
                .into_iter()
                .find(|ip| ip.is_ipv4())
                .map(|ip| ip.to_string())
                .ok_or(ApplyError::NoIpv4)?,
        };
        let master0_ip = match (&opts.master0_ip, &opts.join_data, opts.role) {
            (_, _, Role::Master0) => host_ip.clone(),
            (Some(ip), _, _) => ip.clone(),
            (None, Some(j), _) => j.master0_ip.clone(),
            (None, None, role) => return Err(ApplyError::NoMaster0(role)),
        };
        let registry_ip = opts
            .registry_ip
            .clone()
            .unwrap_or_else(|| master0_ip.clone());
        let image_env = img.env();
        let mut env = env_map([image_env.as_slice(), &opts.env, &opts.host_env]);
        let registry_domain = env
            .get("registry_domain")
            .or_else(|| env.get("RegistryDomain"))
            .cloned()
            .unwrap_or_else(|| DEFAULT_REGISTRY_DOMAIN.to_string());
        let registry_port = env
            .get("registry_port")
            .or_else(|| env.get("RegistryPort"))
            .cloned()
            .unwrap_or_else(|| DEFAULT_REGISTRY_PORT.to_string());
        // The domain names a directory on the host (containerd's
        // certs.d/DOMAIN:PORT/), and may come from the image's ENV.
        seaport_rootfs::reference::validate_registry(&format!("{registry_domain}:{registry_port}"))
            .map_err(|e| ApplyError::Registry(e.to_string()))?;
        let computed = [
            ("RegistryDomain", registry_domain.clone()),
            ("RegistryPort", registry_port.clone()),
            ("RegistryURL", format!("{registry_domain}:{registry_port}")),
            ("RegistryIP", registry_ip.clone()),
            ("registry_domain", registry_domain.clone()),
            ("registry_port", registry_port.clone()),
            ("HostIP", host_ip.clone()),
            ("Master0IP", master0_ip.clone()),
            ("ClusterName", opts.cluster.to_string()),
            ("APIServerDomain", APISERVER_DOMAIN.to_string()),
        ];
        for (k, v) in computed {
            env.entry(k.to_string()).or_insert(v);
        }
        Ok(Self {
            opts,
            fx,
            img,
            journal,
            files: HostFiles::new(&opts.host_root),
            env,
            host_ip,
            registry_ip,
            master0_ip,
            registry_domain,
            registry_port,
            rerun: false,
            interrupted: false,
        })
    }

    /// The local registry's and the API server's names in `/etc/hosts`
    /// (each line once).
    pub(crate) fn name_registry_hosts(&mut self) -> Result<(), StepError> {
        let hosts_line = format!("{} {}", self.registry_ip, self.registry_domain);
        self.files
            .append_line(&mut self.journal, "/etc/hosts", &hosts_line)?;
        let api = self.api_ip()?;
        self.name_api_server(&api)
    }

    /// Where this host reaches the API servers, as sealer has it: a worker
    /// through its node-local balancer (the cluster env's
    /// [`seaport_rootfs::kubeadm::APISERVER_VIP_ENV`], sealer's VIP by default); master0 itself; any
    /// other master master0 until it joined, then itself.
    pub(crate) fn api_ip(&self) -> Result<String, StepError> {
        Ok(match self.opts.role {
            Role::Node => api_balancer_addr(&self.opts.env)
                .map_err(StepError::ApiBalancer)?
                .ip()
                .to_string(),
            Role::Master0 => self.host_ip.clone(),
            Role::Master => {
                let joined = self
                    .journal
                    .state()
                    .steps
                    .get(Step::Kubeadm.as_str())
                    .is_some_and(|s| s.status == StepStatus::Done);
                if joined {
                    self.host_ip.clone()
                } else {
                    self.master0_ip.clone()
                }
            }
        })
    }

    /// `IP apiserver.cluster.local` in `/etc/hosts`, and no other line of
    /// the install for that name (a master that joined stops naming
    /// master0). Lines the install did not write stay.
    pub(crate) fn name_api_server(&mut self, ip: &str) -> Result<(), StepError> {
        let wanted = format!("{ip} {APISERVER_DOMAIN}");
        let stale: Vec<String> = self
            .journal
            .state()
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::AppendedLine { path, line }
                    if path == "/etc/hosts"
                        && *line != wanted
                        && line.split_whitespace().nth(1) == Some(APISERVER_DOMAIN) =>
                {
                    Some(line.clone())
                }
                _ => None,
            })
            .collect();
        for line in stale {
            self.files
                .remove_line(&mut self.journal, "/etc/hosts", &line)?;
        }
        self.files
            .append_line(&mut self.journal, "/etc/hosts", &wanted)?;
        Ok(())
    }

    pub(crate) fn rootfs(&self) -> PathBuf {
        self.opts.rootfs()
    }

    /// `domain:port` of the local registry.
    pub(crate) fn local_registry(&self) -> String {
        format!("{}:{}", self.registry_domain, self.registry_port)
    }

    /// A fingerprint of what a step depends on: the image, the env (not for
    /// the unpack), and for kubeadm its documents and join data.
    pub(crate) fn fingerprint(&self, step: Step) -> String {
        let mut h = format!("{step}\n{}\n", self.img.digest);
        if step != Step::Rootfs {
            for (k, v) in &self.env {
                h.push_str(&format!("{k}={v}\n"));
            }
        }
        // The registry's certificate (never its key) for the steps that
        // serve or trust it.
        if let Some(tls) = &self.opts.registry_tls {
            if matches!(step, Step::Runtime | Step::Registry | Step::RegistryAccess) {
                h.push_str(&tls.ca);
                h.push_str(tls.certificate.as_deref().unwrap_or_default());
            }
        }
        if step == Step::Kubeadm {
            h.push_str(&format!(
                "{:?}\n{:?}\n",
                self.opts.kubeadm_config, self.opts.join_data
            ));
        }
        seaport_shared::digest::Digest::of(h.as_bytes()).hex()[..16].to_string()
    }

    // ---- systemd -------------------------------------------------------

    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, StepError> {
        let spec = CommandSpec::new("systemctl", args, self.opts.timeouts.systemctl);
        Ok(self.fx.run(&spec)?)
    }

    pub(crate) fn systemctl_ok(&self, args: &[&str]) -> Result<(), StepError> {
        let out = self.systemctl(args)?;
        if out.success() {
            Ok(())
        } else {
            Err(StepError::Systemctl {
                args: args.join(" "),
                code: out.code,
                output: out.last_lines(20),
            })
        }
    }

    /// Enables (and with `start`, starts) a unit, journaling it first.
    pub(crate) fn enable_unit(&mut self, unit: &str, start: bool) -> Result<(), StepError> {
        let known = self
            .journal
            .state()
            .changes
            .iter()
            .any(|c| matches!(c, Change::UnitEnabled { unit: u, .. } if u == unit));
        if !known {
            let was_enabled = self
                .systemctl(&["is-enabled", unit])
                .map(|o| o.success())
                .unwrap_or(false);
            self.journal.record(Change::UnitEnabled {
                unit: unit.to_string(),
                was_enabled,
            })?;
        }
        if start {
            self.systemctl_ok(&["enable", "--now", unit])
        } else {
            self.systemctl_ok(&["enable", unit])
        }
    }

    pub(crate) fn install_file(
        &mut self,
        abs: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<bool, StepError> {
        Ok(self.files.install(&mut self.journal, abs, bytes, mode)?)
    }

    /// Runs `spec` under the hook tracking named `key` and checks its exit.
    pub(crate) fn run_tracked(
        &mut self,
        key: &str,
        what: &str,
        spec: &CommandSpec,
    ) -> Result<(), StepError> {
        let fx = self.fx;
        let out = self
            .files
            .tracked(&mut self.journal, key, || fx.run(spec))??;
        check(what, &out, spec.timeout)
    }

    pub(crate) fn wait_until(
        &self,
        what: &str,
        ok: impl FnMut() -> bool,
    ) -> Result<Duration, StepError> {
        wait_until(self.opts.timeouts.service, what, ok)
    }

    /// Records `abs` as a directory the install owns entirely, unless it
    /// exists already (then it is the host's, and kept).
    pub(crate) fn claim_tree(&mut self, abs: &str) -> Result<(), StepError> {
        if fs::symlink_metadata(self.files.host(abs)).is_ok() || self.journal.knows_path(abs) {
            return Ok(());
        }
        self.journal.record(Change::CreatedTree {
            path: abs.to_string(),
        })?;
        Ok(())
    }

    /// The env hooks, kubeadm and launched commands run with.
    pub(crate) fn hook_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        // The runtime the install chose, for scripts that branch on it
        // (the default rootfs's init.sh).
        if let Some(r) = &self.journal.state().runtime {
            for k in ["ContainerRuntime", "container_runtime"] {
                env.entry(k.to_string())
                    .or_insert_with(|| r.runtime.name().to_string());
            }
        }
        // Root's home, as sealer's commands over SSH have: kubectl finds
        // `/root/.kube/config` there (the kubeadm step puts it on masters).
        env.entry("HOME".into())
            .or_insert_with(|| super::paths::ROOT_HOME.to_string());
        env.insert("SEAPORT_CLUSTER".into(), self.opts.cluster.to_string());
        env.insert("SEAPORT_ROLE".into(), self.opts.role.to_string());
        env.insert(
            "SEAPORT_ROOTFS".into(),
            self.rootfs().to_string_lossy().into_owned(),
        );
        env
    }

    /// Seaport's defaults, the image's `etc/kubeadm.yml`, the Clusterfile's
    /// kubeadm documents, merged.
    pub(crate) fn kubeadm_config(&self) -> Result<KubeadmConfig, StepError> {
        let mut cfg = KubeadmConfig::defaults();
        if let Some(text) = read_text_inside(&self.rootfs(), "etc/kubeadm.yml")? {
            cfg.merge(&KubeadmConfig::parse(&text, "etc/kubeadm.yml")?);
        }
        if let Some(text) = &self.opts.kubeadm_config {
            cfg.merge(&KubeadmConfig::parse(
                text,
                "the Clusterfile's kubeadm documents",
            )?);
        }
        Ok(cfg)
    }

    /// The Kubernetes version installed: kubeadm's `kubernetesVersion`,
    /// else the image's KUBEVERSION or sealer version label, else its
    /// `Metadata`.
    pub(crate) fn kube_version(&self) -> Result<Option<String>, StepError> {
        let cfg = self.kubeadm_config()?;
        let from_kubeadm = cfg
            .doc("ClusterConfiguration")
            .and_then(|d| d.get("kubernetesVersion"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let labels = &self.img.config.config.labels;
        let metadata = runtime::metadata_version(&self.rootfs());
        Ok(runtime::kube_version([
            from_kubeadm.as_deref(),
            labels
                .get(seaport_rootfs::oci::LABEL_KUBE_VERSION)
                .map(String::as_str),
            labels
                .get(runtime::LABEL_CLUSTER_RUNTIME_VERSION)
                .map(String::as_str),
            metadata.as_deref(),
        ]))
    }
}

/// `systemctl VERB UNITS...`, then waits until `CLI version` answers.
pub(crate) fn start_and_wait(
    fx: &dyn Effects,
    systemctl_timeout: Duration,
    limit: Duration,
    verb: &str,
    units: &[&str],
    what: &str,
    cli: &str,
) -> Result<Duration, StepError> {
    let mut args = vec![verb];
    args.extend_from_slice(units);
    let out = fx.run(&CommandSpec::new("systemctl", &args, systemctl_timeout))?;
    if !out.success() {
        return Err(StepError::Systemctl {
            args: args.join(" "),
            code: out.code,
            output: out.last_lines(20),
        });
    }
    wait_until(limit, &format!("{what} ({cli} version)"), || {
        fx.run(&CommandSpec::new(cli, &["version"], systemctl_timeout))
            .is_ok_and(|o| o.success())
    })
}

/// Polls `ok` every 200 ms until it holds or `limit` passes.
pub(crate) fn wait_until(
    limit: Duration,
    what: &str,
    mut ok: impl FnMut() -> bool,
) -> Result<Duration, StepError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(StepError::NoAnswer {
        what: what.to_string(),
        limit,
    })
}

/// Whether a command succeeded; if not, why, with its last lines.
pub(crate) fn check(what: &str, out: &CommandOutput, timeout: Duration) -> Result<(), StepError> {
    if out.success() {
        return Ok(());
    }
    Err(if out.timed_out {
        StepError::TimedOut {
            what: what.to_string(),
            timeout,
            output: out.last_lines(20),
        }
    } else {
        StepError::Exited {
            what: what.to_string(),
            status: out.code.map_or("a signal".to_string(), |c| c.to_string()),
            output: out.last_lines(20),
        }
    })
}

/// The bytes of `path`, a file the image shipped under `root`: a symlink is
/// followed only while it resolves inside `root` (an image's link to a host
/// file, `bin/x -> /etc/shadow`, is refused rather than copied onto the
/// host); `None` when it does not exist.
pub(crate) fn read_inside(root: &Path, path: &Path) -> Result<Option<Vec<u8>>, StepError> {
    let canon_root = fs::canonicalize(root).map_err(|source| StepError::Io {
        action: "resolving",
        path: root.to_path_buf(),
        source,
    })?;
    let reading = |source| StepError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    match fs::canonicalize(path) {
        Ok(c) if c.starts_with(&canon_root) => fs::read(&c).map(Some).map_err(reading),
        Ok(c) => Err(StepError::Outside {
            path: path.to_path_buf(),
            resolved: c,
            root: root.to_path_buf(),
        }),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(reading(e)),
    }
}

/// [`read_inside`] of `rel` in the rootfs, as text.
pub(crate) fn read_text_inside(rootfs: &Path, rel: &str) -> Result<Option<String>, StepError> {
    Ok(read_inside(rootfs, &rootfs.join(rel))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `s` quoted for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    seaport_shared::shell::quote(s)
}

/// One step of the engine.
pub(crate) trait HostStep: Sync {
    /// Which step it is.
    fn step(&self) -> Step;

    /// Runs the step; returns what it did, in a few words.
    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError>;

    /// Whether a done step runs again when its inputs changed (kubeadm does
    /// not: a host joins once).
    fn reruns_on_change(&self) -> bool {
        true
    }
}
