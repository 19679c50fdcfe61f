//! The test cluster image: `rootfs/base` plus what the lab can run for real,
//! taken from the machine (Debian's containerd, runc, ctr and
//! containerd-shim-runc-v2 as `cri/containerd.tar.gz`, Debian's
//! docker-registry as `cri/docker-registry`), the kubeadm and kubectl
//! recording doubles `tests/fixtures/kubeadm-double` and
//! `tests/fixtures/kubectl-double` as `bin/kubeadm` and `bin/kubectl`, their
//! helper `seaport-kube-double` (crate `tests/doubles`: the cluster CA, the
//! API server stand-in on every master) as `bin/seaport-kube-double`, a
//! kubelet stand-in that only prints its arguments as `bin/kubelet` (kubeadm
//! would start it), one container image in `images/` (an OCI archive made
//! here) and one named in `manifests/imageList`, cached at build time from a
//! docker-registry started on loopback for the build.
//!
//! `seaport build` makes it in a temporary Seaport root, caching the listed
//! image; the result is an OCI image layout (`<root>/images`) and a tar of it
//! to copy into hosts.
//!
//! Its docker variant ([`TestRuntime::Docker`], [`DOCKER_IMAGE_NAME`]) ships
//! docker instead, as sealer's images before 0.9 do: Debian's `docker.io`
//! binaries (dockerd, docker, docker-proxy, docker-init) with containerd,
//! containerd-shim-runc-v2, runc and ctr at the top of `cri/docker.tar.gz`,
//! and the base's `etc/daemon.json` with `"iptables": false` added: lab
//! hosts have no iptables (real Kubernetes hosts do), and dockerd with its
//! default `iptables: true` refuses to start without it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use seaport_rootfs::oci::{
    Descriptor, ImageConfig, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_MANIFEST,
};
use seaport_rootfs::registry::client::{ClientOptions, RegistryClient};
use seaport_shared::digest::Digest;

use crate::seaport::workspace_root;

/// The image's name in the layout.
pub const IMAGE_NAME: &str = "seaport-test:v1";
/// The docker variant's name.
pub const DOCKER_IMAGE_NAME: &str = "seaport-test-docker:v1";
/// The image in `images/`, as pulled through the local registry.
pub const BUNDLED_IMAGE: &str = "docker.io/library/seaport-bundled:1.0";
/// The repository and tag of the image named in `manifests/imageList`.
pub const LISTED_REPO: &str = "library/seaport-listed";
/// Its tag.
pub const LISTED_TAG: &str = "1.0";

/// Machine files the image needs: (source, destination in the rootfs).
const CRI_FILES: &[(&str, &str)] = &[
    ("/usr/bin/containerd", "bin/containerd"),
    (
        "/usr/bin/containerd-shim-runc-v2",
        "bin/containerd-shim-runc-v2",
    ),
    ("/usr/bin/ctr", "bin/ctr"),
    ("/usr/sbin/runc", "bin/runc"),
];
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// Machine files of the docker variant: (source, name in `cri/docker.tar.gz`).
/// `/usr/bin/docker` is the docker.io package's client (a `docker` earlier
/// on PATH may be another one).
const DOCKER_FILES: &[(&str, &str)] = &[
    ("/usr/sbin/dockerd", "dockerd"),
    ("/usr/bin/docker", "docker"),
    ("/usr/sbin/docker-proxy", "docker-proxy"),
    ("/usr/bin/docker-init", "docker-init"),
    ("/usr/bin/containerd", "containerd"),
    (
        "/usr/bin/containerd-shim-runc-v2",
        "containerd-shim-runc-v2",
    ),
    ("/usr/bin/ctr", "ctr"),
    ("/usr/sbin/runc", "runc"),
];

/// The container runtime a test image ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestRuntime {
    /// `cri/containerd.tar.gz` ([`IMAGE_NAME`]).
    Containerd,
    /// `cri/docker.tar.gz` ([`DOCKER_IMAGE_NAME`]).
    Docker,
}

