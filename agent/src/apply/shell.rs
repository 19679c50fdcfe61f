//! Shell steps on an installed host: Clusterfile plugins and commands the
//! coordinator runs at a phase of an install.
//!
//! A shell step is `bash -c SCRIPT` as root, in the cluster's rootfs
//! directory, with the given env, `HostIP` and the hooks' own variables
//! (`SEAPORT_CLUSTER`, `SEAPORT_ROLE`, `SEAPORT_ROOTFS`). It runs under the
//! same tracking as the image's hooks ([`super::files::HostFiles::tracked`]),
//! so a reset undoes what it wrote under `/etc`, `/usr` and `/opt`, and it is
//! journaled as a step of its own name with a fingerprint of the script and
//! env: a done step with the same fingerprint is skipped unless asked to run
//! always.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use seaport_shared::cluster::{ClusterName, Step};

use super::effects::{CommandOutput, CommandSpec, Effects};
use super::files::HostFiles;
use super::journal::{Journal, StepRecord, StepStatus};
use super::options::env_map;
use super::outcome::{ApplyError, StepEvent, MAX_STEP_NAME};
use super::steps::error::StepError;

/// One shell step.
#[derive(Clone, Debug)]
pub struct ShellOptions {
    /// The cluster (installed on this host).
    pub cluster: ClusterName,
    /// The step name it is journaled and reported under.
    pub step: String,
    /// The script, run with `bash -c`.
    pub script: String,
    /// Its env, `K=V` pairs in order (later ones win).
    pub env: Vec<(String, String)>,
    /// This host's IP, as `HostIP`.
    pub host_ip: String,
    /// Killed (with its process group) after this long.
    pub timeout: Duration,
    /// Run even when done with the same script and env.
    pub always: bool,
    /// The agent's state directory (the journal lives here).
    pub state_dir: PathBuf,
    /// Root of cluster data.
    pub data_root: PathBuf,
    /// The host root (`/`; a temporary directory in unit tests).
    pub host_root: PathBuf,
}

/// What a shell step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellReport {
    /// Whether it ran (false: skipped as done).
    pub ran: bool,
    /// The last lines of its output.
    pub output: String,
}

/// The env of the step: `env`, then `HostIP` and the hooks' variables.
fn step_env(opts: &ShellOptions, role: &str, rootfs: &std::path::Path) -> BTreeMap<String, String> {
    let mut env = env_map([opts.env.as_slice()]);
    // Root's home, as sealer's commands over SSH have: kubectl finds
    // `/root/.kube/config` there.
    env.entry("HOME".into())
        .or_insert_with(|| super::steps::ROOT_HOME.to_string());
    env.insert("HostIP".into(), opts.host_ip.clone());
    env.insert("SEAPORT_CLUSTER".into(), opts.cluster.to_string());
    env.insert("SEAPORT_ROLE".into(), role.to_string());
    env.insert(
        "SEAPORT_ROOTFS".into(),
        rootfs.to_string_lossy().into_owned(),
    );
    env
}

fn fingerprint(script: &str, env: &BTreeMap<String, String>) -> String {
    let mut h = format!("shell\n{}\n{script}\n", script.len());
    for (k, v) in env {
        h.push_str(&format!("{k}={v}\n"));
    }
    seaport_shared::digest::Digest::of(h.as_bytes()).hex()[..16].to_string()
}

fn check_step_name(step: &str) -> Result<(), ApplyError> {
    if step.is_empty() || step.len() > MAX_STEP_NAME || step.chars().any(char::is_control) {
        return Err(ApplyError::ShellStepName(step.to_string()));
    }
    if step.parse::<Step>().is_ok() {
        return Err(ApplyError::ShellStepReserved(step.to_string()));
    }
    Ok(())
}

/// The output tail of a command that succeeded, or why it did not.
fn judge(step: &str, timeout: Duration, out: &CommandOutput) -> Result<String, StepError> {
    if out.success() {
        Ok(out.last_lines(20))
    } else if out.timed_out {
        Err(StepError::TimedOut {
            what: step.to_string(),
            timeout,
            output: out.last_lines(20),
        })
    } else {
        Err(StepError::Exited {
            what: step.to_string(),
            status: out.code.map_or("a signal".to_string(), |c| c.to_string()),
            output: out.last_lines(20),
        })
    }
}

