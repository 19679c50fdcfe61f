//! Files of a cluster's unpacked rootfs (`<data-root>/<cluster>/rootfs`),
//! read and written for the coordinator: the Clusterfile's `Config`
//! documents land here before `render`, and plugins and configs are read
//! from here.
//!
//! Paths are relative to the rootfs and confined to it as layer entries are
//! (`shared/src/safetar.rs`): absolute paths and `..` are refused. A read
//! may follow a symlink only when it resolves inside the rootfs; a write
//! goes through [`seaport_shared::confined`]: never through a symlinked
//! directory (a symlink at the file's own path is replaced, not followed),
//! missing parent directories created, the file replaced atomically (a
//! temporary file created with `O_EXCL | O_NOFOLLOW`, fsync, rename).

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use seaport_shared::cluster::ClusterName;
use seaport_shared::confined::{ConfinedError, Dir, Kind};

/// Most file bytes one answer carries: well under the task frame limit
/// (`wire::TASK_FRAME_LIMIT`, 1 MiB), leaving room for paths and framing.
pub const READ_ANSWER_LIMIT: u64 = 768 * 1024;

/// A file asked for: its path relative to the rootfs and its bytes, `None`
/// when it does not exist.
pub type FileAnswer = (String, Option<Vec<u8>>);

