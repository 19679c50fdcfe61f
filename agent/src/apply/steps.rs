//! The steps themselves. Each is idempotent: run again with the same inputs
//! it changes nothing, and run after an interruption it completes the work.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use seaport_rootfs::kubeadm::{
    Computed, JoinData, KubeadmConfig, APISERVER_DOMAIN, APISERVER_PORT,
};
use seaport_shared::safetar::UnpackOptions;

use super::effects::{CommandOutput, CommandSpec, Effects};
use super::files::HostFiles;
use super::image::LayoutImage;
use super::journal::{Change, Journal};
use super::runtime::{self, Runtime, RuntimeRecord};
use super::{ApplyError, ApplyOptions, Role, DEFAULT_REGISTRY_DOMAIN, DEFAULT_REGISTRY_PORT};

/// Where binaries from `bin/` and `cri/` go: the units of sealer's images
/// (`kubelet.service`, `containerd.service`) start them from there.
pub(crate) const BIN_DIR: &str = "/usr/bin";
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";
pub(crate) const REGISTRY_UNIT: &str = "seaport-registry.service";
/// Units the `runtime` step owns; `kube-binaries` leaves them alone.
const RUNTIME_UNITS: &[&str] = &["containerd.service", "docker.service", "cri-docker.service"];
/// Where a replaced rootfs waits while the registry still serves from it.
const PREVIOUS_ROOTFS: &str = "rootfs.previous";
const REGISTRY_BINARIES: &[&str] = &[
    "bin/registry",
    "bin/docker-registry",
    "cri/registry",
    "cri/docker-registry",
];

pub(crate) struct Context<'a> {
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
}

pub(crate) type StepResult = Result<String, String>;

