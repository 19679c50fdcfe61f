//! The one-file offline bundle (`seaport save --bundle -o site.tar IMAGE...`):
//! everything a site with no registry or Internet access needs, in one tar.
//!
//! ```text
//! seaport-bundle/README.md                       what to do, step by step
//! seaport-bundle/install.sh                      installs binaries, units, coordinator; loads images
//! seaport-bundle/bin/seaport                     the CLI and coordinator
//! seaport-bundle/bin/seaport-agent               the agent (served to hosts by the bootstrap endpoint)
//! seaport-bundle/systemd/seaport-coordinator.service
//! seaport-bundle/systemd/seaport-agent.service
//! seaport-bundle/images.tar                      the images, one OCI archive (`seaport load`)
//! seaport-bundle/SHA256SUMS                      digests of all of the above
//! ```
//!
//! Entries have normalized headers (owner root, fixed time). The bundle is
//! written to a temporary file beside the output and renamed into place, so
//! a failure leaves no partial bundle. Layers are already zstd: the tar is
//! not compressed again.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use seaport_rootfs::archive::{self, ArchiveError};
use seaport_rootfs::store::Store;

/// The directory every bundle entry sits under.
pub const BUNDLE_DIR: &str = "seaport-bundle";

const README: &str = include_str!("../../packaging/bundle/README.md");
const INSTALL: &str = include_str!("../../packaging/bundle/install.sh");
const COORDINATOR_UNIT: &str = include_str!("../../packaging/systemd/seaport-coordinator.service");
const AGENT_UNIT: &str = include_str!("../../packaging/systemd/seaport-agent.service");

/// Errors writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("saving the images: {0}")]
    Images(#[from] ArchiveError),
    #[error("could not read {what} {path}: {source}; build it (packaging/build-static.sh) or name it with --{flag}")]
    Binary {
        what: &'static str,
        flag: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("could not write the bundle {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// The binaries a bundle carries.
#[derive(Debug, Clone)]
pub struct BundleBinaries {
    pub seaport: PathBuf,
    pub agent: PathBuf,
}

impl BundleBinaries {
    /// The running `seaport` and the `seaport-agent` beside it.
    pub fn beside_current_exe() -> BundleBinaries {
        let exe =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/seaport"));
        let agent = exe
            .parent()
            .map(|d| d.join("seaport-agent"))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/seaport-agent"));
        BundleBinaries {
            seaport: exe,
            agent,
        }
    }
}

/// What went into a bundle.
#[derive(Debug, Clone)]
pub struct BundleReport {
    pub images: Vec<String>,
    /// (path inside the bundle, sha256) of every file.
    pub files: Vec<(String, String)>,
    pub size: u64,
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Writes the bundle of `names` from `store` to `out`.
pub fn write(
    store: &Store,
    names: &[String],
    bins: &BundleBinaries,
    out: &Path,
) -> Result<BundleReport, BundleError> {
    let werr = |source: io::Error| BundleError::Write {
        path: out.display().to_string(),
        source,
    };
    for (what, flag, path) in [
        ("the seaport binary", "seaport-binary", &bins.seaport),
        ("the seaport-agent binary", "agent-binary", &bins.agent),
    ] {
        if let Err(source) = std::fs::metadata(path).and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(io::Error::other("not a file"))
            }
        }) {
            return Err(BundleError::Binary {
                what,
                flag,
                path: path.display().to_string(),
                source,
            });
        }
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The images archive first, beside the output (same filesystem, and
    // removed with the temporary directory whatever happens).
    let work = tempfile::Builder::new()
        .prefix(".seaport-bundle-")
        .tempdir_in(dir)
        .map_err(werr)?;
    let images_path = work.path().join("images.tar");
    let images = archive::save(store, names, &images_path)?;

    let mut files: Vec<(String, PathBuf, u32)> = vec![
        ("bin/seaport".into(), bins.seaport.clone(), 0o755),
        ("bin/seaport-agent".into(), bins.agent.clone(), 0o755),
        ("images.tar".into(), images_path, 0o644),
    ];
    for (name, text, mode) in [
        ("README.md", README, 0o644),
        ("install.sh", INSTALL, 0o755),
        (
            "systemd/seaport-coordinator.service",
            COORDINATOR_UNIT,
            0o644,
        ),
        ("systemd/seaport-agent.service", AGENT_UNIT, 0o644),
    ] {
        let p = work.path().join(name.replace('/', "_"));
        std::fs::write(&p, text).map_err(werr)?;
        files.push((name.to_string(), p, mode));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let mut sums = Vec::new();
    for (name, path, _) in &files {
        let sha = sha256_file(path).map_err(|source| BundleError::Write {
            path: path.display().to_string(),
            source,
        })?;
        sums.push((name.clone(), sha));
    }
    let sums_text: String = sums.iter().map(|(n, s)| format!("{s}  {n}\n")).collect();

    let tmp = tempfile::Builder::new()
        .prefix(".seaport-bundle-")
        .suffix(".tar.tmp")
        .tempfile_in(dir)
        .map_err(werr)?;
    {
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        let mut dir_header = tar::Header::new_gnu();
        dir_header.set_entry_type(tar::EntryType::Directory);
        dir_header.set_mode(0o755);
        dir_header.set_size(0);
        dir_header.set_mtime(0);
        for d in ["", "bin/", "systemd/"] {
            tar.append_data(
                &mut dir_header.clone(),
                format!("{BUNDLE_DIR}/{d}"),
                io::empty(),
            )
            .map_err(werr)?;
        }
        for (name, path, mode) in &files {
            let f = File::open(path).map_err(werr)?;
            let len = f.metadata().map_err(werr)?.len();
            tar.append_data(&mut header(len, *mode), format!("{BUNDLE_DIR}/{name}"), f)
                .map_err(werr)?;
        }
        tar.append_data(
            &mut header(sums_text.len() as u64, 0o644),
            format!("{BUNDLE_DIR}/SHA256SUMS"),
            sums_text.as_bytes(),
        )
        .map_err(werr)?;
        let mut w = tar.into_inner().map_err(werr)?;
        w.flush().map_err(werr)?;
    }
    tmp.as_file().sync_all().map_err(werr)?;
    let size = tmp.as_file().metadata().map_err(werr)?.len();
    tmp.persist(out).map_err(|e| werr(e.error))?;
    Ok(BundleReport {
        images,
        files: sums,
        size,
    })
}
