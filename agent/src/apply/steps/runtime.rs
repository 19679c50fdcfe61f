//! `runtime`: the container runtime from `cri/` (containerd, or docker
//! when [`crate::apply::runtime::choose`] says so), its configuration and
//! unit, started and answering.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use seaport_shared::cluster::Step;
use seaport_shared::safetar::UnpackOptions;

use super::super::journal::Change;
use super::super::runtime::{
    self as rt, Choice, DockerCri, Runtime, RuntimeRecord, CONTAINERD_ROOT, CONTAINERD_SOCKET,
    DOCKER_BRIDGE,
};
use super::context::{is_executable, read_inside, read_text_inside, start_and_wait};
use super::context::{HostStep, StepContext};
use super::error::StepError;
use super::paths::{BIN_DIR, REGISTRY_BINARIES, UNIT_DIR};

pub(super) struct RuntimeStep;

const DEFAULT_CONTAINERD_CONFIG: &str = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

const DEFAULT_CONTAINERD_UNIT: &str = "[Unit]\nDescription=containerd container runtime\nAfter=network.target local-fs.target\n\n[Service]\nExecStart=/usr/bin/containerd\nType=notify\nDelegate=yes\nKillMode=process\nRestart=always\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n";

impl HostStep for RuntimeStep {
    fn step(&self) -> Step {
        Step::Runtime
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let rootfs = cx.rootfs();
        let bins = cri_binaries(cx, &rootfs.join("cri"))?;
        let names: Vec<String> = bins.iter().map(|(n, _)| n.clone()).collect();
        let choice = rt::choose(&cx.env, &cx.img.config.config.labels, &names)?;
        refuse_runtime_switch(cx, &choice)?;
        let staging = cx.opts.cluster_dir().join("cri");
        let mut installed = 0;
        for (name, path) in &bins {
            let within = if path.starts_with(&staging) {
                &staging
            } else {
                &rootfs
            };
            let bytes = read_inside(within, path)?.unwrap_or_default();
            if cx.install_file(&format!("{BIN_DIR}/{name}"), &bytes, 0o755)? {
                installed += 1;
            }
        }
        // The registry's names go into /etc/hosts before the runtime starts:
        // Go daemons (containerd, dockerd) cache /etc/hosts for a few
        // seconds, so names added after their first lookup may stay unknown
        // to them for that long after the install ends.
        cx.name_registry_hosts()?;
        match choice.runtime {
            Runtime::Containerd => start_containerd(cx, installed, &choice),
            Runtime::Docker => start_docker(cx, installed, &choice),
        }
    }
}

/// A host whose install set up one runtime is not switched to the other in
/// place: the first one's containers and data would be orphaned.
fn refuse_runtime_switch(cx: &StepContext<'_>, choice: &Choice) -> Result<(), StepError> {
    let state = cx.journal.state();
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
        Some(p) if p != choice.runtime => Err(StepError::RuntimeSwitch {
            cluster: cx.opts.cluster.to_string(),
            current: p.name(),
            wanted: choice.runtime.name(),
            reason: choice.reason.clone(),
        }),
        _ => Ok(()),
    }
}