/// Reports the end of a shell step.
fn finish(
    step: String,
    result: Result<String, StepError>,
    started: Instant,
    progress: &mut dyn FnMut(&StepEvent),
) -> Result<ShellReport, ApplyError> {
    match result {
        Ok(output) => {
            let summary = if output.is_empty() {
                "exited with 0".to_string()
            } else {
                format!("exited with 0; last output:\n{output}")
            };
            progress(&StepEvent::Done {
                step,
                summary,
                elapsed: started.elapsed(),
            });
            Ok(ShellReport { ran: true, output })
        }
        Err(error) => {
            progress(&StepEvent::Failed {
                step: step.clone(),
                error: error.to_string(),
            });
            Err(ApplyError::Step {
                step,
                error: Box::new(error),
            })
        }
    }
}

/// Runs a shell step. Where `opts.cluster` is installed it runs in the
/// rootfs, journaled and tracked; elsewhere in `/`, untracked.
/// `progress` sees its events (started, skipped, done, failed).
pub fn run_shell(
    opts: &ShellOptions,
    fx: &dyn Effects,
    progress: &mut dyn FnMut(&StepEvent),
) -> Result<ShellReport, ApplyError> {
    check_step_name(&opts.step)?;
    let rootfs = opts.data_root.join(&opts.cluster).join("rootfs");
    if !Journal::exists(&opts.state_dir, opts.cluster.as_str()) || !rootfs.is_dir() {
        // The clean phases after a reset (or a host the cluster is gone
        // from): nothing to journal against, so the script runs in `/`,
        // untracked, every time.
        let step = opts.step.clone();
        progress(&StepEvent::Started {
            step: step.clone(),
            attempt: 1,
        });
        let started = Instant::now();
        let mut spec = CommandSpec::new("bash", &["-c", opts.script.as_str()], opts.timeout);
        spec.cwd = Some(opts.host_root.clone());
        spec.env = step_env(opts, "", &rootfs);
        let result = fx
            .run(&spec)
            .map_err(StepError::from)
            .and_then(|out| judge(&step, opts.timeout, &out));
        return finish(step, result, started, progress);
    }
    let mut journal = Journal::open(&opts.state_dir, opts.cluster.as_str())?;
    let role = journal.state().roles.first().cloned().unwrap_or_default();
    let env = step_env(opts, &role, &rootfs);
    let fp = fingerprint(&opts.script, &env);
    let step = opts.step.clone();
    let prev = journal.state().steps.get(&step).cloned();
    if !opts.always
        && prev
            .as_ref()
            .is_some_and(|p| p.status == StepStatus::Done && p.fingerprint == fp)
    {
        progress(&StepEvent::Skipped { step });
        return Ok(ShellReport {
            ran: false,
            output: String::new(),
        });
    }
    let attempt = prev.as_ref().map_or(0, |p| p.attempts) + 1;
    journal.update(|s| {
        s.steps.insert(
            step.clone(),
            StepRecord {
                status: StepStatus::Running,
                fingerprint: fp.clone(),
                attempts: attempt,
                message: String::new(),
            },
        );
    })?;
    progress(&StepEvent::Started {
        step: step.clone(),
        attempt,
    });
    let started = Instant::now();
    let mut spec = CommandSpec::new("bash", &["-c", opts.script.as_str()], opts.timeout);
    spec.cwd = Some(rootfs);
    spec.env = env;
    let files = HostFiles::new(&opts.host_root);
    let key: String = format!(
        "shell-{}",
        step.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            })
            .collect::<String>()
    );
    let result = files
        .tracked(&mut journal, &key, || fx.run(&spec))
        .map_err(StepError::from)
        .and_then(|r| r.map_err(StepError::from))
        .and_then(|out| judge(&step, opts.timeout, &out));
    let (status, message) = match &result {
        Ok(_) => (StepStatus::Done, "exited with 0".to_string()),
        Err(e) => (StepStatus::Failed, e.to_string()),
    };
    journal.update(|s| {
        if let Some(r) = s.steps.get_mut(&step) {
            r.status = status;
            r.message = message;
        }
    })?;
    finish(step, result, started, progress)
}

#[cfg(test)]
mod tests {
    use super::super::effects::{CommandOutput, EffectsError, RecordingEffects};
    use super::super::reset::{reset, ResetOptions};
    use super::*;
    use std::fs;
    use std::path::Path;

