//! Undoing an install on this host, from its journal: `kubeadm reset -f`
//! where kubeadm was run, the image's `scripts/clean.sh`, the units the
//! agent enabled stopped and disabled, links a runtime created (docker's
//! bridge) deleted, its mounts unmounted, every journaled file removed or
//! restored (a runtime's data root with its contents), and with `prune` the
//! cluster's data directory removed. What cannot be put back is reported,
//! never silently ignored.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::effects::{CommandSpec, Effects};
use super::files::HostFiles;
use super::journal::{Change, Journal, JournalError};
use super::steps::{BIN_DIR, UNIT_DIR};
use seaport_shared::cluster::ClusterName;

/// What to reset.
#[derive(Clone, Debug)]
pub struct ResetOptions {
    /// The cluster.
    pub cluster: ClusterName,
    /// Also remove `<data-root>/<cluster>`.
    pub prune: bool,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// Root of cluster data.
    pub data_root: PathBuf,
    /// The host root.
    pub host_root: PathBuf,
    /// Timeout of `kubeadm reset` and `clean.sh`.
    pub timeout: Duration,
}

/// What a reset did.
#[derive(Clone, Debug, Default)]
pub struct ResetReport {
    /// Whether there was anything installed.
    pub had_journal: bool,
    /// Actions, in order, for the user.
    pub actions: Vec<String>,
    /// What could not be undone.
    pub warnings: Vec<String>,
}

/// Resets the cluster's install on this host.
pub fn reset(opts: &ResetOptions, fx: &dyn Effects) -> Result<ResetReport, JournalError> {
    let mut report = ResetReport::default();
    let files = HostFiles::new(&opts.host_root);
    let cluster_dir = opts.data_root.join(&opts.cluster);
    let rootfs = cluster_dir.join("rootfs");
    let had = Journal::exists(&opts.state_dir, opts.cluster.as_str());
    report.had_journal = had;
    let journal = Journal::open(&opts.state_dir, opts.cluster.as_str())?;
    let changes = journal.state().changes.clone();
    let ran_kubeadm = journal.state().steps.contains_key("kubeadm");
    let run = |what: String, spec: CommandSpec, report: &mut ResetReport| match fx.run(&spec) {
        Ok(o) if o.success() => report.actions.push(what),
        Ok(o) => report.warnings.push(format!(
            "{what}: exited with {:?}: {}",
            o.code,
            o.last_lines(5)
        )),
        Err(e) => report.warnings.push(format!("{what}: {e}")),
    };
    if had && ran_kubeadm {
        let installed = files.host(&format!("{BIN_DIR}/kubeadm"));
        let bin = if installed.is_file() {
            Some(format!("{BIN_DIR}/kubeadm"))
        } else {
            let b = rootfs.join("bin/kubeadm");
            b.is_file().then(|| b.to_string_lossy().into_owned())
        };
        if let Some(bin) = bin {
            run(
                "kubeadm reset -f".into(),
                CommandSpec::new(&bin, &["reset", "-f"], opts.timeout),
                &mut report,
            );
        }
    }
    let clean = rootfs.join("scripts/clean.sh");
    if had && clean.is_file() {
        let mut spec = CommandSpec::new("bash", &["clean.sh"], opts.timeout);
        spec.cwd = Some(rootfs.join("scripts"));
        spec.env
            .insert("SEAPORT_CLUSTER".into(), opts.cluster.to_string());
        spec.env.insert(
            "SEAPORT_ROOTFS".into(),
            rootfs.to_string_lossy().into_owned(),
        );
        run("scripts/clean.sh".into(), spec, &mut report);
    }
    // Units: the ones enabled, and any unit file the install created.
    let mut units: Vec<(String, bool)> = Vec::new();
    for c in &changes {
        match c {
            Change::UnitEnabled { unit, was_enabled } => units.push((unit.clone(), *was_enabled)),
            Change::CreatedFile { path } => {
                if let Some(name) = path.strip_prefix(&format!("{UNIT_DIR}/")) {
                    if !name.contains('/') && name.ends_with(".service") {
                        units.push((name.to_string(), false));
                    }
                }
            }
            _ => {}
        }
    }
    let sctl = |args: &[&str]| {
        fx.run(&CommandSpec::new(
            "systemctl",
            args,
            Duration::from_secs(90),
        ))
    };
    let mut seen = Vec::new();
    for (unit, was_enabled) in units.iter().rev() {
        if seen.contains(unit) {
            continue;
        }
        seen.push(unit.clone());
        let _ = sctl(&["stop", unit]);
        if !was_enabled {
            let _ = sctl(&["disable", unit]);
        }
        report.actions.push(format!("stopped {unit}"));
    }
    // Links a runtime created (docker's bridge), once it is stopped.
    for c in changes.iter().rev() {
        if let Change::CreatedLink { name } = c {
            if files.host(&format!("/sys/class/net/{name}")).exists() {
                run(
                    format!("deleted link {name}"),
                    CommandSpec::new("ip", &["link", "delete", name.as_str()], opts.timeout),
                    &mut report,
                );
            }
        }
    }
    for c in changes.iter().rev() {
        if let Change::Mounted { target } = c {
            let t = PathBuf::from(target);
            if fx.is_mounted(&t) {
                match fx.unmount(&t) {
                    Ok(()) => report.actions.push(format!("unmounted {target}")),
                    Err(e) => report.warnings.push(e.to_string()),
                }
            }
        }
    }
    // A runtime's data root is removed with its contents, never through a
    // mount left inside it (that would delete another file system's files).
    let changes: Vec<Change> = changes
        .into_iter()
        .filter(|c| {
            let Change::CreatedTree { path } = c else {
                return true;
            };
            match fx.mounts_under(&files.host(path)).first() {
                None => true,
                Some(m) => {
                    report.warnings.push(format!(
                        "{path} was created by the install and is kept: {} is mounted inside it; unmount it and remove {path} by hand",
                        m.display()
                    ));
                    false
                }
            }
        })
        .collect();
    let restored = changes.iter().filter(|c| c.path().is_some()).count();
    report.warnings.extend(files.restore(&changes));
    report
        .actions
        .push(format!("removed or restored {restored} files and lines"));
    // `systemctl disable` of a unit whose file is already gone can leave
    // its wants/ symlinks: remove the ones naming our units.
    for (unit, was_enabled) in &units {
        if *was_enabled {
            continue;
        }
        for d in fs::read_dir(files.host(UNIT_DIR))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = d.path().join(unit);
            if d.file_name().to_string_lossy().ends_with(".wants")
                && fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink())
            {
                let _ = fs::remove_file(&p);
            }
        }
    }
    if had {
        let _ = sctl(&["daemon-reload"]);
        let _ = sctl(&["reset-failed"]);
    }
    journal.remove()?;
    if opts.prune {
        match fs::remove_dir_all(&cluster_dir) {
            Ok(()) => report
                .actions
                .push(format!("removed {}", cluster_dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .warnings
                .push(format!("removing {}: {e}", cluster_dir.display())),
        }
    }
    Ok(report)
}
