//! Multi-platform images and every layer format, end to end in the store:
//! a 2-platform build checked file by file per platform, FROM a
//! multi-platform base, FROM a Docker schema 2 base with gzip layers (made
//! by hand, and pushed by skopeo to a real docker-registry then pulled),
//! push/pull of an index through docker-registry (checked with `skopeo
//! inspect --raw`), and save/load of an index.

mod registry_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use registry_support::{run_ok, TestRegistry};
use seaport_rootfs::archive;
use seaport_rootfs::build::{build, BuildOptions, ImageCache};
use seaport_rootfs::media;
use seaport_rootfs::oci::{
    Platform, ANNOTATION_PLATFORM, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::platform::parse_platform;
use seaport_rootfs::registry::{pull_image, push_image, ClientOptions, RegistryClient};
use seaport_rootfs::store::{ResolvedImage, Store};
use seaport_shared::digest::Digest;
use seaport_shared::safetar;

/// A sealer 0.9 (basefs) style context: shared files under `rootfs/`, one
/// directory per architecture, an image list.
fn basefs_context(dir: &Path) {
    let files: &[(&str, &str)] = &[
        ("rootfs/etc/kubeadm.yml", "kind: ClusterConfiguration\n"),
        ("rootfs/scripts/init.sh", "#!/bin/sh\necho init\n"),
        ("amd64/bin/kubeadm", "kubeadm for amd64\n"),
        ("amd64/etc/Metadata", "{\"arch\":\"amd64\"}\n"),
        ("arm64/bin/kubeadm", "kubeadm for arm64\n"),
        ("arm64/etc/Metadata", "{\"arch\":\"arm64\"}\n"),
        ("imageList", "busybox:1.36\n"),
    ];
    for (rel, text) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

const BASEFS_KUBEFILE: &str = "FROM scratch\n\
COPY rootfs .\n\
COPY ${ARCH} .\n\
COPY imageList manifests/\n\
LABEL \"cluster.alpha.sealer.io/cluster-runtime-type\"=\"kubernetes\"\n\
RUN echo \"built for $ARCH\" > etc/built-for\n";

/// Records the platform each call was made for, into the layer it adds.
struct PlatformCache;
impl ImageCache for PlatformCache {
    fn cache(
        &self,
        rootfs: &Path,
        out: &Path,
        platform: &Platform,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let list = fs::read_to_string(rootfs.join("manifests/imageList"))?;
        fs::create_dir_all(out.join("registry"))?;
        fs::write(
            out.join("registry/cached-for"),
            format!("{}/{} {list}", platform.os, platform.architecture),
        )?;
        Ok(true)
    }
}

fn build_in(
    store: &Store,
    ctx: &Path,
    kubefile: &str,
    tag: &str,
    platform: &str,
    cache: Option<&dyn ImageCache>,
) -> Result<seaport_rootfs::build::BuildReport, seaport_rootfs::build::BuildError> {
    let kf = ctx
        .parent()
        .unwrap()
        .join(format!("Kubefile.{}", tag.replace([':', '/', '.'], "_")));
    fs::write(&kf, kubefile).unwrap();
    let mut opts = BuildOptions::new(&kf, ctx, tag);
    opts.platform = platform.into();
    opts.image_cache = cache;
    build(store, &opts)
}

/// Every file of an image's merged rootfs, by path, read through the one
/// layer reader.
fn files_of(store: &Store, image: &ResolvedImage) -> BTreeMap<String, String> {
    let out = tempfile::tempdir().unwrap();
    for l in &image.manifest.layers {
        let blob = store.open_blob(&l.digest).unwrap();
        safetar::unpack(
            media::open_layer(l, blob).unwrap(),
            out.path(),
            &Default::default(),
        )
        .unwrap();
    }
    let mut files = BTreeMap::new();
    for e in walkdir::WalkDir::new(out.path()) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(out.path()).unwrap();
            files.insert(
                rel.to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap(),
            );
        }
    }
    files
}

fn platform(p: &str) -> Platform {
    parse_platform(p).unwrap()
}