    /// Recorded effects; `bash -c` scripts write what their env says.
    struct Host {
        rec: RecordingEffects,
        root: PathBuf,
    }

    impl Effects for Host {
        fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError> {
            if cmd.program == "bash" && cmd.args.first().is_some_and(|a| a == "-c") {
                if let Some(file) = cmd.env.get("WRITE") {
                    let p = self.root.join(file.trim_start_matches('/'));
                    fs::create_dir_all(p.parent().unwrap()).unwrap();
                    fs::write(p, format!("written on {}\n", cmd.env["HostIP"])).unwrap();
                }
            }
            self.rec.run(cmd)
        }
        fn bind_mount(&self, s: &Path, t: &Path) -> Result<(), EffectsError> {
            self.rec.bind_mount(s, t)
        }
        fn unmount(&self, t: &Path) -> Result<(), EffectsError> {
            self.rec.unmount(t)
        }
        fn is_mounted(&self, t: &Path) -> bool {
            self.rec.is_mounted(t)
        }
    }

    /// A host where cluster c1 is installed as a node.
    fn installed() -> (tempfile::TempDir, ShellOptions, Host) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let opts = ShellOptions {
            cluster: ClusterName::parse("c1").unwrap(),
            step: "plugin:sysctl@PreInit".into(),
            script: "echo tuning; sysctl -p".into(),
            env: vec![
                ("WRITE".into(), "/etc/sysctl.d/90-plugin.conf".into()),
                ("HostIP".into(), "ignored".into()),
            ],
            host_ip: "10.0.0.2".into(),
            timeout: Duration::from_secs(30),
            always: false,
            state_dir: d.join("state"),
            data_root: d.join("data"),
            host_root: d.join("host"),
        };
        fs::create_dir_all(opts.host_root.join("etc")).unwrap();
        fs::create_dir_all(opts.data_root.join("c1/rootfs")).unwrap();
        let mut j = Journal::open(&opts.state_dir, "c1").unwrap();
        j.update(|s| s.roles = vec!["node".into()]).unwrap();
        let host = Host {
            rec: RecordingEffects::default(),
            root: opts.host_root.clone(),
        };
        (dir, opts, host)
    }

    fn bash_calls(host: &Host) -> usize {
        host.rec
            .calls()
            .iter()
            .filter(|c| c.starts_with("run bash -c"))
            .count()
    }

    #[test]
    fn a_shell_step_runs_once_is_skipped_when_done_and_reset_undoes_its_files() {
        let (_dir, opts, host) = installed();
        host.rec.answer(
            "bash -c",
            CommandOutput {
                code: Some(0),
                timed_out: false,
                tail: "tuning\nnet.ipv4.ip_forward = 1\n".into(),
            },
        );
        let mut events = Vec::new();
        let r = run_shell(&opts, &host, &mut |e| events.push(e.clone())).unwrap();
        assert!(r.ran);
        assert_eq!(r.output, "tuning\nnet.ipv4.ip_forward = 1");
        assert!(matches!(&events[..], [
            StepEvent::Started { step, attempt: 1 },
            StepEvent::Done { summary, .. },
        ] if step == "plugin:sysctl@PreInit" && summary.contains("ip_forward")));
        assert_eq!(
            host.rec.calls(),
            vec!["run bash -c echo tuning; sysctl -p".to_string()]
        );
        let written = opts.host_root.join("etc/sysctl.d/90-plugin.conf");
        // HostIP is the task's, not the env's.
        assert_eq!(
            fs::read_to_string(&written).unwrap(),
            "written on 10.0.0.2\n"
        );
        let j = Journal::open(&opts.state_dir, "c1").unwrap();
        assert_eq!(j.state().steps[&opts.step].status, StepStatus::Done);

        // Again: skipped, nothing run.
        let mut events = Vec::new();
        let r = run_shell(&opts, &host, &mut |e| events.push(e.clone())).unwrap();
        assert!(!r.ran);
        assert_eq!(
            events,
            vec![StepEvent::Skipped {
                step: opts.step.clone()
            }]
        );
        assert_eq!(bash_calls(&host), 1);

        // `always`, or another script: it runs again.
        run_shell(
            &ShellOptions {
                always: true,
                ..opts.clone()
            },
            &host,
            &mut |_| {},
        )
        .unwrap();
        run_shell(
            &ShellOptions {
                script: "sysctl --system".into(),
                ..opts.clone()
            },
            &host,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(bash_calls(&host), 3);

        let r = reset(
            &ResetOptions {
                cluster: ClusterName::parse("c1").unwrap(),
                prune: false,
                state_dir: opts.state_dir.clone(),
                data_root: opts.data_root.clone(),
                host_root: opts.host_root.clone(),
                timeout: Duration::from_secs(5),
            },
            &host,
        )
        .unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(!written.exists());
        assert!(!opts.host_root.join("etc/sysctl.d").exists());
    }

    #[test]
    fn the_script_gets_the_hook_env_in_the_rootfs() {
        let (_dir, opts, _) = installed();
        struct Env(std::sync::Mutex<Option<CommandSpec>>);
        impl Effects for Env {
            fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError> {
                *self.0.lock().unwrap() = Some(cmd.clone());
                Ok(CommandOutput {
                    code: Some(0),
                    ..CommandOutput::default()
                })
            }
            fn bind_mount(&self, _: &Path, _: &Path) -> Result<(), EffectsError> {
                Ok(())
            }
            fn unmount(&self, _: &Path) -> Result<(), EffectsError> {
                Ok(())
            }
            fn is_mounted(&self, _: &Path) -> bool {
                false
            }
        }
        let fx = Env(Default::default());
        run_shell(&opts, &fx, &mut |_| {}).unwrap();
        let spec = fx.0.lock().unwrap().clone().unwrap();
        let rootfs = opts.data_root.join("c1/rootfs");
        assert_eq!(spec.cwd.as_deref(), Some(rootfs.as_path()));
        assert_eq!(spec.timeout, Duration::from_secs(30));
        for (k, v) in [
            ("HostIP", "10.0.0.2"),
            ("HOME", "/root"),
            ("SEAPORT_CLUSTER", "c1"),
            ("SEAPORT_ROLE", "node"),
            ("SEAPORT_ROOTFS", rootfs.to_str().unwrap()),
            ("WRITE", "/etc/sysctl.d/90-plugin.conf"),
        ] {
            assert_eq!(spec.env.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn a_failing_script_fails_its_step_with_the_output_tail_and_runs_again() {
        let (_dir, opts, host) = installed();
        host.rec.answer(
            "bash -c",
            CommandOutput {
                code: Some(4),
                timed_out: false,
                tail: "checking\nno such module: br_netfilter\n".into(),
            },
        );
        let mut events = Vec::new();
        let err = run_shell(&opts, &host, &mut |e| events.push(e.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exited with 4") && err.contains("no such module: br_netfilter"),
            "{err}"
        );
        assert!(
            matches!(events.last(), Some(StepEvent::Failed { error, .. }) if error.contains("br_netfilter"))
        );
        let j = Journal::open(&opts.state_dir, "c1").unwrap();
        assert_eq!(j.state().steps[&opts.step].status, StepStatus::Failed);
        let mut events = Vec::new();
        let _ = run_shell(&opts, &host, &mut |e| events.push(e.clone()));
        assert!(matches!(
            events.first(),
            Some(StepEvent::Started { attempt: 2, .. })
        ));
        assert_eq!(bash_calls(&host), 2);
    }

    #[test]
    fn on_a_host_without_the_cluster_it_runs_in_the_root_untracked_and_install_step_names_are_refused(
    ) {
        let (_dir, opts, host) = installed();
        let named = ShellOptions {
            step: "kubeadm".into(),
            ..opts.clone()
        };
        let err = run_shell(&named, &host, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("name of an install step"), "{err}");
        assert!(host.rec.calls().is_empty(), "{:?}", host.rec.calls());

        // A post-clean plugin after the reset: no journal, no rootfs.
        let other = ShellOptions {
            cluster: ClusterName::parse("c2").unwrap(),
            ..opts.clone()
        };
        let mut events = Vec::new();
        run_shell(&other, &host, &mut |e| events.push(e.clone())).unwrap();
        assert_eq!(bash_calls(&host), 1);
        assert!(
            matches!(events.last(), Some(StepEvent::Done { .. })),
            "{events:?}"
        );
        assert!(
            !Journal::exists(&opts.state_dir, "c2"),
            "a journal was made"
        );
        // Not journaled, so it runs every time.
        run_shell(&other, &host, &mut |_| {}).unwrap();
        assert_eq!(bash_calls(&host), 2);
    }
}
