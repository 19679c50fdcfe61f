//! Finding and removing mounts under the lab's own directories, and removing
//! those directories only once nothing is mounted beneath them.

use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};

/// Errors of unmounting and removing lab directories.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error("{path} is still mounted after unmounting; remove it by hand once `umount -R {path}` succeeds")]
    StillMounted { path: PathBuf },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mount points from a mountinfo text, decoded (`\040` is a space).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

fn unescape(field: &str) -> String {
    let mut out = String::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    let mut found: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything at or under `dir` (lazily if a mount is busy).
pub fn unmount_all_under(dir: &Path) -> Result<(), MountError> {
    for _ in 0..5 {
        let found = mounts_under(dir)?;
        if found.is_empty() {
            return Ok(());
        }
        for mount in found {
            if cmd::run(&mut cmd::command("umount", [&mount])).is_err() {
                cmd::run(&mut cmd::command(
                    "umount",
                    [std::ffi::OsStr::new("-l"), mount.as_os_str()],
                ))?;
            }
        }
    }
    match mounts_under(dir)?.into_iter().next() {
        None => Ok(()),
        Some(path) => Err(MountError::StillMounted { path }),
    }
}

/// Unmounts everything under `dir`, then removes it; missing is fine.
pub fn remove_tree(dir: &Path) -> Result<(), MountError> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_decoded() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:31 / /var/lib/seaport-lab/runs/spl-000001/h1/root rw - overlay overlay rw\n";
        let points = parse_mountinfo(text);
        assert_eq!(
            points,
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/var/lib/seaport-lab/runs/spl-000001/h1/root")
            ]
        );
    }
}
