//! The Debian base every host boots from: made by debootstrap once per
//! machine, cached under the cache directory keyed by its package list, built
//! in a temporary directory and renamed into place under a lock, so two test
//! processes never build it at once and a killed build never looks complete.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::cmd::{self, CmdError};
use crate::lock::{self, LockError};
use crate::mounts::{self, MountError};

/// Bump when the way a base is prepared changes, so old caches are not reused.
const BASE_FORMAT: u32 = 1;
/// File inside a finished base recording what it was built from.
pub const MARKER: &str = ".seaport-lab-base.json";

/// Errors of building or finding the base.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("building the lab base failed at `{step}`: {source}")]
    Step { step: String, source: CmdError },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no Debian mirror for suite {suite} found in /etc/apt/sources.list or \
         /etc/apt/sources.list.d/; set SEAPORT_LAB_MIRROR to the mirror apt uses"
    )]
    NoMirror { suite: String },
}

/// What goes into a base: the suite and the packages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseSpec {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages given to debootstrap `--include`.
    pub include: Vec<String>,
    /// Packages installed afterwards with apt-get in a chroot (debootstrap's
    /// resolver cannot handle cloud-init's virtual dependencies).
    pub extra: Vec<String>,
}

impl Default for BaseSpec {
    fn default() -> Self {
        BaseSpec {
            suite: machine_suite().unwrap_or_else(|| "bookworm".to_string()),
            include: ["systemd", "systemd-sysv", "dbus", "iproute2"]
                .map(String::from)
                .to_vec(),
            extra: ["cloud-init", "curl", "ca-certificates", "openssh-server"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl BaseSpec {
    /// The cache key: a short hash of the suite, the package lists and the
    /// preparation format.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("format={BASE_FORMAT}\n"));
        h.update(format!("suite={}\n", self.suite));
        h.update(format!("include={}\n", self.include.join(",")));
        h.update(format!("extra={}\n", self.extra.join(",")));
        hex::encode(&h.finalize()[..8])
    }

    /// Where the finished base lives under `cache`.
    pub fn dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("base-{}", self.key()))
    }
}

/// The suite (`VERSION_CODENAME`) of the machine, from /etc/os-release.
pub fn machine_suite() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The mirror apt on this machine uses for `suite` itself (not -security or
/// -updates), from one-line (`deb URI SUITE ...`) or deb822 (`URIs:`,
/// `Suites:`) sources.
pub fn mirror_from_sources(files: &[String], suite: &str) -> Option<String> {
    for text in files {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let rest: Vec<&str> = words.filter(|w| !w.starts_with('[')).collect();
            // Options in brackets may span words: drop anything up to `]`.
            let rest: Vec<&str> = match rest.iter().position(|w| w.ends_with(']')) {
                Some(i) if line.contains('[') => rest[i + 1..].to_vec(),
                _ => rest,
            };
            if rest.len() >= 2 && rest[1] == suite {
                return Some(rest[0].to_string());
            }
        }
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
                })
            };
            let types = field("Types").unwrap_or_default();
            if !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            let suites = field("Suites").unwrap_or_default();
            if suites.split_whitespace().any(|s| s == suite) {
                if let Some(uri) =
                    field("URIs").and_then(|u| u.split_whitespace().next().map(String::from))
                {
                    return Some(uri);
                }
            }
        }
    }
    None
}

/// The mirror to give debootstrap: `SEAPORT_LAB_MIRROR`, else apt's own.
pub fn machine_mirror(suite: &str) -> Result<String, BaseError> {
    if let Ok(m) = std::env::var("SEAPORT_LAB_MIRROR") {
        if !m.is_empty() {
            return Ok(m);
        }
    }
    let mut files = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        files.push(t);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "list" || ext == "sources" {
                if let Ok(t) = std::fs::read_to_string(&p) {
                    files.push(t);
                }
            }
        }
    }
    mirror_from_sources(&files, suite).ok_or_else(|| BaseError::NoMirror {
        suite: suite.to_string(),
    })
}