impl TestRuntime {
    /// The image's name.
    pub fn image_name(self) -> &'static str {
        match self {
            TestRuntime::Containerd => IMAGE_NAME,
            TestRuntime::Docker => DOCKER_IMAGE_NAME,
        }
    }
}

/// Errors building the test image.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    /// A step failed.
    #[error("building the test image: {0}")]
    Step(String),
}

fn step<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> TestImageError + '_ {
    move |e| TestImageError::Step(format!("{what}: {e}"))
}

/// A built test image.
#[derive(Debug)]
pub struct TestImage {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// A tar of the layout (index.json, oci-layout, blobs/).
    pub layout_tar: PathBuf,
    /// The manifest digest.
    pub digest: Digest,
    /// The domain the listed image came from (`127.0.0.1:PORT`).
    pub listed_domain: String,
    /// The image's name in the layout.
    pub name: String,
}

/// Panics, saying what to install, unless the lab runs here and the test
/// image's machine files are present: the start of every lab test that
/// installs the test image.
pub fn require_machine() {
    if let Err(e) = crate::lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let missing = missing_machine_files();
    assert!(
        missing.is_empty(),
        "install Debian's containerd, runc and docker-registry: missing {missing:?}"
    );
}

/// What a lab test that installs the test image starts from.
#[derive(Debug)]
pub struct Prepared {
    /// The built binaries.
    pub bins: crate::seaport::Binaries,
    /// The test's temporary directory (removed when dropped).
    pub tmp: tempfile::TempDir,
    /// The test image.
    pub image: TestImage,
    /// The store the image was built in: the root a coordinator serves from.
    pub root: PathBuf,
}

/// Checks the machine ([`require_machine`]), builds the binaries, and the
/// test image into a fresh store in a temporary directory.
pub fn prepare() -> Prepared {
    require_machine();
    let bins =
        crate::seaport::Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let image = build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    let root = tmp.path().join("seaport-root");
    Prepared {
        bins,
        tmp,
        image,
        root,
    }
}

/// [`prepare`] for the test image shipping `runtime`; with docker, docker's
/// files must be on the machine too.
pub fn prepare_with(runtime: TestRuntime) -> Prepared {
    require_machine();
    if runtime == TestRuntime::Docker {
        let missing = missing_docker_files();
        assert!(
            missing.is_empty(),
            "install Debian's docker.io, containerd, runc and docker-registry: missing {missing:?}"
        );
    }
    let bins =
        crate::seaport::Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().join("seaport-root");
    let image = build_test_image_with(tmp.path(), &bins.seaport, &root, runtime)
        .expect("build the test image");
    Prepared {
        bins,
        tmp,
        image,
        root,
    }
}

/// The Debian packages whose files the image copies.
pub fn missing_machine_files() -> Vec<&'static str> {
    CRI_FILES
        .iter()
        .map(|(s, _)| *s)
        .chain([REGISTRY_BINARY])
        .filter(|p| !Path::new(p).is_file())
        .collect()
}

/// The machine files the docker variant copies that are missing.
pub fn missing_docker_files() -> Vec<&'static str> {
    DOCKER_FILES
        .iter()
        .map(|(s, _)| *s)
        .chain([REGISTRY_BINARY])
        .filter(|p| !Path::new(p).is_file())
        .collect()
}

/// Builds the image under `work` (a temporary directory) with the `seaport`
/// binary at `seaport`, into the store `work/seaport-root`.
pub fn build_test_image(work: &Path, seaport: &Path) -> Result<TestImage, TestImageError> {
    build_test_image_into(work, seaport, &work.join("seaport-root"))
}

/// As [`build_test_image`], into the image store at `root`.
pub fn build_test_image_into(
    work: &Path,
    seaport: &Path,
    root: &Path,
) -> Result<TestImage, TestImageError> {
    build_test_image_with(work, seaport, root, TestRuntime::Containerd)
}