/// The runtime's binaries: archives in `cri/` are unpacked (safely) into
/// `<cluster>/cri`; executables in their `bin/`, `usr/bin/`, `usr/local/bin/`,
/// `docker/` or top level, and plain executables in `cri/` itself, are
/// installed.
fn cri_binaries(cx: &StepContext<'_>, cri: &Path) -> Result<Vec<(String, PathBuf)>, StepError> {
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    let Ok(rd) = fs::read_dir(cri) else {
        return Ok(Vec::new());
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    let staging = cx.opts.cluster_dir().join("cri");
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
            fs::create_dir_all(&dest).map_err(|source| StepError::Io {
                action: "creating",
                path: dest.clone(),
                source,
            })?;
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

fn unpack_archive(archive: &Path, dest: &Path) -> Result<(), StepError> {
    let name = archive.to_string_lossy();
    let f = fs::File::open(archive).map_err(|source| StepError::Io {
        action: "opening",
        path: archive.to_path_buf(),
        source,
    })?;
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
    let reader = decompress(compression, f).map_err(|source| StepError::Archive {
        archive: name.to_string(),
        source,
    })?;
    seaport_shared::safetar::unpack(reader, dest, &opts)
        .map(|_| ())
        .map_err(|source| StepError::ArchiveEntry {
            archive: name.to_string(),
            source,
        })
}

fn start_containerd(
    cx: &mut StepContext<'_>,
    installed: usize,
    choice: &Choice,
) -> Result<String, StepError> {
    let rootfs = cx.rootfs();
    let mut config = read_text_inside(&rootfs, "etc/containerd.toml")?
        .unwrap_or_else(|| DEFAULT_CONTAINERD_CONFIG.to_string());
    if !config.contains("config_path") {
        config.push_str(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        );
    }
    // The local registry's credentials, for pulls through the CRI (kubelet
    // also hands them over from its config.json); the file is then 0600.
    let mode = match &cx.opts.registry_auth {
        Some(auth) => {
            config.push_str(&rt::containerd_registry_auth(&cx.local_registry(), auth));
            0o600
        }
        None => 0o644,
    };
    cx.install_file("/etc/containerd/config.toml", config.as_bytes(), mode)?;
    let unit = read_inside(&rootfs, &rootfs.join("etc/containerd.service"))?
        .unwrap_or_else(|| DEFAULT_CONTAINERD_UNIT.as_bytes().to_vec());
    cx.install_file(&format!("{UNIT_DIR}/containerd.service"), &unit, 0o644)?;
    cx.systemctl_ok(&["daemon-reload"])?;
    // Its data and state directories, when containerd makes them now.
    for (key, default) in [("root", CONTAINERD_ROOT), ("state", "/run/containerd")] {
        let dir = rt::containerd_dir(&config, key, default)?;
        cx.claim_tree(&dir)?;
    }
    // containerd creates directories of its own in /etc when it starts
    // (the CNI config directory): tracked, so reset removes them.
    cx.enable_unit("containerd.service", false)?;
    let fx = cx.fx;
    let t = cx.opts.timeouts.systemctl;
    let limit = cx.opts.timeouts.service;
    // Run again (an upgrade), containerd restarts onto its new binary and
    // configuration; running containers keep running (their shims).
    let verb = if cx.rerun { "restart" } else { "start" };
    let started = cx.files.tracked(&mut cx.journal, "runtime-start", || {
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
    let waited = started??;
    cx.journal.update(|s| {
        s.runtime = Some(RuntimeRecord {
            runtime: Runtime::Containerd,
            cri_socket: CONTAINERD_SOCKET.into(),
            cgroup_driver: None,
        })
    })?;
    Ok(format!(
        "containerd answering after {:.1} s ({} binaries installed; {})",
        waited.as_secs_f64(),
        installed,
        choice.reason
    ))
}

/// Installs docker: its `daemon.json` with the registry mirrors, its unit
/// (and cri-dockerd's where kubelet needs it), then starts it and waits
/// until `docker version` answers. The binaries are installed.
fn start_docker(
    cx: &mut StepContext<'_>,
    installed: usize,
    choice: &Choice,
) -> Result<String, StepError> {
    let rootfs = cx.rootfs();
    let dockerd = cx.files.host(&format!("{BIN_DIR}/dockerd"));
    if !is_executable(&dockerd) {
        return Err(StepError::NoDockerd {
            reason: choice.reason.clone(),
        });
    }
    // cri-dockerd: in cri/ (installed with the runtime) or in bin/.
    let shipped_cri_dockerd = rootfs.join("bin/cri-dockerd");
    let mut changed = installed > 0;
    if is_executable(&shipped_cri_dockerd) {
        let bytes = read_inside(&rootfs, &shipped_cri_dockerd)?.unwrap_or_default();
        changed |= cx.install_file(&format!("{BIN_DIR}/cri-dockerd"), &bytes, 0o755)?;
    }
    let has_cri_dockerd = is_executable(&cx.files.host(&format!("{BIN_DIR}/cri-dockerd")));
    let version = cx.kube_version()?;
    let cri = rt::docker_cri(version.as_deref(), has_cri_dockerd)?;

    let local = cx.local_registry();
    let domains = rt::mirrored_domains(&local, &rootfs.join("registry"))?;
    let image_json = read_text_inside(&rootfs, "etc/daemon.json")?;
    let daemon = rt::docker_daemon_json(
        image_json.as_deref(),
        &local,
        &domains,
        rt::dockerd_knows_mirror_registries(&dockerd),
        cx.opts.registry_tls.is_some(),
    )?;
    changed |= cx.install_file("/etc/docker/daemon.json", daemon.text.as_bytes(), 0o644)?;
    let unit = read_inside(&rootfs, &rootfs.join("etc/docker.service"))?
        .unwrap_or_else(|| rt::DEFAULT_DOCKER_UNIT.as_bytes().to_vec());
    changed |= cx.install_file(&format!("{UNIT_DIR}/docker.service"), &unit, 0o644)?;
    let mut units = vec!["docker.service"];
    if cri == DockerCri::CriDockerd {
        let socket = read_inside(&rootfs, &rootfs.join("etc/cri-docker.socket"))?
            .unwrap_or_else(|| rt::DEFAULT_CRI_DOCKER_SOCKET.as_bytes().to_vec());
        let service =
            read_inside(&rootfs, &rootfs.join("etc/cri-docker.service"))?.unwrap_or_else(|| {
                rt::default_cri_docker_service(
                    rt::cached_pause_image(&rootfs.join("registry"), &local).as_deref(),
                )
                .into_bytes()
            });
        changed |= cx.install_file(&format!("{UNIT_DIR}/cri-docker.socket"), &socket, 0o644)?;
        changed |= cx.install_file(&format!("{UNIT_DIR}/cri-docker.service"), &service, 0o644)?;
        units.extend(["cri-docker.socket", "cri-docker.service"]);
    }
    cx.systemctl_ok(&["daemon-reload"])?;
    // What dockerd makes when it starts, journaled first: its data and
    // exec roots and its bridge, when they are not there yet.
    cx.claim_tree(&daemon.data_root)?;
    cx.claim_tree(&daemon.exec_root)?;
    let bridge = format!("/sys/class/net/{DOCKER_BRIDGE}");
    let known = cx
        .journal
        .state()
        .changes
        .iter()
        .any(|c| matches!(c, Change::CreatedLink { name } if name == DOCKER_BRIDGE));
    if !known && !cx.files.host(&bridge).exists() {
        cx.journal.record(Change::CreatedLink {
            name: DOCKER_BRIDGE.into(),
        })?;
    }
    for u in &units {
        cx.enable_unit(u, false)?;
    }
    let fx = cx.fx;
    let t = cx.opts.timeouts.systemctl;
    let limit = cx.opts.timeouts.service;
    // Restarting docker stops its containers (unless live-restore): a rerun
    // restarts it only when its binaries or configuration changed.
    let verb = if cx.rerun && changed {
        "restart"
    } else {
        "start"
    };
    // dockerd writes its key into /etc/docker when it starts: tracked.
    let started = cx.files.tracked(&mut cx.journal, "runtime-start", || {
        start_and_wait(fx, t, limit, verb, &units, "docker", "docker")
    });
    let waited = started??;
    let record = RuntimeRecord {
        runtime: Runtime::Docker,
        cri_socket: cri.socket().to_string(),
        cgroup_driver: Some(daemon.cgroup_driver.clone()),
    };
    cx.journal.update(|s| s.runtime = Some(record))?;
    let mut summary = format!(
        "docker answering after {:.1} s ({installed} binaries installed; {}); kubeadm gets {} ({}), cgroup driver {}",
        waited.as_secs_f64(),
        choice.reason,
        cri.socket(),
        match cri {
            DockerCri::Dockershim => "the kubelet's docker shim".to_string(),
            DockerCri::CriDockerd => "cri-dockerd".to_string(),
        },
        daemon.cgroup_driver
    );
    for n in &daemon.notes {
        summary.push_str("; ");
        summary.push_str(n);
    }
    Ok(summary)
}