pub(crate) fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl<'a> Context<'a> {
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
                .ok_or_else(|| {
                    ApplyError::Input("this host has no IPv4 address; give --host-ip".into())
                })?,
        };
        let master0_ip = match (&opts.master0_ip, &opts.join_data, opts.role) {
            (_, _, Role::Master0) => host_ip.clone(),
            (Some(ip), _, _) => ip.clone(),
            (None, Some(j), _) => j.master0_ip.clone(),
            (None, None, _) => unreachable!("checked by apply"),
        };
        let registry_ip = opts
            .registry_ip
            .clone()
            .unwrap_or_else(|| master0_ip.clone());
        let image_env = img.env();
        let mut env = super::env_map([image_env.as_slice(), &opts.env, &opts.host_env]);
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
            .map_err(|reason| {
                ApplyError::Input(format!(
                    "registry_domain and registry_port (from the image's ENV or the cluster env): {reason}"
                ))
            })?;
        let computed = [
            ("RegistryDomain", registry_domain.clone()),
            ("RegistryPort", registry_port.clone()),
            ("RegistryURL", format!("{registry_domain}:{registry_port}")),
            ("RegistryIP", registry_ip.clone()),
            ("registry_domain", registry_domain.clone()),
            ("registry_port", registry_port.clone()),
            ("HostIP", host_ip.clone()),
            ("Master0IP", master0_ip.clone()),
            ("ClusterName", opts.cluster.clone()),
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
        })
    }

    pub(crate) fn rootfs(&self) -> PathBuf {
        self.opts.rootfs()
    }

    /// A fingerprint of what a step depends on.
    pub(crate) fn fingerprint(&self, step: &str) -> String {
        let mut h = format!("{step}\n{}\n", self.img.digest);
        if step != "rootfs" {
            for (k, v) in &self.env {
                h.push_str(&format!("{k}={v}\n"));
            }
        }
        if step == "kubeadm" {
            h.push_str(&format!(
                "{:?}\n{:?}\n",
                self.opts.kubeadm_config, self.opts.join_data
            ));
        }
        seaport_shared::digest::Digest::of(h.as_bytes()).hex()[..16].to_string()
    }

    pub(crate) fn run_step(&mut self, step: &str, interrupted: bool, rerun: bool) -> StepResult {
        self.rerun = rerun;
        match step {
            "rootfs" => self.step_rootfs(),
            "render" => self.step_render(),
            "runtime" => self.step_runtime(),
            "registry" => self.step_registry(),
            "registry-access" => self.step_registry_access(),
            "kube-binaries" => self.step_kube_binaries(),
            "hook-init" => self.hook(step, "init.sh"),
            "hook-init-kube" => self.hook(step, "init-kube.sh"),
            "kubeadm" => self.step_kubeadm(interrupted),
            "launch" => self.step_launch(),
            other => Err(format!("unknown step {other}")),
        }
    }

    fn step_rootfs(&mut self) -> StepResult {
        let dir = self.opts.cluster_dir();
        // Leftovers of an unpack that was interrupted.
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(".rootfs.unpack-")
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let opts = UnpackOptions {
            preserve_ownership: false,
            refuse_devices: !self.opts.allow_devices,
            refuse_setuid: !self.opts.allow_setuid,
        };
        // While the registry serves from the old tree (its bind mount), that
        // tree is kept aside until the registry step mounts the new one.
        let serving = self.fx.is_mounted(&dir.join("registry"));
        let previous = dir.join(PREVIOUS_ROOTFS);
        let did = self
            .img
            .unpack_replacing(&self.rootfs(), &opts, serving.then_some(previous.as_path()))
            .map_err(e2s)?;
        Ok(if did {
            format!("{} layers unpacked", self.img.manifest.layers.len())
        } else {
            "already unpacked".into()
        })
    }

    fn step_render(&mut self) -> StepResult {
        let r = seaport_rootfs::render::render_rootfs(&self.rootfs(), &self.env).map_err(e2s)?;
        Ok(format!("{} files rendered", r.rendered.len()))
    }

    // ---- systemd -------------------------------------------------------

    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, String> {
        let spec = CommandSpec::new("systemctl", args, self.opts.timeouts.systemctl);
        self.fx.run(&spec).map_err(e2s)
    }

    pub(crate) fn systemctl_ok(&self, args: &[&str]) -> Result<(), String> {
        let out = self.systemctl(args)?;
        if out.success() {
            Ok(())
        } else {
            Err(format!(
                "systemctl {} exited with {:?}: {}",
                args.join(" "),
                out.code,
                out.last_lines(20)
            ))
        }
    }

    /// Enables (and with `start`, starts) a unit, journaling it first.
    pub(crate) fn enable_unit(&mut self, unit: &str, start: bool) -> Result<(), String> {
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
            self.journal
                .record(Change::UnitEnabled {
                    unit: unit.to_string(),
                    was_enabled,
                })
                .map_err(e2s)?;
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
    ) -> Result<bool, String> {
        self.files
            .install(&mut self.journal, abs, bytes, mode)
            .map_err(e2s)
    }

    fn wait_until(&self, what: &str, ok: impl FnMut() -> bool) -> Result<Duration, String> {
        wait_until(self.opts.timeouts.service, what, ok)
    }

    // ---- container runtime ---------------------------------------------

    fn step_runtime(&mut self) -> StepResult {
        let rootfs = self.rootfs();
        let bins = self.cri_binaries(&rootfs.join("cri"))?;
        let names: Vec<String> = bins.iter().map(|(n, _)| n.clone()).collect();
        let choice = runtime::choose(&self.env, &self.img.config.config.labels, &names)?;
        self.refuse_runtime_switch(&choice)?;
        let staging = self.opts.cluster_dir().join("cri");
        let mut installed = 0;
        for (name, path) in &bins {
            let within = if path.starts_with(&staging) {
                &staging
            } else {
                &rootfs
            };
            let bytes = read_inside(within, path)?.unwrap_or_default();
            if self.install_file(&format!("{BIN_DIR}/{name}"), &bytes, 0o755)? {
                installed += 1;
            }
        }
        // The registry's names go into /etc/hosts before the runtime starts:
        // Go daemons (containerd, dockerd) cache /etc/hosts for a few
        // seconds, so names added after their first lookup may stay unknown
        // to them for that long after the install ends.
        self.name_registry_hosts()?;
        match choice.runtime {
            Runtime::Containerd => self.start_containerd(installed, &choice),
            Runtime::Docker => self.start_docker(installed, &choice),
        }
    }

    /// A host whose install set up one runtime is not switched to the
    /// other in place: the first one's containers and data would be
    /// orphaned.
    fn refuse_runtime_switch(&self, choice: &runtime::Choice) -> Result<(), String> {
        let state = self.journal.state();
        let previous = state.runtime.as_ref().map(|r| r.runtime).or_else(|| {
            // Journals of agents that did not record the runtime: the unit.
            [Runtime::Containerd, Runtime::Docker]
                .into_iter()
                .find(|rt| {
                    state
                        .changes
                        .iter()
                        .any(|c| matches!(c, Change::UnitEnabled { unit, .. } if unit == rt.unit()))
                })
        });
        match previous {
            Some(p) if p != choice.runtime => Err(format!(
                "cluster {} runs {} on this host; this image gets {} ({}): reset the cluster first to change its container runtime",
                self.opts.cluster,
                p.name(),
                choice.runtime.name(),
                choice.reason
            )),
            _ => Ok(()),
        }
    }

    /// Records `abs` as a directory the install owns entirely, unless it
    /// exists already (then it is the host's, and kept).
    pub(crate) fn claim_tree(&mut self, abs: &str) -> Result<(), String> {
        if fs::symlink_metadata(self.files.host(abs)).is_ok() || self.journal.knows_path(abs) {
            return Ok(());
        }
        self.journal
            .record(Change::CreatedTree {
                path: abs.to_string(),
            })
            .map_err(e2s)
    }

    fn start_containerd(&mut self, installed: usize, choice: &runtime::Choice) -> StepResult {
        let rootfs = self.rootfs();
        let mut config = read_text_inside(&rootfs, "etc/containerd.toml")?
            .unwrap_or_else(|| DEFAULT_CONTAINERD_CONFIG.to_string());
        if !config.contains("config_path") {
            config.push_str(
                "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
            );
        }
        self.install_file("/etc/containerd/config.toml", config.as_bytes(), 0o644)?;
        let unit = read_inside(&rootfs, &rootfs.join("etc/containerd.service"))?
            .unwrap_or_else(|| DEFAULT_CONTAINERD_UNIT.as_bytes().to_vec());
        self.install_file(&format!("{UNIT_DIR}/containerd.service"), &unit, 0o644)?;
        self.systemctl_ok(&["daemon-reload"])?;
        // Its data and state directories, when containerd makes them now.
        for (key, default) in [
            ("root", runtime::CONTAINERD_ROOT),
            ("state", "/run/containerd"),
        ] {
            let dir = runtime::containerd_dir(&config, key, default)?;
            self.claim_tree(&dir)?;
        }
        // containerd creates directories of its own in /etc when it starts
        // (the CNI config directory): tracked, so reset removes them.
        self.enable_unit("containerd.service", false)?;
        let fx = self.fx;
        let t = self.opts.timeouts.systemctl;
        let limit = self.opts.timeouts.service;
        // Run again (an upgrade), containerd restarts onto its new binary
        // and configuration; running containers keep running (their shims).
        let verb = if self.rerun { "restart" } else { "start" };
        let started = self.files.tracked(&mut self.journal, "runtime-start", || {
            start_and_wait(
                fx,
                t,
                limit,
                verb,
                &["containerd.service"],
                "containerd",
                "ctr",
            )
        });
        let waited = started.map_err(e2s)??;
        self.journal
            .update(|s| {
                s.runtime = Some(RuntimeRecord {
                    runtime: Runtime::Containerd,
                    cri_socket: runtime::CONTAINERD_SOCKET.into(),
                    cgroup_driver: None,
                })
            })
            .map_err(e2s)?;
        Ok(format!(
            "containerd answering after {:.1} s ({} binaries installed; {})",
            waited.as_secs_f64(),
            installed,
            choice.reason
        ))
    }

    /// The runtime's binaries: archives in `cri/` are unpacked (safely) into
    /// `<cluster>/cri`; executables in their `bin/`, `usr/bin/`, `usr/local/bin/`,
    /// `docker/` or top level, and plain executables in `cri/` itself, are
    /// installed.
    fn cri_binaries(&self, cri: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
        let Ok(rd) = fs::read_dir(cri) else {
            return Ok(Vec::new());
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        let staging = self.opts.cluster_dir().join("cri");
        for p in entries {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let is_archive = [".tar.gz", ".tgz", ".tar", ".tar.zst"]
                .iter()
                .any(|s| name.ends_with(s));
            if is_archive {
                let dest = staging.join(&name);
                let _ = fs::remove_dir_all(&dest);
                fs::create_dir_all(&dest)
                    .map_err(|e| format!("creating {}: {e}", dest.display()))?;
                unpack_archive(&p, &dest)?;
                // docker's own static tarballs hold docker/dockerd ...
                for sub in ["", "bin", "usr/bin", "usr/local/bin", "docker"] {
                    let d = dest.join(sub);
                    for f in fs::read_dir(&d).into_iter().flatten().flatten() {
                        if is_executable(&f.path()) {
                            out.insert(f.file_name().to_string_lossy().into_owned(), f.path());
                        }
                    }
                }
            } else if is_executable(&p) && !REGISTRY_BINARIES.iter().any(|r| p.ends_with(r)) {
                out.insert(name, p);
            }
        }
        Ok(out.into_iter().collect())
    }

    // ---- local registry ------------------------------------------------

    fn step_registry(&mut self) -> StepResult {
        let rootfs = self.rootfs();
        let storage = rootfs.join("registry");
        // Bind-mounted and served: a real directory of the rootfs, never a
        // symlink the image planted.
        seaport_shared::confined::Dir::open(&rootfs)
            .and_then(|r| r.create_dirs(Path::new("registry")))
            .map_err(e2s)?;
        let mount = self.opts.cluster_dir().join("registry");
        fs::create_dir_all(&mount).map_err(|e| format!("creating {}: {e}", mount.display()))?;
        // Mounted from a replaced rootfs (an upgrade): mount the new one.
        if self.fx.is_mounted(&mount) && !same_dir(&mount, &storage) {
            self.fx.unmount(&mount).map_err(e2s)?;
        }
        if !self.fx.is_mounted(&mount) {
            let target = mount.to_string_lossy().into_owned();
            let known = self
                .journal
                .state()
                .changes
                .iter()
                .any(|c| matches!(c, Change::Mounted { target: t } if *t == target));
            if !known {
                self.journal
                    .record(Change::Mounted { target })
                    .map_err(e2s)?;
            }
            self.fx.bind_mount(&storage, &mount).map_err(e2s)?;
        }
        let bin = REGISTRY_BINARIES
            .iter()
            .map(|r| rootfs.join(r))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                format!(
                    "the image ships no registry binary (looked for {})",
                    REGISTRY_BINARIES.join(", ")
                )
            })?;
        let base = read_text_inside(&rootfs, "etc/registry_config.yml")?
            .unwrap_or_else(|| DEFAULT_REGISTRY_CONFIG.to_string());
        let config = registry_config(&base, &mount, &self.registry_port);
        let config_path = self.opts.cluster_dir().join("registry.yml");
        super::files::write_atomic(&config_path, config.as_bytes(), 0o644).map_err(e2s)?;
        let unit = format!(
            "[Unit]\nDescription=Local registry of cluster {cluster}\nAfter=network.target\n\n[Service]\nExecStart={bin} serve {config}\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
            cluster = self.opts.cluster,
            bin = bin.display(),
            config = config_path.display(),
        );
        self.install_file(
            &format!("{UNIT_DIR}/{REGISTRY_UNIT}"),
            unit.as_bytes(),
            0o644,
        )?;
        self.systemctl_ok(&["daemon-reload"])?;
        self.enable_unit(REGISTRY_UNIT, true)?;
        if self.rerun {
            self.systemctl_ok(&["restart", REGISTRY_UNIT])?;
        }
        let previous = self.opts.cluster_dir().join(PREVIOUS_ROOTFS);
        if previous.exists() {
            fs::remove_dir_all(&previous)
                .map_err(|e| format!("removing {}: {e}", previous.display()))?;
        }
        let port = self.registry_port.clone();
        let waited =
            self.wait_until("the local registry (GET /v2/)", || registry_answers(&port))?;
        let scratch = self.opts.cluster_dir().join("tmp/images");
        let loaded = super::images_load::load_images(
            &rootfs.join("images"),
            &format!("127.0.0.1:{}", self.registry_port),
            &scratch,
        )
        .map_err(e2s)?;
        let _ = fs::remove_dir_all(self.opts.cluster_dir().join("tmp"));
        Ok(format!(
            "registry answering after {:.1} s; loaded {}",
            waited.as_secs_f64(),
            if loaded.is_empty() {
                "no images".to_string()
            } else {
                loaded.join(", ")
            }
        ))
    }

    /// The local registry's and the API server's names in `/etc/hosts`
    /// (each line once).
    fn name_registry_hosts(&mut self) -> Result<(), String> {
        let hosts_line = format!("{} {}", self.registry_ip, self.registry_domain);
        let api_line = format!("{} {APISERVER_DOMAIN}", self.master0_ip);
        for line in [hosts_line, api_line] {
            self.files
                .append_line(&mut self.journal, "/etc/hosts", &line)
                .map_err(e2s)?;
        }
        Ok(())
    }

    fn step_registry_access(&mut self) -> StepResult {
        // Written by the runtime step already; again here for journals of
        // installs whose runtime step ran before it did.
        self.name_registry_hosts()?;
        let local = format!("{}:{}", self.registry_domain, self.registry_port);
        let mirror = format!("http://{local}");
        let rt = self
            .journal
            .state()
            .runtime
            .as_ref()
            .map_or(Runtime::Containerd, |r| r.runtime);
        if rt == Runtime::Docker {
            // docker's mirrors are in its daemon.json, written before it
            // started (the runtime step).
            return Ok(format!(
                "{} reachable as {local}; docker's mirrors are in /etc/docker/daemon.json",
                self.registry_ip
            ));
        }
        let domains = runtime::mirrored_domains(&local, &self.rootfs().join("registry"))?;
        for d in &domains {
            let text = if *d == local {
                format!(
                    "server = \"{mirror}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n"
                )
            } else {
                let server = if d == "docker.io" {
                    "https://registry-1.docker.io".to_string()
                } else {
                    format!("https://{d}")
                };
                format!(
                    "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
                )
            };
            self.install_file(
                &format!("/etc/containerd/certs.d/{d}/hosts.toml"),
                text.as_bytes(),
                0o644,
            )?;
        }
        Ok(format!(
            "{} reachable as {local}; mirrors for {}",
            self.registry_ip,
            domains.join(", ")
        ))
    }

    // ---- Kubernetes binaries and units -----------------------------------

    fn step_kube_binaries(&mut self) -> StepResult {
        let rootfs = self.rootfs();
        let mut names = Vec::new();
        let mut bins: Vec<PathBuf> = fs::read_dir(rootfs.join("bin"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        bins.sort();
        for p in bins {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = read_inside(&rootfs, &p)?.unwrap_or_default();
            self.install_file(&format!("{BIN_DIR}/{name}"), &bytes, 0o755)?;
            names.push(name);
        }
        let pre = rootfs.join("scripts/kubelet-pre-start.sh");
        if let Some(bytes) = read_inside(&rootfs, &pre)? {
            self.install_file(&format!("{BIN_DIR}/kubelet-pre-start.sh"), &bytes, 0o755)?;
        }
        let mut units = Vec::new();
        let mut services: Vec<PathBuf> = fs::read_dir(rootfs.join("etc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "service"))
            .collect();
        services.sort();
        for p in services {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // The runtime step owns the container runtime's units.
            if RUNTIME_UNITS.contains(&name.as_str()) {
                continue;
            }
            let bytes = read_inside(&rootfs, &p)?.unwrap_or_default();
            self.install_file(&format!("{UNIT_DIR}/{name}"), &bytes, 0o644)?;
            units.push(name);
        }
        if let Some(bytes) = read_inside(&rootfs, &rootfs.join("etc/10-kubeadm.conf"))? {
            self.install_file(
                &format!("{UNIT_DIR}/kubelet.service.d/10-kubeadm.conf"),
                &bytes,
                0o644,
            )?;
        }
        if let Some(bytes) = read_inside(&rootfs, &rootfs.join("statics/audit-policy.yml"))? {
            self.install_file("/etc/kubernetes/audit-policy.yml", &bytes, 0o644)?;
        }
        self.systemctl_ok(&["daemon-reload"])?;
        for u in &units {
            // kubeadm starts the kubelet; other units start now.
            self.enable_unit(u, u != "kubelet.service")?;
            if self.rerun {
                // New binaries and units: restart what runs (kubelet once
                // kubeadm has started it), start nothing new.
                self.systemctl_ok(&["try-restart", u])?;
            }
        }
        Ok(format!(
            "binaries {}; units {}",
            names.join(" "),
            units.join(" ")
        ))
    }

    // ---- hooks -----------------------------------------------------------

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
        env.insert("SEAPORT_CLUSTER".into(), self.opts.cluster.clone());
        env.insert("SEAPORT_ROLE".into(), self.opts.role.to_string());
        env.insert(
            "SEAPORT_ROOTFS".into(),
            self.rootfs().to_string_lossy().into_owned(),
        );
        env
    }

    fn hook(&mut self, step: &str, script: &str) -> StepResult {
        let dir = self.rootfs().join("scripts");
        if !dir.join(script).is_file() {
            return Ok(format!("no scripts/{script} in the image"));
        }
        let mut spec = CommandSpec::new("bash", &[script], self.opts.timeouts.hook);
        spec.cwd = Some(dir);
        spec.env = self.hook_env();
        let fx = self.fx;
        let out = self
            .files
            .tracked(&mut self.journal, step, || fx.run(&spec))
            .map_err(e2s)?
            .map_err(e2s)?;
        check(&format!("scripts/{script}"), &out, self.opts.timeouts.hook)?;
        Ok(format!("scripts/{script} exited with 0"))
    }

    // ---- launch ------------------------------------------------------------

    /// The image's CMDS, or the applications LAUNCH names, on the first
    /// master once the cluster is up, as sealer 0.9+ launches them. Every
    /// command runs in the rootfs, except an application's APPCMDS: its
    /// words are one command run in the application's directory. Without
    /// APPCMDS an application runs by type: `kubectl apply -f` of each
    /// launch file for `kube`, `helm install NAME DIR` for `helm`, `bash` of
    /// each launch file for `shell` (paths relative to the rootfs).
    fn step_launch(&mut self) -> StepResult {
        let Some(ext) = self.img.extension() else {
            return Ok("nothing to launch".into());
        };
        let rootfs = self.rootfs();
        let mut commands: Vec<(String, PathBuf, BTreeMap<String, String>)> = Vec::new();
        let env = self.hook_env();
        for cmd in &ext.launch.cmds {
            commands.push((cmd.clone(), rootfs.clone(), env.clone()));
        }
        for name in &ext.launch.app_names {
            let app = ext
                .applications
                .iter()
                .find(|a| &a.name == name)
                .ok_or_else(|| {
                    format!("LAUNCH names application {name:?}, which the image does not declare")
                })?;
            let dir = if app.path.is_empty() {
                format!("application/apps/{}", app.name)
            } else {
                app.path.trim_matches('/').to_string()
            };
            let mut app_env = env.clone();
            app_env.extend(app.env.clone());
            if !app.launch_cmds.is_empty() {
                commands.push((app.launch_cmds.join(" "), rootfs.join(&dir), app_env));
                continue;
            }
            let in_app =
                |file: &str| shell_quote(&format!("{dir}/{}", file.trim_start_matches('/')));
            match app.kind.as_str() {
                "kube" => {
                    for file in &app.launch_files {
                        let cmd = format!("kubectl apply -f {}", in_app(file));
                        commands.push((cmd, rootfs.clone(), app_env.clone()));
                    }
                }
                "helm" => {
                    let cmd = format!(
                        "helm install {} {}",
                        shell_quote(&app.name),
                        shell_quote(&dir)
                    );
                    commands.push((cmd, rootfs.clone(), app_env.clone()));
                }
                "shell" => {
                    for file in &app.launch_files {
                        let cmd = format!("bash {}", in_app(file));
                        commands.push((cmd, rootfs.clone(), app_env.clone()));
                    }
                }
                other => {
                    return Err(format!(
                    "application {}: type {other:?} and no APPCMDS: nothing says how to launch it",
                    app.name
                ))
                }
            }
        }
        if commands.is_empty() {
            return Ok("nothing to launch".into());
        }
        let n = commands.len();
        for (cmd, cwd, env) in commands {
            let mut spec = CommandSpec::new("bash", &["-c", cmd.as_str()], self.opts.timeouts.hook);
            spec.cwd = Some(cwd);
            spec.env = env;
            let fx = self.fx;
            let out = self
                .files
                .tracked(&mut self.journal, "launch", || fx.run(&spec))
                .map_err(e2s)?
                .map_err(e2s)?;
            check(&format!("launch: {cmd}"), &out, self.opts.timeouts.hook)?;
        }
        Ok(format!("{n} launch command(s) exited with 0"))
    }

    // ---- kubeadm -----------------------------------------------------------

    fn kubeadm_bin(&self) -> String {
        let installed = self.files.host(&format!("{BIN_DIR}/kubeadm"));
        if installed.is_file() {
            format!("{BIN_DIR}/kubeadm")
        } else {
            self.rootfs()
                .join("bin/kubeadm")
                .to_string_lossy()
                .into_owned()
        }
    }

    /// Seaport's defaults, the image's `etc/kubeadm.yml`, the Clusterfile's
    /// kubeadm documents, merged.
    pub(crate) fn kubeadm_config(&self) -> Result<KubeadmConfig, String> {
        let mut cfg = KubeadmConfig::defaults();
        if let Some(text) = read_text_inside(&self.rootfs(), "etc/kubeadm.yml")? {
            cfg.merge(&KubeadmConfig::parse(&text, "etc/kubeadm.yml").map_err(e2s)?);
        }
        if let Some(text) = &self.opts.kubeadm_config {
            cfg.merge(
                &KubeadmConfig::parse(text, "the Clusterfile's kubeadm documents").map_err(e2s)?,
            );
        }
        Ok(cfg)
    }

    /// The Kubernetes version installed: kubeadm's `kubernetesVersion`,
    /// else the image's KUBEVERSION or sealer version label, else its
    /// `Metadata`.
    pub(crate) fn kube_version(&self) -> Result<Option<String>, String> {
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

    /// The CRI socket kubeadm is given: what an image's CRI script wrote
    /// into `/etc/sealerio/cri/socket-path` (sealer 0.9+'s contract), else
    /// the socket of the runtime the `runtime` step set up.
    fn cri_socket(&self) -> Option<String> {
        let written = fs::read_to_string(self.files.host(runtime::SOCKET_PATH_FILE))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        written.or_else(|| {
            self.journal
                .state()
                .runtime
                .as_ref()
                .map(|r| r.cri_socket.clone())
        })
    }

    fn step_kubeadm(&mut self, interrupted: bool) -> StepResult {
        let kubeadm = self.kubeadm_bin();
        if interrupted {
            // An interrupted init/join leaves partial state kubeadm's
            // preflight refuses: start clean.
            let spec = CommandSpec::new(&kubeadm, &["reset", "-f"], self.opts.timeouts.kubeadm);
            let fx = self.fx;
            let _ = self
                .files
                .tracked(&mut self.journal, "kubeadm-reset", || fx.run(&spec));
        }
        let cfg = self.kubeadm_config()?;
        let mut masters = self.opts.master_ips.clone();
        for ip in [&self.master0_ip, &self.host_ip] {
            if self.opts.role != Role::Node && !masters.contains(ip) {
                masters.push(ip.clone());
            }
        }
        let computed = Computed {
            host_ip: self.host_ip.clone(),
            master_ips: masters,
            image_repository: format!("{}:{}", self.registry_domain, self.registry_port),
            env: self.env.clone(),
            cri_socket: self.cri_socket(),
            cgroup_driver: self
                .journal
                .state()
                .runtime
                .as_ref()
                .and_then(|r| r.cgroup_driver.clone()),
        };
        let config_path = self.opts.cluster_dir().join("kubeadm.yaml");
        let (args, token, key, text) = match (&self.opts.join_data, self.opts.role) {
            (_, Role::Master0) => {
                let token = bootstrap_token();
                let key = hex_key();
                let text = cfg.for_init(&computed, &token, &key);
                let args = vec![
                    "init".to_string(),
                    "--config".into(),
                    config_path.to_string_lossy().into_owned(),
                    "--upload-certs".into(),
                ];
                (args, token, key, text)
            }
            (Some(join), role) => {
                let text = cfg.for_join(&computed, join, role == Role::Master);
                let args = vec![
                    "join".to_string(),
                    "--config".into(),
                    config_path.to_string_lossy().into_owned(),
                ];
                (args, join.token.clone(), join.certificate_key.clone(), text)
            }
            (None, _) => return Err("no join data".into()),
        };
        super::files::write_atomic(&config_path, text.as_bytes(), 0o600).map_err(e2s)?;
        let mut spec = CommandSpec::new(&kubeadm, &args, self.opts.timeouts.kubeadm);
        spec.env = self.hook_env();
        let fx = self.fx;
        let out = self
            .files
            .tracked(&mut self.journal, "kubeadm", || fx.run(&spec))
            .map_err(e2s)?
            .map_err(e2s)?;
        check(
            &format!("kubeadm {}", args[0]),
            &out,
            self.opts.timeouts.kubeadm,
        )?;
        if self.opts.role != Role::Master0 {
            return Ok(format!("kubeadm join against {}", self.master0_ip));
        }
        let ca = self.files.host("/etc/kubernetes/pki/ca.crt");
        let pem = fs::read(&ca).map_err(|e| {
            format!(
                "kubeadm init left no CA certificate at {}: {e}",
                ca.display()
            )
        })?;
        let hash = super::ca_cert_hash(&pem)?;
        let join = JoinData {
            api_server_endpoint: format!("{}:{APISERVER_PORT}", self.host_ip),
            master0_ip: self.host_ip.clone(),
            token,
            ca_cert_hashes: vec![hash],
            certificate_key: key,
        };
        let bytes = serde_json::to_vec_pretty(&join).expect("serializes");
        super::files::write_atomic(&self.opts.cluster_dir().join("join.json"), &bytes, 0o600)
            .map_err(e2s)?;
        if let Some(out) = &self.opts.join_data_out {
            super::files::write_atomic(out, &bytes, 0o600).map_err(e2s)?;
        }
        Ok(format!(
            "kubeadm init; join data in {}",
            self.opts.cluster_dir().join("join.json").display()
        ))
    }

    pub(crate) fn read_join_data(&self) -> Option<JoinData> {
        if self.opts.role != Role::Master0 {
            return None;
        }
        super::read_join_data(&self.opts.cluster_dir().join("join.json")).ok()
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
) -> Result<Duration, String> {
    let mut args = vec![verb];
    args.extend_from_slice(units);
    let out = fx
        .run(&CommandSpec::new("systemctl", &args, systemctl_timeout))
        .map_err(e2s)?;
    if !out.success() {
        return Err(format!(
            "systemctl {} exited with {:?}: {}",
            args.join(" "),
            out.code,
            out.last_lines(20)
        ));
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
) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{what} did not answer within {} s",
        limit.as_secs()
    ))
}

pub(crate) fn check(what: &str, out: &CommandOutput, timeout: Duration) -> Result<(), String> {
    if out.success() {
        return Ok(());
    }
    let why = if out.timed_out {
        format!("{what} timed out after {} s", timeout.as_secs())
    } else {
        format!(
            "{what} exited with {}",
            out.code.map_or("a signal".to_string(), |c| c.to_string())
        )
    };
    Err(format!("{why}; last output:\n{}", out.last_lines(20)))
}

/// Whether two paths are the same directory (a bind mount and its source).
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The bytes of `path`, a file the image shipped under `root`: a symlink is
/// followed only while it resolves inside `root` (an image's link to a host
/// file, `bin/x -> /etc/shadow`, is refused rather than copied onto the
/// host); `None` when it does not exist.
pub(crate) fn read_inside(root: &Path, path: &Path) -> Result<Option<Vec<u8>>, String> {
    let canon_root =
        fs::canonicalize(root).map_err(|e| format!("resolving {}: {e}", root.display()))?;
    match fs::canonicalize(path) {
        Ok(c) if c.starts_with(&canon_root) => fs::read(&c)
            .map(Some)
            .map_err(|e| format!("reading {}: {e}", path.display())),
        Ok(c) => Err(format!(
            "{} resolves to {}, outside {} (through a symlink); refusing to read it",
            path.display(),
            c.display(),
            root.display()
        )),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// [`read_inside`] of `rel` in the rootfs, as text.
pub(crate) fn read_text_inside(rootfs: &Path, rel: &str) -> Result<Option<String>, String> {
    Ok(read_inside(rootfs, &rootfs.join(rel))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn unpack_archive(archive: &Path, dest: &Path) -> Result<(), String> {
    let name = archive.to_string_lossy();
    let f = fs::File::open(archive).map_err(|e| format!("opening {name}: {e}"))?;
    let opts = UnpackOptions {
        refuse_devices: true,
        refuse_setuid: true,
        ..UnpackOptions::default()
    };
    use seaport_rootfs::media::{decompress, Compression};
    let compression = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Compression::Gzip
    } else if name.ends_with(".zst") {
        Compression::Zstd
    } else {
        Compression::None
    };
    let reader = decompress(compression, f).map_err(|e| format!("{name}: {e}"))?;
    let r = seaport_shared::safetar::unpack(reader, dest, &opts);
    r.map(|_| ()).map_err(|e| format!("{name}: {e}"))
}

/// The image's registry config with the storage and port of this install.
fn registry_config(base: &str, storage: &Path, port: &str) -> String {
    base.lines()
        .map(|l| {
            let indent = &l[..l.len() - l.trim_start().len()];
            let t = l.trim_start();
            if t.starts_with("rootdirectory:") {
                format!("{indent}rootdirectory: {}", storage.display())
            } else if t.starts_with("addr:") {
                format!("{indent}addr: :{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn registry_answers(port: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}")
            .parse()
            .expect("a socket address"),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && (head.contains(" 200") || head.contains(" 401"))
}

fn bootstrap_token() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    format!("{}.{}", pick(6), pick(16))
}

fn hex_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex_encode(&bytes)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const DEFAULT_CONTAINERD_CONFIG: &str = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

const DEFAULT_CONTAINERD_UNIT: &str = "[Unit]\nDescription=containerd container runtime\nAfter=network.target local-fs.target\n\n[Service]\nExecStart=/usr/bin/containerd\nType=notify\nDelegate=yes\nKillMode=process\nRestart=always\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n";

const DEFAULT_REGISTRY_CONFIG: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n";

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_config_points_at_the_mount_and_port() {
        let base =
            "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n";
        let out = registry_config(base, Path::new("/data/c/registry"), "5001");
        assert!(
            out.contains("    rootdirectory: /data/c/registry\n"),
            "{out}"
        );
        assert!(out.contains("  addr: :5001\n"), "{out}");
    }

    #[test]
    fn tokens_have_kubeadm_shape() {
        let t = bootstrap_token();
        let (a, b) = t.split_once('.').unwrap();
        assert_eq!((a.len(), b.len()), (6, 16));
        assert!(t
            .chars()
            .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(hex_key().len(), 64);
    }
}