/// The test image with `runtime` in `cri/`, into the image store at `root`.
pub fn build_test_image_with(
    work: &Path,
    seaport: &Path,
    root: &Path,
    runtime: TestRuntime,
) -> Result<TestImage, TestImageError> {
    build_test_image_as(work, seaport, root, runtime.image_name(), None, runtime)
}

/// As [`build_test_image_with`], named `name`, for `platforms` (the
/// `--platform` value of `seaport build`; several, comma-separated, make a
/// multi-platform image; the binaries inside are this machine's for every
/// platform).
pub fn build_test_image_as(
    work: &Path,
    seaport: &Path,
    root: &Path,
    name: &str,
    platforms: Option<&str>,
    runtime: TestRuntime,
) -> Result<TestImage, TestImageError> {
    build(work, seaport, root, name, platforms, runtime, None)
}

/// The test image for Kubernetes `version` (`v1.20.4`): `Metadata`,
/// `KUBEVERSION` and the ClusterConfiguration's `kubernetesVersion` say it,
/// and its kubeadm double stands for that release (an upgrade's image).
pub fn build_test_image_at_version(
    work: &Path,
    seaport: &Path,
    root: &Path,
    name: &str,
    version: &str,
) -> Result<TestImage, TestImageError> {
    build(
        work,
        seaport,
        root,
        name,
        None,
        TestRuntime::Containerd,
        Some(version),
    )
}

