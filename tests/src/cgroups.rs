//! A cgroup of its own for each host. With `--keep-unit` and no systemd on
//! the machine, systemd-nspawn makes the container's cgroup tree
//! (`payload/`, `supervisor/`) under the cgroup it was started in; hosts
//! started from the same process would then share one tree, and their
//! systemds would remove each other's unit cgroups (units failing with
//! `status=219/CGROUP`). So each nspawn starts in `<our cgroup>/<host name>`
//! in the hierarchies systemd tracks processes with (`name=systemd` on
//! cgroup v1, and the unified cgroup v2 hierarchy).

use std::path::{Path, PathBuf};

use crate::mounts;
use crate::names::PREFIX;

/// The directories of the hierarchies systemd uses, at our own cgroup:
/// e.g. `/sys/fs/cgroup/systemd/` and `/sys/fs/cgroup/unified/`.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let mount = if controllers.is_empty() {
            hierarchy_mount(&mountinfo, |fstype, _| fstype == "cgroup2")
        } else if controllers == "name=systemd" {
            hierarchy_mount(&mountinfo, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "name=systemd")
            })
        } else {
            None
        };
        if let Some(m) = mount {
            dirs.push(m.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// The mount point of the first cgroup hierarchy matching `want(fstype,
/// super options)`.
fn hierarchy_mount(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let opts = r.nth(1).unwrap_or("");
        if want(fstype, opts) {
            let point = left.split(' ').nth(4)?;
            return mounts::parse_mountinfo(&format!("0 0 0 / {point}"))
                .into_iter()
                .next();
        }
    }
    None
}

/// The cgroup directories host `name` starts in (not created yet).
pub fn host_cgroups(name: &str) -> Vec<PathBuf> {
    own_cgroup_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .collect()
}

/// Removes a cgroup directory and its children (deepest first); cgroups
/// still holding processes stay, and are reported by returning false.
pub fn remove(dir: &Path) -> bool {
    if !dir.exists() {
        return true;
    }
    let mut ok = true;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                ok &= remove(&e.path());
            }
        }
    }
    ok && std::fs::remove_dir(dir).is_ok()
}

/// Lab cgroups (named with the lab prefix) under our own cgroups.
pub fn lab_cgroups() -> Vec<PathBuf> {
    own_cgroup_dirs()
        .into_iter()
        .flat_map(|d| {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
                        .map(|e| e.path())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found_by_type_and_name() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                  31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
                  32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            hierarchy_mount(mi, |t, _| t == "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            hierarchy_mount(mi, |t, o| t == "cgroup"
                && o.split(',').any(|x| x == "name=systemd")),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
    }
}
