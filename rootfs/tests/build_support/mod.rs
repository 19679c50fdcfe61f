//! Helpers of the build tests: a context and a store in a temporary
//! directory, builds through `seaport_rootfs::build::build` (what
//! `seaport build` calls), and the merged rootfs of an image.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use seaport_rootfs::build::{build, BuildError, BuildOptions};
use seaport_rootfs::store::Store;
use seaport_shared::safetar;

pub(crate) struct Ctx {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ctx: PathBuf,
    pub store: Store,
}

pub(crate) fn setup() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let store = Store::open(&root).unwrap();
    Ctx {
        _dir: dir,
        root,
        ctx,
        store,
    }
}

impl Ctx {
    pub(crate) fn file(&self, rel: &str, content: &str) {
        let p = self.ctx.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    pub(crate) fn build(
        &self,
        kubefile: &str,
        tag: &str,
    ) -> Result<seaport_rootfs::build::BuildReport, BuildError> {
        self.build_with(kubefile, tag, |_| {})
    }

    pub(crate) fn build_with<'a>(
        &self,
        kubefile: &str,
        tag: &str,
        f: impl FnOnce(&mut BuildOptions<'a>),
    ) -> Result<seaport_rootfs::build::BuildReport, BuildError> {
        let kf = self
            .ctx
            .parent()
            .unwrap()
            .join(format!("Kubefile.{}", tag.replace([':', '/'], "_")));
        fs::write(&kf, kubefile).unwrap();
        let mut opts: BuildOptions<'a> = BuildOptions::new(&kf, &self.ctx, tag);
        opts.platform = "linux/amd64".into();
        f(&mut opts);
        build(&self.store, &opts)
    }

    /// The merged rootfs of an image, unpacked into a fresh directory.
    pub(crate) fn rootfs(&self, name: &str) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        let image = self.store.resolve(name).unwrap();
        for l in &image.manifest.layers {
            let blob = self.store.open_blob(&l.digest).unwrap();
            let dec = zstd::stream::Decoder::new(blob).unwrap();
            safetar::unpack(dec, out.path(), &Default::default()).unwrap();
        }
        out
    }

    pub(crate) fn store_listing(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&self.root).sort_by_file_name() {
            let e = e.unwrap();
            let content = if e.file_type().is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.push((e.path().to_path_buf(), content));
        }
        out
    }
}

pub(crate) fn read(dir: &Path, rel: &str) -> String {
    fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file (and symlink) under `dir`, relative, with its content (a
/// symlink as `-> TARGET`); directories are implied by the paths.
pub(crate) fn files(dir: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let v = if e.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).unwrap().display())
            } else {
                fs::read_to_string(e.path()).unwrap()
            };
            (rel, v)
        })
        .collect()
}