fn build(
    work: &Path,
    seaport: &Path,
    root: &Path,
    name: &str,
    platforms: Option<&str>,
    runtime: TestRuntime,
    version: Option<&str>,
) -> Result<TestImage, TestImageError> {
    let (missing, packages) = match runtime {
        TestRuntime::Containerd => (missing_machine_files(), "containerd, runc"),
        TestRuntime::Docker => (missing_docker_files(), "docker.io, containerd, runc"),
    };
    if !missing.is_empty() {
        return Err(TestImageError::Step(format!(
            "{} missing on this machine: install Debian's {packages} and docker-registry",
            missing.join(", ")
        )));
    }
    fs::create_dir_all(work).map_err(step("creating the work directory"))?;
    let context = work.join("context");
    let status = Command::new("cp")
        .arg("-a")
        .arg(workspace_root().join("rootfs/base"))
        .arg(&context)
        .status()
        .map_err(step("copying rootfs/base"))?;
    if !status.success() {
        return Err(TestImageError::Step("cp -a rootfs/base failed".into()));
    }
    if let Some(v) = version {
        set_kube_version(&context, v)?;
    }
    // cri/: the runtime as sealer images ship it, plus the registry binary.
    match runtime {
        TestRuntime::Containerd => {
            let staging = work.join("cri-staging");
            fs::create_dir_all(staging.join("bin")).map_err(step("creating the cri staging"))?;
            for (src, dest) in CRI_FILES {
                fs::copy(src, staging.join(dest)).map_err(step(src))?;
            }
            tar_gz(&context.join("cri/containerd.tar.gz"), &staging, &["bin"])?;
        }
        TestRuntime::Docker => {
            let staging = work.join("cri-staging");
            fs::create_dir_all(&staging).map_err(step("creating the cri staging"))?;
            let mut names = Vec::new();
            for (src, name) in DOCKER_FILES {
                fs::copy(src, staging.join(name)).map_err(step(src))?;
                names.push(*name);
            }
            tar_gz(&context.join("cri/docker.tar.gz"), &staging, &names)?;
            lab_daemon_json(&context.join("etc/daemon.json"))?;
        }
    }
    fs::copy(REGISTRY_BINARY, context.join("cri/docker-registry"))
        .map_err(step(REGISTRY_BINARY))?;
    // bin/: the kubeadm double and stand-ins init-kube.sh looks for.
    fs::copy(
        workspace_root().join("tests/fixtures/kubeadm-double"),
        context.join("bin/kubeadm"),
    )
    .map_err(step("copying the kubeadm double"))?;
    stamp_kubeadm_version(&context)?;
    fs::copy(
        workspace_root().join("tests/fixtures/kubectl-double"),
        context.join("bin/kubectl"),
    )
    .map_err(step("copying the kubectl double"))?;
    copy_kube_double(seaport, &context.join("bin").join(KUBE_DOUBLE_BIN))?;
    write_mode(
        &context.join("bin/kubelet"),
        b"#!/bin/sh\n# kubelet stand-in of the test image\necho \"kubelet (test stand-in) $*\"\n",
        0o755,
    )?;
    for f in [
        "bin/kubeadm",
        "bin/kubectl",
        "bin/seaport-kube-double",
        "cri/docker-registry",
    ] {
        set_mode(&context.join(f), 0o755)?;
    }
    // images/: one OCI archive.
    let oci = work.join("bundled-oci");
    let bundled = make_oci_layout(&oci, BUNDLED_IMAGE, b"bundled through images/\n")?;
    tar_dir(&oci, &context.join("images/seaport-bundled.tar"))?;
    let _ = bundled;
    // manifests/imageList: an image served by a registry on loopback.
    let (registry, domain) = LoopbackRegistry::start(&work.join("source-registry"))?;
    let listed = work.join("listed-oci");
    make_oci_layout(&listed, "unused", b"cached from manifests/imageList\n")?;
    push_layout(&listed, &domain, LISTED_REPO, LISTED_TAG)?;
    let mut list = fs::read_to_string(context.join("manifests/imageList")).unwrap_or_default();
    list.push_str(&format!("{domain}/{LISTED_REPO}:{LISTED_TAG}\n"));
    fs::write(context.join("manifests/imageList"), list).map_err(step("writing imageList"))?;
    // `seaport build`, caching the listed image from the loopback registry.
    let mut build = Command::new(seaport);
    build
        .env("SEAPORT_ROOT", root)
        .args(["build", "-t", name, "--insecure-registry", &domain]);
    if let Some(p) = platforms {
        build.args(["--platform", p]);
    }
    let out = build
        .arg(&context)
        .stdin(Stdio::null())
        .output()
        .map_err(step("running seaport build"))?;
    if !out.status.success() {
        return Err(TestImageError::Step(format!(
            "seaport build failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    drop(registry);
    let store = seaport_rootfs::store::Store::open(root).map_err(step("opening the store"))?;
    let resolved = store
        .lookup(name)
        .map_err(step("finding the built image"))?;
    let layout = store.dir().to_path_buf();
    let layout_tar = work.join("image-layout.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&layout_tar)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .map_err(step("tar of the layout"))?;
    if !status.success() {
        return Err(TestImageError::Step("tar of the layout failed".into()));
    }
    Ok(TestImage {
        layout,
        layout_tar,
        digest: resolved.manifest.digest,
        listed_domain: domain,
        name: name.to_string(),
    })
}

/// Makes the rootfs in `context` one of Kubernetes `version`: `Metadata`'s
/// `version` and `kubeVersion`, the Kubefile's `KUBEVERSION`, the
/// ClusterConfiguration's `kubernetesVersion` in `etc/kubeadm.yml`.
pub fn set_kube_version(context: &Path, version: &str) -> Result<(), TestImageError> {
    let meta_path = context.join("Metadata");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).map_err(step("reading Metadata"))?)
            .map_err(step("parsing Metadata"))?;
    meta["version"] = version.into();
    meta["kubeVersion"] = version.into();
    let text = serde_json::to_string_pretty(&meta).expect("JSON serializes") + "\n";
    fs::write(&meta_path, text).map_err(step("writing Metadata"))?;
    let edit = |file: &str, prefix: &str| -> Result<(), TestImageError> {
        let path = context.join(file);
        let text = fs::read_to_string(&path).map_err(step(file))?;
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(prefix) {
                    found = true;
                    format!("{prefix}{version}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        if !found {
            return Err(TestImageError::Step(format!(
                "{file} has no line {prefix}..."
            )));
        }
        fs::write(&path, out.join("\n") + "\n").map_err(step(file))
    };
    edit("Kubefile", "KUBEVERSION ")?;
    edit("etc/kubeadm.yml", "kubernetesVersion: ")
}

/// Writes the image's Kubernetes version (`Metadata`'s `version`) into the
/// kubeadm double, which stands for the kubeadm of that release.
fn stamp_kubeadm_version(context: &Path) -> Result<(), TestImageError> {
    let meta: serde_json::Value = serde_json::from_slice(
        &fs::read(context.join("Metadata")).map_err(step("reading Metadata"))?,
    )
    .map_err(step("parsing Metadata"))?;
    let version = meta["version"]
        .as_str()
        .ok_or_else(|| TestImageError::Step("Metadata has no version".into()))?;
    let script = context.join("bin/kubeadm");
    let text = fs::read_to_string(&script).map_err(step("reading the kubeadm double"))?;
    fs::write(&script, text.replace("@KUBEADM_VERSION@", version))
        .map_err(step("writing the kubeadm double"))
}

/// The helper of the kubeadm double (crate `tests/doubles`), built beside
/// `seaport`; installed on hosts from the image's `bin/`.
pub const KUBE_DOUBLE_BIN: &str = "seaport-kube-double";

/// Copies the helper built beside `seaport` to `dest`, without its debug
/// information when `strip` is there (a quarter of the size to ship).
fn copy_kube_double(seaport: &Path, dest: &Path) -> Result<(), TestImageError> {
    let src = seaport.with_file_name(KUBE_DOUBLE_BIN);
    if !src.is_file() {
        return Err(TestImageError::Step(format!(
            "{} is missing: build it with `cargo build -p seaport-kube-double`",
            src.display()
        )));
    }
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(dest)
        .arg(&src)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(&src, dest).map_err(step("copying seaport-kube-double"))?;
    }
    Ok(())
}

/// `tar -czf out -C dir names...`.
fn tar_gz(out: &Path, dir: &Path, names: &[&str]) -> Result<(), TestImageError> {
    let status = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(names)
        .status()
        .map_err(step("running tar czf"))?;
    if !status.success() {
        return Err(TestImageError::Step(format!(
            "tar czf {} failed",
            out.display()
        )));
    }
    Ok(())
}

/// The base's daemon.json with what dockerd needs to start in a lab host:
/// no iptables (the hosts have none).
fn lab_daemon_json(path: &Path) -> Result<(), TestImageError> {
    let text = fs::read_to_string(path).map_err(step("reading etc/daemon.json"))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(step("parsing etc/daemon.json"))?;
    v["iptables"] = serde_json::Value::Bool(false);
    let text = serde_json::to_string_pretty(&v).expect("JSON serializes") + "\n";
    fs::write(path, text).map_err(step("writing etc/daemon.json"))
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TestImageError> {
    fs::write(path, bytes).map_err(step("writing a file of the image"))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(step("chmod"))
}

/// A one-layer image (a text file `/hello.txt`) as an OCI layout in `dir`.
pub fn make_oci_layout(dir: &Path, name: &str, text: &[u8]) -> Result<Digest, TestImageError> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("hello.txt").map_err(step("tar header"))?;
    h.set_mode(0o644);
    h.set_size(text.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, text).map_err(step("tar"))?;
    let layer_bytes = b.into_inner().map_err(step("tar"))?;
    make_oci_layout_with_layer(dir, name, &layer_bytes)
}

/// A layer that tries to write outside the directory it is unpacked into:
/// `../seaport-escape.txt`, then a symlink `etc-link -> /etc` and a file
/// through it, `etc-link/seaport-escape.txt`.
pub fn escaping_layer() -> Result<Vec<u8>, TestImageError> {
    let mut b = tar::Builder::new(Vec::new());
    let text = b"written outside the rootfs\n";
    // The tar crate refuses to build `..` paths, so the name is set raw.
    let mut h = tar::Header::new_gnu();
    let name = b"../seaport-escape.txt";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_size(text.len() as u64);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, &text[..]).map_err(step("tar"))?;
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_path("etc-link").map_err(step("tar header"))?;
    l.set_link_name("/etc").map_err(step("tar header"))?;
    l.set_mode(0o777);
    l.set_size(0);
    l.set_mtime(0);
    l.set_cksum();
    b.append(&l, &[][..]).map_err(step("tar"))?;
    let mut f = tar::Header::new_gnu();
    f.set_path("etc-link/seaport-escape.txt")
        .map_err(step("tar header"))?;
    f.set_mode(0o644);
    f.set_size(text.len() as u64);
    f.set_mtime(0);
    f.set_cksum();
    b.append(&f, &text[..]).map_err(step("tar"))?;
    b.into_inner().map_err(step("tar"))
}

/// A layer that tries to change modes on the host through symlinks: the
/// directories `x` (mode 04755) and `y` (mode 0777), then the same names
/// as symlinks to `/usr/bin/bash` and `/etc`. Directory modes are applied
/// at the end of a layer, by then at paths that are links out of the root.
pub fn chmod_through_symlink_layer() -> Result<Vec<u8>, TestImageError> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode) in [("x/", 0o4755), ("y/", 0o777)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path(name).map_err(step("tar header"))?;
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, &[][..]).map_err(step("tar"))?;
    }
    for (name, target) in [("x", "/usr/bin/bash"), ("y", "/etc")] {
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_path(name).map_err(step("tar header"))?;
        l.set_link_name(target).map_err(step("tar header"))?;
        l.set_mode(0o777);
        l.set_size(0);
        l.set_mtime(0);
        l.set_cksum();
        b.append(&l, &[][..]).map_err(step("tar"))?;
    }
    b.into_inner().map_err(step("tar"))
}