/// Errors reading or writing rootfs files.
#[derive(Debug, thiserror::Error)]
pub enum RootfsFilesError {
    /// The cluster has no unpacked rootfs here.
    #[error("cluster {cluster} has no rootfs on this host ({path} is missing); install it first")]
    NoRootfs {
        /// The cluster.
        cluster: String,
        /// The missing directory.
        path: PathBuf,
    },
    /// A path is not confined to the rootfs or not usable.
    #[error("refusing rootfs path {path:?}: {reason}")]
    Refused {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// The files asked for do not fit in one answer.
    #[error(
        "the files asked for hold more than {limit} bytes (reached at {path}), more than one answer carries; ask for fewer files at a time"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The file at which it was exceeded.
        path: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsFilesError {
    let path = path.to_path_buf();
    move |source| RootfsFilesError::Io {
        action,
        path,
        source,
    }
}

/// A confined write refused (a symlink or file in the way) or failed.
fn confined_err(shown: &str, e: ConfinedError) -> RootfsFilesError {
    match e {
        ConfinedError::Io {
            action,
            path,
            source,
        } => RootfsFilesError::Io {
            action,
            path,
            source,
        },
        e => RootfsFilesError::Refused {
            path: shown.to_string(),
            reason: e.to_string(),
        },
    }
}

/// The rootfs of `cluster` under `data_root`, which must exist.
pub fn rootfs_of(data_root: &Path, cluster: &ClusterName) -> Result<PathBuf, RootfsFilesError> {
    let rootfs = data_root.join(cluster).join("rootfs");
    if !rootfs.is_dir() {
        return Err(RootfsFilesError::NoRootfs {
            cluster: cluster.to_string(),
            path: rootfs,
        });
    }
    Ok(rootfs)
}

/// `path` as a relative path inside the rootfs: no root, no `..`. `Ok(None)`
/// when it names the rootfs itself.
fn relative(path: &str) -> Result<Option<PathBuf>, RootfsFilesError> {
    let refused = |reason: &str| RootfsFilesError::Refused {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(
                    "it is absolute; give a path relative to the rootfs",
                ))
            }
            Component::ParentDir => return Err(refused("it contains '..'")),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Where `rel` resolves, when it exists: refused when that is outside the
/// rootfs (through a symlink).
fn resolve_inside(
    canon_root: &Path,
    full: &Path,
    shown: &str,
) -> Result<Option<PathBuf>, RootfsFilesError> {
    match fs::canonicalize(full) {
        Ok(c) if c.starts_with(canon_root) => Ok(Some(c)),
        Ok(_) => Err(RootfsFilesError::Refused {
            path: shown.to_string(),
            reason: "it resolves outside the rootfs (through a symlink)".into(),
        }),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(io("resolving", full)(e)),
    }
}

/// Reads `paths` and the `*.yaml`/`*.yml` files directly in each of `dirs`
/// (a missing directory has none), in that order, each once. A file asked
/// for by path is answered under that path as given; one found in a
/// directory under `DIR/NAME` (the directory's path normalized). A missing
/// file is `None`. More than [`READ_ANSWER_LIMIT`] bytes in all is an error.
pub fn read_files(
    data_root: &Path,
    cluster: &ClusterName,
    paths: &[String],
    dirs: &[String],
) -> Result<Vec<FileAnswer>, RootfsFilesError> {
    let rootfs = rootfs_of(data_root, cluster)?;
    let canon_root = fs::canonicalize(&rootfs).map_err(io("resolving", &rootfs))?;
    // (answered as, relative path)
    let mut wanted: Vec<(String, PathBuf)> = Vec::new();
    for p in paths {
        let Some(rel) = relative(p)? else {
            return Err(RootfsFilesError::Refused {
                path: p.clone(),
                reason: "it names the rootfs itself, not a file".into(),
            });
        };
        wanted.push((p.clone(), rel));
    }
    for d in dirs {
        let rel = relative(d)?.unwrap_or_default();
        let Some(dir) = resolve_inside(&canon_root, &rootfs.join(&rel), d)? else {
            continue;
        };
        if !dir.is_dir() {
            return Err(RootfsFilesError::Refused {
                path: d.clone(),
                reason: "it is not a directory".into(),
            });
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(io("listing", &dir))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(n);
            wanted.push((r.to_string_lossy().into_owned(), r));
        }
    }
    let mut out: Vec<FileAnswer> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut total = 0u64;
    for (rel, path) in wanted {
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let Some(file) = resolve_inside(&canon_root, &rootfs.join(&path), &rel)? else {
            out.push((rel, None));
            continue;
        };
        let meta = fs::metadata(&file).map_err(io("reading", &file))?;
        if !meta.is_file() {
            return Err(RootfsFilesError::Refused {
                path: rel,
                reason: "it is not a regular file".into(),
            });
        }
        if total + meta.len() > READ_ANSWER_LIMIT {
            return Err(RootfsFilesError::TooLarge {
                limit: READ_ANSWER_LIMIT,
                path: rel,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        fs::File::open(&file)
            .and_then(|f| {
                f.take(READ_ANSWER_LIMIT - total + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(io("reading", &file))?;
        total += bytes.len() as u64;
        if total > READ_ANSWER_LIMIT {
            return Err(RootfsFilesError::TooLarge {
                limit: READ_ANSWER_LIMIT,
                path: rel,
            });
        }
        out.push((rel, Some(bytes)));
    }
    Ok(out)
}

/// Writes each file into the rootfs (parents created, atomic replace, the
/// mode of a file it replaces kept, else 0644). Every path is checked
/// before anything is written.
pub fn write_files(
    data_root: &Path,
    cluster: &ClusterName,
    files: &[(String, Vec<u8>)],
) -> Result<usize, RootfsFilesError> {
    let rootfs = rootfs_of(data_root, cluster)?;
    let mut rels = Vec::with_capacity(files.len());
    for (p, _) in files {
        match relative(p)? {
            Some(rel) => rels.push(rel),
            None => {
                return Err(RootfsFilesError::Refused {
                    path: p.clone(),
                    reason: "it names the rootfs itself, not a file".into(),
                })
            }
        }
    }
    let root = Dir::open(&rootfs).map_err(|e| confined_err("", e))?;
    for ((shown, bytes), rel) in files.iter().zip(&rels) {
        let (dir, name) = root
            .parent_of(rel, true)
            .map_err(|e| confined_err(shown, e))?;
        let mode = match dir.stat(name).map_err(|e| confined_err(shown, e))? {
            Some(m) if m.kind == Kind::Dir => {
                return Err(RootfsFilesError::Refused {
                    path: shown.clone(),
                    reason: "a directory is there".into(),
                })
            }
            Some(m) if m.kind == Kind::File => m.mode,
            _ => 0o644,
        };
        dir.write_file(name, bytes, mode)
            .map_err(|e| confined_err(shown, e))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ClusterName {
        ClusterName::parse(n).unwrap()
    }

    fn cluster() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("data/c1/rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(rootfs.join("manifests/sub")).unwrap();
        fs::write(
            rootfs.join("etc/kubeadm.yml"),
            "kind: ClusterConfiguration\n",
        )
        .unwrap();
        fs::write(rootfs.join("manifests/a.yaml"), "a: 1\n").unwrap();
        fs::write(rootfs.join("manifests/b.yml"), "b: 2\n").unwrap();
        fs::write(rootfs.join("manifests/notes.txt"), "no\n").unwrap();
        fs::write(rootfs.join("manifests/sub/deep.yaml"), "deep\n").unwrap();
        (dir, rootfs)
    }

    fn data(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("data")
    }

    #[test]
    fn reads_files_and_the_yaml_of_directories() {
        let (dir, _) = cluster();
        let got = read_files(
            &data(&dir),
            &name("c1"),
            &["etc/kubeadm.yml".into(), "./etc/missing.yaml".into()],
            &["manifests/".into(), "plugins".into(), "etc".into()],
        )
        .unwrap();
        let names: Vec<(&str, Option<&[u8]>)> = got
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "etc/kubeadm.yml",
                    Some(&b"kind: ClusterConfiguration\n"[..])
                ),
                ("./etc/missing.yaml", None),
                ("manifests/a.yaml", Some(&b"a: 1\n"[..])),
                ("manifests/b.yml", Some(&b"b: 2\n"[..])),
            ]
        );
    }

    #[test]
    fn paths_outside_the_rootfs_are_refused() {
        let (dir, rootfs) = cluster();
        let outside = dir.path().join("secret");
        fs::write(&outside, "secret\n").unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc/escape.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.path(), rootfs.join("up")).unwrap();
        std::os::unix::fs::symlink("kubeadm.yml", rootfs.join("etc/inside.yml")).unwrap();
        let read = |p: &str| read_files(&data(&dir), &name("c1"), &[p.into()], &[]);
        for bad in [
            "/etc/passwd",
            "../secret",
            "etc/../../secret",
            "etc/escape.yaml",
            "up/secret",
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("refusing rootfs path"), "{bad}: {err}");
        }
        // A directory listing meeting an escaping link fails too.
        let err = read_files(&data(&dir), &name("c1"), &[], &["etc".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the rootfs"), "{err}");
        // A symlink resolving inside is read.
        let got = read("etc/inside.yml").unwrap();
        assert_eq!(
            got[0].1.as_deref(),
            Some(&b"kind: ClusterConfiguration\n"[..])
        );

        let write = |p: &str| write_files(&data(&dir), &name("c1"), &[(p.into(), b"x".to_vec())]);
        for bad in ["/etc/x", "../x", "up/x", ""] {
            let err = write(bad).unwrap_err().to_string();
            assert!(err.contains("refusing rootfs path"), "{bad}: {err}");
        }
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
        assert!(!dir.path().join("x").exists());
        // A symlink at the file's own path is replaced, not followed.
        write("etc/escape.yaml").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
        assert_eq!(fs::read(rootfs.join("etc/escape.yaml")).unwrap(), b"x");
    }

    #[test]
    fn a_missing_rootfs_or_a_bad_cluster_name_is_an_error() {
        let (dir, _) = cluster();
        let err = read_files(&data(&dir), &name("c2"), &["etc/kubeadm.yml".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster c2 has no rootfs"), "{err}");
        // A name that cannot name a directory is refused where it enters.
        let err = ClusterName::parse("../c1").unwrap_err().to_string();
        assert!(err.contains("cluster name"), "{err}");
    }

    #[test]
    fn an_answer_too_large_for_one_frame_is_refused() {
        let (dir, rootfs) = cluster();
        let half = vec![b'x'; (READ_ANSWER_LIMIT / 2 + 1) as usize];
        fs::write(rootfs.join("etc/one.yaml"), &half).unwrap();
        fs::write(rootfs.join("etc/two.yaml"), &half).unwrap();
        read_files(&data(&dir), &name("c1"), &["etc/one.yaml".into()], &[]).unwrap();
        let err = read_files(&data(&dir), &name("c1"), &[], &["etc".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("etc/two.yaml") && err.contains("fewer files"),
            "{err}"
        );
    }

    #[test]
    fn writes_create_parents_and_replace_atomically_keeping_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, rootfs) = cluster();
        fs::set_permissions(
            rootfs.join("etc/kubeadm.yml"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let n = write_files(
            &data(&dir),
            &name("c1"),
            &[
                (
                    "etc/kubeadm.yml".into(),
                    b"kind: InitConfiguration\n".to_vec(),
                ),
                ("etc/new/dir/config.yaml".into(), b"new\n".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            fs::read_to_string(rootfs.join("etc/kubeadm.yml")).unwrap(),
            "kind: InitConfiguration\n"
        );
        let mode = fs::metadata(rootfs.join("etc/kubeadm.yml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(rootfs.join("etc/new/dir/config.yaml")).unwrap(),
            "new\n"
        );
        let leftovers: Vec<_> = fs::read_dir(rootfs.join("etc"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("seaport-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // One refused path: nothing written.
        let err = write_files(
            &data(&dir),
            &name("c1"),
            &[
                ("etc/first.yaml".into(), b"1".to_vec()),
                ("../second.yaml".into(), b"2".to_vec()),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
        assert!(!rootfs.join("etc/first.yaml").exists());
    }
}