fn expected_files(arch: &str) -> BTreeMap<String, String> {
    [
        (
            "etc/kubeadm.yml",
            "kind: ClusterConfiguration\n".to_string(),
        ),
        ("scripts/init.sh", "#!/bin/sh\necho init\n".to_string()),
        ("bin/kubeadm", format!("kubeadm for {arch}\n")),
        ("etc/Metadata", format!("{{\"arch\":\"{arch}\"}}\n")),
        ("manifests/imageList", "busybox:1.36\n".to_string()),
        ("etc/built-for", format!("built for {arch}\n")),
        (
            "registry/cached-for",
            format!("linux/{arch} busybox:1.36\n"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn a_two_platform_build_makes_one_image_per_platform_under_one_index() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    basefs_context(&ctx);
    let store = Store::open(&dir.path().join("root")).unwrap();
    let report = build_in(
        &store,
        &ctx,
        BASEFS_KUBEFILE,
        "kubernetes:v1.22.15",
        "linux/amd64,linux/arm64",
        Some(&PlatformCache),
    )
    .unwrap();
    assert_eq!(
        report
            .platforms
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );

    // The name points at an OCI index of the two manifests.
    let entry = store.lookup("kubernetes:v1.22.15").unwrap();
    assert_eq!(entry.manifest.media_type, MEDIA_TYPE_INDEX);
    assert_eq!(entry.manifest.digest, report.digest);
    let index: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&report.digest, "index").unwrap()).unwrap();
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (e, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(e["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(e["platform"]["os"], "linux");
        assert_eq!(e["platform"]["architecture"], arch);
    }

    let image = store.image("kubernetes:v1.22.15").unwrap();
    assert_eq!(image.platforms(), ["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let m = image
            .for_platform(&platform(&format!("linux/{arch}")))
            .unwrap();
        assert_eq!(m.config.architecture, arch);
        assert_eq!(
            m.manifest.annotations[ANNOTATION_PLATFORM],
            format!("linux/{arch}")
        );
        assert_eq!(files_of(&store, m), expected_files(arch), "{arch}");
    }
    // The shared layer (COPY rootfs .) is the same blob on both platforms.
    let amd = image.for_platform(&platform("linux/amd64")).unwrap();
    let arm = image.for_platform(&platform("linux/arm64")).unwrap();
    assert_eq!(amd.manifest.layers[0].digest, arm.manifest.layers[0].digest);
    assert_ne!(amd.manifest.layers[1].digest, arm.manifest.layers[1].digest);

    // The same context builds the same index.
    let again = build_in(
        &store,
        &ctx,
        BASEFS_KUBEFILE,
        "kubernetes:again",
        "linux/amd64,linux/arm64",
        Some(&PlatformCache),
    )
    .unwrap();
    assert_eq!(again.digest, report.digest);

    // `inspect` shows both platforms.
    let shown = serde_json::to_value(
        seaport_rootfs::inspect::inspect_image(&store, "kubernetes:v1.22.15", None).unwrap(),
    )
    .unwrap();
    assert_eq!(
        shown["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(shown["manifests"][1]["platform"], "linux/arm64");
    assert_eq!(shown["manifests"][1]["index"], report.digest.to_string());
    let one = serde_json::to_value(
        seaport_rootfs::inspect::inspect_image(
            &store,
            "kubernetes:v1.22.15",
            Some(&platform("linux/arm64")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(one["digest"], arm.manifest_digest.to_string());
}

#[test]
fn a_failed_platform_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    basefs_context(&ctx);
    fs::remove_dir_all(ctx.join("arm64")).unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    let err = build_in(
        &store,
        &ctx,
        BASEFS_KUBEFILE,
        "k:v1",
        "linux/amd64,linux/arm64",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(":3: COPY") && err.contains("arm64"), "{err}");
    assert!(store.list().unwrap().is_empty());
    let blobs = fs::read_dir(store.dir().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "nothing of the amd64 build entered the store");
}

#[test]
fn from_a_multi_platform_base_takes_the_build_platforms_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    basefs_context(&ctx);
    let store = Store::open(&dir.path().join("root")).unwrap();
    build_in(
        &store,
        &ctx,
        BASEFS_KUBEFILE,
        "base:v1",
        "linux/amd64,linux/arm64",
        None,
    )
    .unwrap();
    let derived = "FROM base:v1\nRUN cat bin/kubeadm > etc/from-base\n";
    for arch in ["arm64", "amd64"] {
        let tag = format!("derived-{arch}:v1");
        build_in(&store, &ctx, derived, &tag, &format!("linux/{arch}"), None).unwrap();
        let image = store.resolve(&tag).unwrap();
        assert_eq!(image.config.architecture, arch);
        let files = files_of(&store, &image);
        assert_eq!(files["etc/from-base"], format!("kubeadm for {arch}\n"));
    }
    // Both platforms at once: each takes its own.
    build_in(
        &store,
        &ctx,
        derived,
        "derived:v1",
        "linux/arm64,linux/amd64",
        None,
    )
    .unwrap();
    let image = store.image("derived:v1").unwrap();
    assert_eq!(image.platforms(), ["linux/arm64", "linux/amd64"]);
    for m in &image.manifests {
        let arch = &m.platform.architecture;
        assert_eq!(
            files_of(&store, &m.image)["etc/from-base"],
            format!("kubeadm for {arch}\n")
        );
    }
    // A platform the base lacks is named with what the base has.
    let err = build_in(&store, &ctx, derived, "s390x:v1", "linux/s390x", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":1: FROM")
            && err.contains("linux/s390x")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Stores a Docker schema 2 image as docker and buildah write it: gzip
/// layers under Docker media types, a config with `null`s.
fn put_docker_image(store: &Store, name: &str, layers: &[Vec<u8>], layer_type: &str) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let blob = gzip(tar);
        let d = store.put_blob(&blob).unwrap();
        diff_ids.push(format!("\"{}\"", Digest::of(tar)));
        descs.push(format!(
            r#"{{"mediaType":"{layer_type}","size":{},"digest":"{d}"}}"#,
            blob.len()
        ));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/bin"],"Cmd":null,"Labels":null}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[{{"created_by":"buildah"}}]}}"#,
        diff_ids.join(",")
    );
    let config_digest = store.put_blob(config.as_bytes()).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let digest = store.put_blob(manifest.as_bytes()).unwrap();
    store
        .set_name(&ImageRef::parse(name).unwrap(), &digest)
        .unwrap();
    digest
}

#[test]
fn a_docker_base_with_gzip_layers_is_a_from_base_for_copy_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("daemon.json"), "{}\n").unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    let base_layers = vec![
        tar_of(&[("etc/kubeadm.yml", "base\n"), ("bin/kubeadm", "kubeadm\n")]),
        tar_of(&[
            ("etc/.wh.kubeadm.yml", ""),
            ("etc/kubelet.conf", "kubelet\n"),
        ]),
    ];
    put_docker_image(
        &store,
        "sealer:v1",
        &base_layers,
        MEDIA_TYPE_DOCKER_LAYER_GZIP,
    );
    build_in(
        &store,
        &ctx,
        "FROM sealer:v1\nCOPY daemon.json etc\nRUN cat etc/kubelet.conf bin/kubeadm > etc/seen\n",
        "derived:v1",
        "linux/amd64",
        None,
    )
    .unwrap();
    let image = store.resolve("derived:v1").unwrap();
    let files = files_of(&store, &image);
    assert_eq!(files["etc/seen"], "kubelet\nkubeadm\n");
    assert_eq!(
        files["etc/daemon.json"], "{}\n",
        "etc is a directory of the gzip base"
    );
    assert!(
        !files.contains_key("etc/kubeadm.yml"),
        "the base's whiteout applies"
    );
    // The base's layers are kept as they are, under their OCI media type,
    // in an OCI manifest; the base's env is inherited.
    let base = store.resolve("sealer:v1").unwrap();
    for (mine, theirs) in image.manifest.layers.iter().zip(&base.manifest.layers) {
        assert_eq!(mine.digest, theirs.digest);
        assert_eq!(mine.media_type, MEDIA_TYPE_LAYER_GZIP);
    }
    assert_eq!(
        image.manifest.media_type.as_deref(),
        Some(MEDIA_TYPE_MANIFEST)
    );
    assert!(image
        .config
        .config
        .env
        .contains(&"PATH=/usr/bin".to_string()));

    // A base with a layer of a media type no reader knows is refused at
    // FROM, naming the layer and the type; nothing is stored.
    put_docker_image(
        &store,
        "odd:v1",
        &base_layers[..1],
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
    );
    let odd_layer = store.resolve("odd:v1").unwrap().manifest.layers[0].digest;
    let before = store.list().unwrap().len();
    let err = build_in(
        &store,
        &ctx,
        "FROM odd:v1\nRUN true\n",
        "x:v1",
        "linux/amd64",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(":1: FROM")
            && err.contains(&odd_layer.to_string())
            && err.contains("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
        "{err}"
    );
    assert_eq!(store.list().unwrap().len(), before);
}

fn plain_client(addr: &str) -> RegistryClient {
    let opts = ClientOptions {
        insecure: true,
        progress: false,
        ..ClientOptions::default()
    };
    RegistryClient::new(addr, &opts, None).unwrap()
}

#[test]
fn a_docker_v2s2_gzip_image_pushed_by_skopeo_pulls_and_is_a_from_base() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(ctx.join("etc")).unwrap();
    fs::write(ctx.join("etc/kubeadm.yml"), "kind: InitConfiguration\n").unwrap();
    let src = Store::open(&dir.path().join("src")).unwrap();
    build_in(
        &src,
        &ctx,
        "FROM scratch\nCOPY etc etc\n",
        "k8s:v1",
        "linux/amd64",
        None,
    )
    .unwrap();
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let name = format!("{}/sealerio/kubernetes:v1", reg.addr);
    // skopeo 1.9 converts zstd layers to gzip only between OCI layouts, then
    // writes Docker schema 2 to the registry.
    let gz = dir.path().join("gz");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--dest-compress",
        "--dest-compress-format",
        "gzip",
        &format!("oci:{}:docker.io/library/k8s:v1", src.dir().display()),
        &format!("oci:{}:k8s", gz.display()),
    ]));
    run_ok(Command::new("skopeo").args([
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:k8s", gz.display()),
        &format!("docker://{name}"),
    ]));
    let raw: serde_json::Value = serde_json::from_str(&run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ])))
    .unwrap();
    assert_eq!(raw["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(raw["layers"][0]["mediaType"], MEDIA_TYPE_DOCKER_LAYER_GZIP);

    let dst = Store::open(&dir.path().join("dst")).unwrap();
    let image = ImageRef::parse(&name).unwrap();
    pull_image(&dst, &image, &plain_client(&reg.addr), None).unwrap();
    let pulled = dst.resolve(&name).unwrap();
    assert_eq!(
        pulled.manifest.media_type.as_deref(),
        Some(MEDIA_TYPE_DOCKER_MANIFEST)
    );
    build_in(
        &dst,
        &ctx,
        &format!("FROM {name}\nRUN cp etc/kubeadm.yml etc/copied.yml\n"),
        "derived:v1",
        "linux/amd64",
        None,
    )
    .unwrap();
    let files = files_of(&dst, &dst.resolve("derived:v1").unwrap());
    assert_eq!(files["etc/copied.yml"], "kind: InitConfiguration\n");
    assert_eq!(files["etc/kubeadm.yml"], "kind: InitConfiguration\n");
}

#[test]
fn a_multi_platform_image_keeps_its_index_through_a_registry_and_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    basefs_context(&ctx);
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let name = format!("{}/clusters/kubernetes:v1.22.15", reg.addr);
    let src = Store::open(&dir.path().join("src")).unwrap();
    let built = build_in(
        &src,
        &ctx,
        BASEFS_KUBEFILE,
        &name,
        "linux/amd64,linux/arm64",
        None,
    )
    .unwrap();
    let image = ImageRef::parse(&name).unwrap();
    let client = plain_client(&reg.addr);
    let pushed = push_image(&src, &name, &image, &client).unwrap();
    assert_eq!(pushed.digest, Some(built.digest));

    // The registry serves the index, byte for byte, naming both platforms.
    let raw_text = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    assert_eq!(Digest::of(raw_text.trim_end().as_bytes()), built.digest);
    let raw: serde_json::Value = serde_json::from_str(&raw_text).unwrap();
    assert_eq!(raw["mediaType"], MEDIA_TYPE_INDEX);
    let archs: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    // skopeo can take the arm64 image from it.
    let arm_dir = dir.path().join("arm-copy");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{name}"),
        &format!("dir:{}", arm_dir.display()),
    ]));
    let arm_manifest = fs::read(arm_dir.join("manifest.json")).unwrap();
    let src_image = src.image(&name).unwrap();
    let src_arm = src_image.for_platform(&platform("linux/arm64")).unwrap();
    assert_eq!(Digest::of(&arm_manifest), src_arm.manifest_digest);

    // A pull takes every platform and keeps the index.
    let all = Store::open(&dir.path().join("all")).unwrap();
    let report = pull_image(&all, &image, &client, None).unwrap();
    assert_eq!(report.digest, Some(built.digest));
    let pulled = all.image(&name).unwrap();
    assert!(pulled.is_index());
    assert_eq!(pulled.platforms(), ["linux/amd64", "linux/arm64"]);
    for (d, _) in src_image.blobs() {
        assert!(all.has_blob(&d), "blob {d} was not pulled");
    }
    for m in &pulled.manifests {
        let arch = &m.platform.architecture;
        let mut want = expected_files(arch);
        want.remove("registry/cached-for");
        assert_eq!(files_of(&all, &m.image), want, "{arch}");
    }

    // --platform takes one platform: the name points at its manifest.
    let one = Store::open(&dir.path().join("one")).unwrap();
    pull_image(&one, &image, &client, Some(&platform("linux/arm64"))).unwrap();
    let arm_only = one.image(&name).unwrap();
    assert!(!arm_only.is_index());
    assert_eq!(arm_only.digest(), src_arm.manifest_digest);
    let src_amd = src_image.for_platform(&platform("linux/amd64")).unwrap();
    assert!(!one.has_blob(&src_amd.manifest.layers[1].digest));

    // save and load keep the index and both platforms.
    let archive_path = dir.path().join("multi.tar");
    archive::save(&all, std::slice::from_ref(&name), &archive_path).unwrap();
    let loaded = Store::open(&dir.path().join("loaded")).unwrap();
    let images = archive::load(&loaded, &archive_path).unwrap();
    assert_eq!(images[0].digest, built.digest);
    let back = loaded.image(&name).unwrap();
    assert_eq!(back.descriptor.media_type, MEDIA_TYPE_INDEX);
    assert_eq!(back.platforms(), ["linux/amd64", "linux/arm64"]);
    for m in &back.manifests {
        let mut want = expected_files(&m.platform.architecture);
        want.remove("registry/cached-for");
        assert_eq!(files_of(&loaded, &m.image), want);
    }
    // skopeo reads the archive's index too.
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}:{name}", archive_path.display()),
    ]));
    assert_eq!(Digest::of(raw.trim_end().as_bytes()), built.digest);

    // An archive whose index names a manifest it lacks is refused whole.
    let unpacked = dir.path().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive_path)
            .arg("-C")
            .arg(&unpacked),
    );
    fs::remove_file(
        unpacked
            .join("blobs/sha256")
            .join(src_arm.manifest_digest.hex()),
    )
    .unwrap();
    let broken = dir.path().join("broken.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&broken)
            .arg("-C")
            .arg(&unpacked)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    let empty = Store::open(&dir.path().join("empty")).unwrap();
    let err = archive::load(&empty, &broken).unwrap_err().to_string();
    assert!(
        err.contains(&src_arm.manifest_digest.to_string()) && err.contains("missing"),
        "{err}"
    );
    assert!(empty.list().unwrap().is_empty());
}