/// A one-layer image of `layer_bytes` (an uncompressed tar) as an OCI
/// layout in `dir`.
pub fn make_oci_layout_with_layer(
    dir: &Path,
    name: &str,
    layer_bytes: &[u8],
) -> Result<Digest, TestImageError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(step("creating an OCI layout"))?;
    let put = |bytes: &[u8]| -> Result<Descriptor, TestImageError> {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).map_err(step("writing a blob"))?;
        Ok(Descriptor {
            media_type: String::new(),
            digest: d,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        })
    };
    let mut layer = put(layer_bytes)?;
    layer.media_type = MEDIA_TYPE_LAYER_TAR.into();
    let config = ImageConfig {
        architecture: seaport_rootfs::registry::platform::host_platform().architecture,
        os: "linux".into(),
        rootfs: seaport_rootfs::oci::RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.digest],
        },
        ..ImageConfig::default()
    };
    let mut cdesc = put(&serde_json::to_vec(&config).expect("serializes"))?;
    cdesc.media_type = MEDIA_TYPE_CONFIG.into();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: cdesc,
        layers: vec![layer],
        annotations: BTreeMap::new(),
    };
    let mut mdesc = put(&serde_json::to_vec(&manifest).expect("serializes"))?;
    mdesc.media_type = MEDIA_TYPE_MANIFEST.into();
    mdesc
        .annotations
        .insert(ANNOTATION_REF_NAME.into(), name.to_string());
    let digest = mdesc.digest;
    let mut index = Index::new();
    index.manifests.push(mdesc);
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("serializes"),
    )
    .map_err(step("writing index.json"))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(step("writing oci-layout"))?;
    Ok(digest)
}