/// Returns the cached base for `spec`, building it first if it is missing.
pub fn ensure(spec: &BaseSpec, cache: &Path) -> Result<PathBuf, BaseError> {
    let dir = spec.dir(cache);
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    let _guard = lock::exclusive(
        &cache.join(format!("base-{}.lock", spec.key())),
        "the lab base being built by another process",
    )?;
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    // Leftovers of a killed build: unmount and remove them.
    for stale in stale_builds(cache, &spec.key()) {
        mounts::remove_tree(&stale)?;
    }
    if dir.exists() {
        mounts::remove_tree(&dir)?;
    }
    let tmp = cache.join(format!("base-{}.tmp-{}", spec.key(), std::process::id()));
    let started = Instant::now();
    eprintln!(
        "seaport-lab: building the lab base {} (debootstrap {}; cached for later runs)",
        dir.display(),
        spec.suite
    );
    let result = build(spec, &tmp);
    if let Err(e) = result {
        let _ = mounts::remove_tree(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dir).map_err(|source| BaseError::Write {
        path: dir.clone(),
        source,
    })?;
    eprintln!(
        "seaport-lab: lab base ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

fn stale_builds(cache: &Path, key: &str) -> Vec<PathBuf> {
    let prefix = format!("base-{key}.tmp-");
    std::fs::read_dir(cache)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn step(what: &str, cmd: &mut Command) -> Result<(), BaseError> {
    cmd::run(cmd).map(|_| ()).map_err(|source| BaseError::Step {
        step: what.to_string(),
        source,
    })
}

fn write(path: &Path, contents: &[u8]) -> Result<(), BaseError> {
    std::fs::write(path, contents).map_err(|source| BaseError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn chroot(root: &Path, script: &str) -> Command {
    let mut c = cmd::command("chroot", [root.as_os_str()]);
    c.args(["/bin/sh", "-ec", script]);
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

fn build(spec: &BaseSpec, tmp: &Path) -> Result<(), BaseError> {
    let mirror = machine_mirror(&spec.suite)?;
    std::fs::create_dir_all(tmp).map_err(|source| BaseError::Write {
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut deb = cmd::command(
        "debootstrap",
        [
            "--variant=minbase".to_string(),
            format!("--include={}", spec.include.join(",")),
            spec.suite.clone(),
        ],
    );
    deb.arg(tmp).arg(&mirror);
    step("debootstrap", &mut deb)?;

    // apt in the chroot needs a resolver; services must not start there.
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let _ = std::fs::remove_file(tmp.join("etc/resolv.conf"));
    write(&tmp.join("etc/resolv.conf"), &resolv)?;
    write(&tmp.join("usr/sbin/policy-rc.d"), b"#!/bin/sh\nexit 101\n")?;
    step(
        "chmod policy-rc.d",
        cmd::command("chmod", ["0755"]).arg(tmp.join("usr/sbin/policy-rc.d")),
    )?;
    if !spec.extra.is_empty() {
        step(
            "apt-get install in the base",
            &mut chroot(
                tmp,
                &format!(
                    "apt-get update -q && apt-get install -y -q --no-install-recommends {}",
                    spec.extra.join(" ")
                ),
            ),
        )?;
    }
    // Make the base neutral: no shared identity, nothing enabled that a test
    // did not ask for, no background apt runs.
    step(
        "prepare the base",
        &mut chroot(
            tmp,
            "apt-get clean; rm -rf /var/lib/apt/lists/*; \
             rm -f /etc/ssh/ssh_host_*; \
             if [ -e /lib/systemd/system/ssh.service ]; then systemctl disable ssh.service; fi; \
             for t in apt-daily.timer apt-daily-upgrade.timer; do \
               if [ -e /lib/systemd/system/$t ]; then systemctl disable $t; fi; done; \
             : > /etc/machine-id; rm -f /var/lib/dbus/machine-id; \
             rm -f /usr/sbin/policy-rc.d; : > /etc/resolv.conf",
        ),
    )?;
    let marker = serde_json::to_vec_pretty(spec).expect("base spec serializes");
    write(&tmp.join(MARKER), &marker)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_package_list() {
        let a = BaseSpec::default();
        let mut b = a.clone();
        b.extra.push("less".into());
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), a.clone().key());
    }

    #[test]
    fn deb822_mirror_is_the_one_for_the_suite_itself() {
        let sources = vec![
            "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
             Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
                .to_string(),
        ];
        assert_eq!(
            mirror_from_sources(&sources, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_sources(&sources, "trixie"), None);
    }

    #[test]
    fn one_line_sources_with_options_are_understood() {
        let sources = vec!["# deb http://old.example/debian bookworm main\n\
             deb-src http://src.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
            .to_string()];
        assert_eq!(
            mirror_from_sources(&sources, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
    }
}
