//! Effects on the host that need root or change global state: running
//! commands (systemctl, hooks, kubeadm) and mounts. Behind a trait so the
//! executor's logic is unit-tested with [`RecordingEffects`]; the lab tests
//! run [`SystemEffects`] on real hosts.
//!
//! Files are not behind this trait: the executor writes them under a host
//! root (`/` for real, a temporary directory in unit tests), always through
//! [`super::files::HostFiles`], which records them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much of a command's output is kept.
pub const OUTPUT_TAIL: usize = 16 * 1024;

/// Errors from effects.
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A mount operation failed.
    #[error("{action} {path}: {source}")]
    Mount {
        /// bind-mounting or unmounting.
        action: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: nix::Error,
    },
}

/// A command to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program (a path or a name on PATH).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Killed (with its process group) after this long.
    pub timeout: Duration,
}

impl CommandSpec {
    /// `program args...` with a timeout.
    pub fn new<S: AsRef<str>>(program: &str, args: &[S], timeout: Duration) -> Self {
        Self {
            program: program.to_string(),
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            timeout,
            ..Self::default()
        }
    }

    /// The command line, for logs.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// The last [`OUTPUT_TAIL`] bytes of stdout and stderr, interleaved.
    pub tail: String,
}

impl CommandOutput {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last `lines` lines of output.
    pub fn last_lines(&self, lines: usize) -> String {
        let all: Vec<&str> = self.tail.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Host effects.
pub trait Effects {
    /// Runs a command to completion or its timeout.
    fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError>;
    /// Bind-mounts `source` on `target` (both exist).
    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), EffectsError>;
    /// Unmounts `target` (lazily, so a busy mount does not block reset).
    fn unmount(&self, target: &Path) -> Result<(), EffectsError>;
    /// Whether something is mounted on `target`.
    fn is_mounted(&self, target: &Path) -> bool;
    /// Mount points at or below `dir` (from `/proc/self/mountinfo`).
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return Vec::new();
        };
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
            .filter(|mp| mp.starts_with(dir))
            .collect()
    }
}

/// The real thing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEffects;

impl Effects for SystemEffects {
    fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError> {
        use std::os::unix::process::CommandExt;
        let (reader, writer) = nix::unistd::pipe().map_err(|e| EffectsError::Spawn {
            program: cmd.program.clone(),
            source: e.into(),
        })?;
        let reader = std::fs::File::from(reader);
        let writer2 = writer.try_clone().map_err(|source| EffectsError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .process_group(0);
        if let Some(d) = &cmd.cwd {
            c.current_dir(d);
        }
        let mut child = c.spawn().map_err(|source| EffectsError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        drop(c);
        let pid = child.id();
        let collector = std::thread::spawn(move || {
            let mut reader = reader;
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > 2 * OUTPUT_TAIL {
                            tail.drain(..tail.len() - OUTPUT_TAIL);
                        }
                    }
                }
            }
            if tail.len() > OUTPUT_TAIL {
                tail.drain(..tail.len() - OUTPUT_TAIL);
            }
            String::from_utf8_lossy(&tail).into_owned()
        });
        let deadline = Instant::now() + cmd.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let pgid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        // A daemon started by the command may keep the pipe open: do not wait
        // for it longer than a moment.
        let tail = wait_thread(collector, Duration::from_secs(2));
        Ok(CommandOutput {
            code: status.and_then(|s| s.code()),
            timed_out,
            tail,
        })
    }

    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), EffectsError> {
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| EffectsError::Mount {
            action: "bind-mounting on",
            path: target.to_path_buf(),
            source,
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), EffectsError> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|source| {
            EffectsError::Mount {
                action: "unmounting",
                path: target.to_path_buf(),
                source,
            }
        })
    }

    fn is_mounted(&self, target: &Path) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        let want = target.to_string_lossy();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mp| unescape_mountinfo(mp) == want)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn wait_thread(handle: std::thread::JoinHandle<String>, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        handle.join().unwrap_or_default()
    } else {
        String::from("(output still open; a started daemon keeps it)")
    }
}

/// Records every effect and answers with canned outputs (unit tests).
#[derive(Debug, Default)]
pub struct RecordingEffects {
    calls: Mutex<Vec<String>>,
    mounts: Mutex<Vec<PathBuf>>,
    answers: Mutex<BTreeMap<String, CommandOutput>>,
}

impl RecordingEffects {
    /// Everything so far, one line per effect (`run systemctl enable x`,
    /// `mount SRC TARGET`, `umount TARGET`).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("not poisoned").clone()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        self.calls.lock().expect("not poisoned").clear();
    }

    /// Answers commands whose line starts with `prefix` with `out`.
    pub fn answer(&self, prefix: &str, out: CommandOutput) {
        self.answers
            .lock()
            .expect("not poisoned")
            .insert(prefix.to_string(), out);
    }
}

impl Effects for RecordingEffects {
    fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError> {
        let line = cmd.display();
        self.calls
            .lock()
            .expect("not poisoned")
            .push(format!("run {line}"));
        let answers = self.answers.lock().expect("not poisoned");
        Ok(answers
            .iter()
            .filter(|(p, _)| line.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, o)| o.clone())
            .unwrap_or(CommandOutput {
                code: Some(0),
                timed_out: false,
                tail: String::new(),
            }))
    }

    fn bind_mount(&self, source: &Path, target: &Path) -> Result<(), EffectsError> {
        self.calls.lock().expect("not poisoned").push(format!(
            "mount {} {}",
            source.display(),
            target.display()
        ));
        self.mounts
            .lock()
            .expect("not poisoned")
            .push(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), EffectsError> {
        self.calls
            .lock()
            .expect("not poisoned")
            .push(format!("umount {}", target.display()));
        self.mounts
            .lock()
            .expect("not poisoned")
            .retain(|m| m != target);
        Ok(())
    }

    fn is_mounted(&self, target: &Path) -> bool {
        self.mounts
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|m| m == target)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.mounts
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|m| m.starts_with(dir))
            .cloned()
            .collect()
    }
}