/// A tar of the directory `dir` (an OCI archive when it is a layout).
pub fn tar_dir(dir: &Path, out: &Path) -> Result<(), TestImageError> {
    let f = fs::File::create(out).map_err(step("creating an archive"))?;
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir)
        .map_err(step("archiving an OCI layout"))?;
    b.into_inner()
        .and_then(|mut f| f.flush())
        .map_err(step("archiving an OCI layout"))
}

fn push_layout(dir: &Path, registry: &str, repo: &str, tag: &str) -> Result<(), TestImageError> {
    let opts = ClientOptions {
        insecure: true,
        progress: false,
        ..ClientOptions::default()
    };
    let client = RegistryClient::new(registry, &opts, None).map_err(step("registry client"))?;
    let index: Index = serde_json::from_slice(
        &fs::read(dir.join("index.json")).map_err(step("reading index.json"))?,
    )
    .map_err(step("index.json"))?;
    let desc = &index.manifests[0];
    let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let mbytes = fs::read(blob(&desc.digest)).map_err(step("reading the manifest"))?;
    let m: Manifest = serde_json::from_slice(&mbytes).map_err(step("manifest"))?;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        client
            .push_blob(repo, &d.digest, d.size, &blob(&d.digest))
            .map_err(step("pushing a blob"))?;
    }
    client
        .put_manifest(repo, tag, MEDIA_TYPE_MANIFEST, &mbytes)
        .map_err(step("pushing the manifest"))?;
    Ok(())
}

fn free_port() -> Result<u16, TestImageError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(step("finding a free port"))?;
    Ok(l.local_addr().map_err(step("finding a free port"))?.port())
}

/// Debian's docker-registry on loopback (plain HTTP), killed by its PID when
/// dropped.
pub struct LoopbackRegistry {
    child: Child,
}

impl LoopbackRegistry {
    /// Starts one on a free port with its storage under `dir`; returns it
    /// and its `127.0.0.1:PORT`.
    pub fn start(dir: &Path) -> Result<(Self, String), TestImageError> {
        let port = free_port()?;
        Ok((Self::start_on(dir, port)?, format!("127.0.0.1:{port}")))
    }

    fn start_on(dir: &Path, port: u16) -> Result<Self, TestImageError> {
        fs::create_dir_all(dir.join("data")).map_err(step("creating the source registry"))?;
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .map_err(step("writing the source registry config"))?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(step("starting docker-registry"))?;
        let reg = LoopbackRegistry { child };
        crate::wait::until(
            "the source registry",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .map_err(step("waiting for docker-registry"))?;
        Ok(reg)
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the image `name` of the OCI layout `layout` to `dest`
/// (`HOST:PORT/REPO:TAG`, plain HTTP) as sealer's published images are:
/// a Docker schema 2 manifest with gzip layers, made by skopeo. skopeo 1.9
/// recompresses zstd layers only between OCI layouts, so it goes through
/// one under `work` first.
pub fn push_docker_v2s2_gzip(
    layout: &Path,
    name: &str,
    work: &Path,
    dest: &str,
) -> Result<(), TestImageError> {
    fs::create_dir_all(work).map_err(step("creating the work directory"))?;
    let gz = work.join("gzip-layout");
    let run = |args: &[String]| -> Result<(), TestImageError> {
        let out = Command::new("skopeo")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(step("running skopeo"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestImageError::Step(format!(
                "skopeo {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    run(&[
        "copy".into(),
        "--dest-compress".into(),
        "--dest-compress-format".into(),
        "gzip".into(),
        format!("oci:{}:{name}", layout.display()),
        format!("oci:{}:v2s2", gz.display()),
    ])?;
    run(&[
        "copy".into(),
        "--format".into(),
        "v2s2".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:v2s2", gz.display()),
        format!("docker://{dest}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rootfs_is_set_to_another_kubernetes_version_everywhere_it_says_one() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("context");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(workspace_root().join("rootfs/base"))
            .arg(&ctx)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        set_kube_version(&ctx, "v1.20.4").unwrap();
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(ctx.join("Metadata")).unwrap()).unwrap();
        assert_eq!(meta["version"], "v1.20.4");
        assert_eq!(meta["kubeVersion"], "v1.20.4");
        let kubefile = fs::read_to_string(ctx.join("Kubefile")).unwrap();
        assert!(
            kubefile.lines().any(|l| l == "KUBEVERSION v1.20.4"),
            "{kubefile}"
        );
        let kubeadm = fs::read_to_string(ctx.join("etc/kubeadm.yml")).unwrap();
        assert!(
            kubeadm.contains("\nkubernetesVersion: v1.20.4\n"),
            "{kubeadm}"
        );
        assert!(!kubeadm.contains("v1.19.8"), "{kubeadm}");
        // The kubeadm double copied in afterwards stands for that release.
        fs::copy(
            workspace_root().join("tests/fixtures/kubeadm-double"),
            ctx.join("bin/kubeadm"),
        )
        .unwrap();
        stamp_kubeadm_version(&ctx).unwrap();
        let double = fs::read_to_string(ctx.join("bin/kubeadm")).unwrap();
        assert!(
            double.contains("KUBEADM_VERSION='v1.20.4'"),
            "stamp missing"
        );
    }
}

/// Where the test image's kubeadm double leaves the cluster CA on a host.
pub const CLUSTER_CA: &str = "/etc/kubernetes/pki/ca.crt";

/// What an API server stand-in answered one request with.
#[derive(Debug, Clone)]
pub struct StandInAnswer {
    /// curl's exit code.
    pub code: i32,
    /// The `X-Seaport-Host` header: which master's stand-in answered.
    pub host: Option<String>,
    /// The body, then curl's stderr.
    pub body: String,
}

/// `curl --cacert CLUSTER_CA URL` on `h` (5 s at most) with `extra` curl
/// arguments, as the test image's API server stand-ins answer it.
pub fn stand_in_request(h: &crate::Host, url: &str, extra: &[&str]) -> StandInAnswer {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-D",
        "-",
        "--cacert",
        CLUSTER_CA,
    ];
    argv.extend(extra);
    argv.push(url);
    match h.exec(&argv) {
        Ok(out) => {
            let (head, body) = out
                .stdout
                .split_once("\r\n\r\n")
                .unwrap_or(("", out.stdout.as_str()));
            let host = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-seaport-host")
                    .then(|| v.trim().to_string())
            });
            StandInAnswer {
                code: out.code,
                host,
                body: format!("{body}{}", out.stderr),
            }
        }
        Err(e) => StandInAnswer {
            code: -1,
            host: None,
            body: e.to_string(),
        },
    }
}

/// `GET https://apiserver.cluster.local:6443/healthz` from `h` (through
/// its balancer on a worker), verified with the cluster CA: the name of
/// the master that answered `ok`, or why not.
pub fn apiserver_healthz(h: &crate::Host) -> Result<String, String> {
    let a = stand_in_request(h, "https://apiserver.cluster.local:6443/healthz", &[]);
    match a.host {
        Some(name) if a.code == 0 && a.body == "ok" => Ok(name),
        host => Err(format!(
            "curl exit {}, host {host:?}, body {:?}",
            a.code, a.body
        )),
    }
}

/// A Clusterfile of cluster `cluster` from `image` with one master and one
/// worker and a `localRegistry` on `sea.hub:5000`, with `registry` (lines
/// indented under `localRegistry`) added.
pub fn registry_clusterfile(
    cluster: &str,
    image: &str,
    master: &str,
    worker: &str,
    registry: &str,
) -> String {
    format!(
        r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: {cluster}
spec:
  image: {image}
  hosts:
  - ips: [{master}]
    roles: [master]
  - ips: [{worker}]
    roles: [node]
  registry:
    localRegistry:
      domain: sea.hub
      port: 5000
{registry}"#
    )
}
