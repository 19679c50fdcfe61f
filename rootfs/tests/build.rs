//! Builds real images into a temporary store and checks what a user would
//! see: the files in the merged rootfs, the recorded config, the errors.

mod build_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use build_support::{read, setup};
use seaport_rootfs::build::ImageCache;
use seaport_rootfs::inspect::inspect;
use seaport_rootfs::store::Store;

#[test]
fn copy_files_dirs_globs_and_arch() {
    let c = setup();
    c.file("etc/kubeadm.yml", "kind: x");
    c.file("bin/amd64/kubeadm", "amd64 kubeadm");
    c.file("bin/arm64/kubeadm", "arm64 kubeadm");
    c.file("manifests/a.yaml", "a");
    c.file("manifests/b.yaml", "b");
    c.file("manifests/c.txt", "c");
    c.file("imageList", "busybox");
    let report = c
        .build(
            "FROM scratch\nCOPY etc etc\nCOPY bin/${ARCH}/kubeadm bin/\nCOPY bin/$ARCH/kubeadm usr/kubeadm-copy\n\
         COPY manifests/*.yaml manifests\nCOPY imageList manifests/\n",
            "copy:v1",
        )
        .unwrap();
    let r = c.rootfs("copy:v1");
    assert_eq!(read(r.path(), "etc/kubeadm.yml"), "kind: x");
    assert_eq!(read(r.path(), "bin/kubeadm"), "amd64 kubeadm");
    // Nothing says which sealer generation: 0.8's rule (a file lands in
    // DEST), with a warning naming the line.
    assert_eq!(read(r.path(), "usr/kubeadm-copy/kubeadm"), "amd64 kubeadm");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0]
            .contains(":4: COPY bin/$ARCH/kubeadm usr/kubeadm-copy: nothing in the Kubefile"),
        "{:?}",
        report.warnings
    );
    assert_eq!(read(r.path(), "manifests/a.yaml"), "a");
    assert_eq!(read(r.path(), "manifests/b.yaml"), "b");
    assert!(!r.path().join("manifests/c.txt").exists());
    assert_eq!(read(r.path(), "manifests/imageList"), "busybox");
    let info = inspect(&c.store, "copy:v1").unwrap();
    assert_eq!(info.layers.len(), 5);
    assert_eq!(info.layers[1].instruction, "COPY bin/${ARCH}/kubeadm bin/");

    // --platform changes ${ARCH}.
    c.build_with(
        "FROM scratch\nCOPY bin/${ARCH}/kubeadm bin/\n",
        "copy:arm",
        |o| o.platform = "linux/arm64".into(),
    )
    .unwrap();
    assert_eq!(
        read(c.rootfs("copy:arm").path(), "bin/kubeadm"),
        "arm64 kubeadm"
    );
    assert_eq!(
        inspect(&c.store, "copy:arm").unwrap().platform,
        "linux/arm64"
    );
}

#[test]
fn from_base_then_copy_overwrites_the_file_for_users_of_the_new_image() {
    let c = setup();
    c.file("base/etc/daemon.json", r#"{"from":"base"}"#);
    c.file("base/etc/kubeadm.yml", "base kubeadm");
    c.file("daemon.json", r#"{"from":"mine"}"#);
    c.build(
        "FROM scratch\nCOPY base .\nENV A=1\nLABEL tier=base\n",
        "kubernetes:v1.19.8",
    )
    .unwrap();
    c.build(
        "FROM kubernetes:v1.19.8\nCOPY daemon.json etc/\nENV B=2\n",
        "mine:v1",
    )
    .unwrap();
    let r = c.rootfs("mine:v1");
    assert_eq!(read(r.path(), "etc/daemon.json"), r#"{"from":"mine"}"#);
    assert_eq!(read(r.path(), "etc/kubeadm.yml"), "base kubeadm");
    let info = inspect(&c.store, "mine:v1").unwrap();
    assert_eq!(info.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(info.env.get("B").map(String::as_str), Some("2"));
    assert_eq!(info.labels.get("tier").map(String::as_str), Some("base"));
    // The base image is untouched.
    assert_eq!(
        read(c.rootfs("kubernetes:v1.19.8").path(), "etc/daemon.json"),
        r#"{"from":"base"}"#
    );
}

#[test]
fn building_twice_gives_the_same_digest() {
    let c = setup();
    c.file("etc/a", "a");
    c.file("bin/x", "x");
    let kf = "FROM scratch\nCOPY . .\nRUN echo made > etc/run\nLABEL k=v\n";
    let a = c.build(kf, "same:v1").unwrap();
    let b = c.build(kf, "same:v2").unwrap();
    assert_eq!(a.digest, b.digest);
    // A changed file changes the digest.
    c.file("etc/a", "changed");
    let d = c.build(kf, "same:v3").unwrap();
    assert_ne!(a.digest, d.digest);
}

#[test]
fn run_changes_become_a_layer_with_whiteouts() {
    let c = setup();
    c.file("etc/keep", "k");
    c.file("etc/remove", "r");
    c.file("old/dir/file", "f");
    c.build(
        "FROM scratch\nCOPY . .\nARG GREETING=hello\nENV WHO=world\n\
         RUN echo \"$GREETING $WHO\" > etc/greeting && rm etc/remove && rm -r old && mkdir -p new/d\n\
         RUN [\"sh\", \"-c\", \"echo exec > etc/exec\"]\n",
        "run:v1",
    )
    .unwrap();
    let r = c.rootfs("run:v1");
    assert_eq!(read(r.path(), "etc/greeting"), "hello world\n");
    assert_eq!(read(r.path(), "etc/exec"), "exec\n");
    assert!(r.path().join("etc/keep").exists());
    assert!(!r.path().join("etc/remove").exists());
    assert!(!r.path().join("old").exists());
    assert!(r.path().join("new/d").is_dir());
    // --build-arg overrides the ARG default.
    c.build_with(
        "FROM scratch\nARG GREETING=hello\nRUN echo $GREETING > out\n",
        "run:v2",
        |o| {
            o.build_args.insert("GREETING".into(), "bonjour".into());
        },
    )
    .unwrap();
    assert_eq!(read(c.rootfs("run:v2").path(), "out"), "bonjour\n");
}

#[test]
fn metadata_instructions_are_recorded() {
    let c = setup();
    c.file("Metadata", r#"{"version":"v1.22.15","arch":"amd64"}"#);
    c.file("apps/nginx.yaml", "kind: Deployment");
    c.file("apps/calico.yaml", "kind: DaemonSet");
    c.file("apps/openebs.yaml", "kind: StorageClass");
    c.file("apps/setup.sh", "echo hi");
    c.file("chart/Chart.yaml", "name: c");
    c.file("chart/values.yaml", "replicas: 1");
    c.file("chart/templates/deploy.yaml", "kind: Deployment");
    c.build(
        "FROM scratch\nCOPY Metadata .\nMAINTAINER ops@example.com\nKUBEVERSION v1.22.15\nLABEL a=b\n\
         APP nginx local://apps/nginx.yaml\nAPP setup local://apps/setup.sh\nAPP chart local://chart\n\
         CNI calico local://apps/calico.yaml\nCSI openebs local://apps/openebs.yaml\n\
         APPCMDS nginx [\"kubectl apply -f nginx.yaml\"]\nAPPENV nginx NS=web\nLAUNCH [\"calico\", \"nginx\"]\n",
        "meta:v1",
    )
    .unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("x".to_string(), "y".to_string());
    let info = inspect(&c.store, "meta:v1").unwrap();
    assert_eq!(info.author.as_deref(), Some("ops@example.com"));
    assert_eq!(
        info.labels["app.alpha.sealer.io/supported-kube-version"],
        "v1.22.15"
    );
    assert_eq!(info.labels["a"], "b");
    assert_eq!(info.metadata["version"], "v1.22.15");
    assert_eq!(info.launch.app_names, ["calico", "nginx"]);
    let app = |n: &str| info.apps.iter().find(|a| a.name == n).unwrap().clone();
    assert_eq!(app("nginx").kind, "kube");
    assert_eq!(app("nginx").launch_cmds, ["kubectl apply -f nginx.yaml"]);
    assert_eq!(app("nginx").env["NS"], "web");
    assert_eq!(app("setup").kind, "shell");
    assert_eq!(app("chart").kind, "helm");
    assert_eq!(app("calico").role, "cni");
    assert_eq!(
        info.labels["cluster.alpha.sealer.io/kube-cni-calico"],
        "true"
    );
    assert_eq!(
        info.labels["cluster.alpha.sealer.io/kube-csi-openebs"],
        "true"
    );
    assert_eq!(app("openebs").role, "csi");
    let r = c.rootfs("meta:v1");
    assert_eq!(
        read(r.path(), "application/apps/nginx/nginx.yaml"),
        "kind: Deployment"
    );
    assert_eq!(
        read(r.path(), "application/apps/chart/Chart.yaml"),
        "name: c"
    );

    c.build(
        "FROM meta:v1\nCMDS [\"kubectl get nodes\", \"echo done\"]\n",
        "meta:v2",
    )
    .unwrap();
    let info = inspect(&c.store, "meta:v2").unwrap();
    assert_eq!(info.cmds, ["kubectl get nodes", "echo done"]);
    assert_eq!(info.apps.len(), 5, "apps are inherited from FROM");

    c.build("FROM scratch\nCMD kubectl get pods\n", "meta:v3")
        .unwrap();
    assert_eq!(
        inspect(&c.store, "meta:v3").unwrap().cmds,
        ["kubectl get pods"]
    );

    let err = c
        .build("FROM scratch\nLAUNCH [\"missing\"]\n", "meta:bad")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("application \"missing\" does not exist"),
        "{err}"
    );
    let _ = labels;
}

#[test]
fn copy_outside_the_context_is_refused() {
    let c = setup();
    let secret = c.ctx.parent().unwrap().join("secret");
    fs::write(&secret, "s").unwrap();
    std::os::unix::fs::symlink(&secret, c.ctx.join("link")).unwrap();
    std::os::unix::fs::symlink(c.ctx.parent().unwrap(), c.ctx.join("dirlink")).unwrap();
    for (kf, what) in [
        ("FROM scratch\nCOPY ../secret etc/\n", "../secret"),
        ("FROM scratch\nCOPY link etc/\n", "link"),
        ("FROM scratch\nCOPY dirlink/secret etc/\n", "dirlink/secret"),
        ("FROM scratch\nCOPY dirlink etc/\n", "dirlink"),
    ] {
        let err = c.build(kf, "escape:v1").unwrap_err().to_string();
        assert!(
            err.contains(":2: COPY:") && err.contains("outside the build context"),
            "{what}: {err}"
        );
    }
    assert!(c.store.list().unwrap().is_empty());
}

#[test]
fn syntax_errors_name_file_and_line() {
    let c = setup();
    let err = c
        .build("FROM scratch\n# comment\nCOPY a\n", "syntax:v1")
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("Kubefile.syntax_v1:3: COPY: needs a source and a destination"),
        "{err}"
    );
    let err = c
        .build("FROM scratch\nLAUNCH [\"a\"]\nCOPY a b\n", "syntax:v1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":2: LAUNCH: LAUNCH must be the last instruction"),
        "{err}"
    );
}

#[test]
fn a_failed_build_leaves_the_store_unchanged() {
    let c = setup();
    c.file("etc/a", "a");
    c.build("FROM scratch\nCOPY etc etc\n", "ok:v1").unwrap();
    let before = c.store_listing();
    for kf in [
        "FROM scratch\nCOPY etc etc\nCOPY missing x\n",
        "FROM scratch\nCOPY etc etc\nRUN exit 3\n",
        "FROM nope:v1\n",
    ] {
        let err = c.build(kf, "ok:v1").unwrap_err();
        assert!(!err.to_string().is_empty());
        assert_eq!(c.store_listing(), before, "after {kf:?}");
    }
    let err = c
        .build("FROM scratch\nCOPY etc etc\nRUN exit 3\n", "x:v1")
        .unwrap_err();
    assert!(
        err.to_string().contains(":3: RUN: the command failed"),
        "{err}"
    );
}

#[test]
fn concurrent_builds_into_one_store() {
    let c = setup();
    for i in 0..4 {
        c.file(&format!("d{i}/f"), &format!("{i}").repeat(100_000));
    }
    std::thread::scope(|s| {
        for i in 0..4 {
            let c = &c;
            s.spawn(move || {
                c.build(
                    &format!("FROM scratch\nCOPY d{i} data/\nLABEL i={i}\n"),
                    &format!("con:v{i}"),
                )
                .unwrap();
            });
        }
    });
    let names: Vec<String> = c
        .store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names, ["con:v0", "con:v1", "con:v2", "con:v3"]);
    for i in 0..4 {
        assert_eq!(
            read(c.rootfs(&format!("con:v{i}")).path(), "data/f").len(),
            100_000
        );
    }
}

struct FakeCache;
impl ImageCache for FakeCache {
    fn cache(
        &self,
        rootfs: &Path,
        out: &Path,
        _platform: &seaport_rootfs::oci::Platform,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let list = fs::read_to_string(rootfs.join("manifests/imageList"))?;
        let dir = out.join("registry/docker/registry/v2/repositories");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("cached"), list)?;
        Ok(true)
    }
}

#[test]
fn the_image_cache_hook_adds_one_layer() {
    let c = setup();
    c.file("manifests/imageList", "busybox:1.35\n");
    let cache = FakeCache;
    c.build_with(
        "FROM scratch\nCOPY manifests manifests\n",
        "cache:v1",
        |o| o.image_cache = Some(&cache),
    )
    .unwrap();
    let info = inspect(&c.store, "cache:v1").unwrap();
    assert_eq!(info.layers.len(), 2);
    assert_eq!(
        read(
            c.rootfs("cache:v1").path(),
            "registry/docker/registry/v2/repositories/cached"
        ),
        "busybox:1.35\n"
    );
}

// ---- a malicious base image against the build host ----------------------

/// One entry of a crafted layer: path, kind, mode, bytes, link target.
type Crafted<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);

/// A layer tar exactly as given, hostile names and modes included.
fn crafted_layer(entries: &[Crafted<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Puts an image of `layers` (uncompressed tars, stored zstd-compressed)
/// into the store under `name`, as a third party's image arrives there
/// with `seaport pull` or `seaport load`.
fn put_image(store: &Store, name: &str, layers: &[Vec<u8>]) {
    use seaport_rootfs::oci::{
        Descriptor, ImageConfig, Manifest, RootFs, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_ZSTD,
        MEDIA_TYPE_MANIFEST,
    };
    use seaport_shared::digest::Digest;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let z = zstd::encode_all(&tar[..], 3).unwrap();
        descs.push(Descriptor {
            media_type: MEDIA_TYPE_LAYER_ZSTD.into(),
            digest: store.put_blob(&z).unwrap(),
            size: z.len() as u64,
            annotations: Default::default(),
            platform: None,
        });
        diff_ids.push(Digest::of(tar));
    }
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids,
        },
        ..Default::default()
    };
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: store.put_blob(&config).unwrap(),
            size: config.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers: descs,
        annotations: Default::default(),
    };
    let m = store
        .put_blob(&serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    let name = seaport_rootfs::reference::ImageRef::parse(name).unwrap();
    store.set_name(&name, &m).unwrap();
}

/// Every path under `dir` with its mode and content or target.
fn snapshot_modes(dir: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .map(|e| {
            let m = fs::symlink_metadata(e.path()).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).unwrap().display())
            } else if m.is_file() {
                fs::read_to_string(e.path()).unwrap_or_default()
            } else {
                "<dir>".into()
            };
            (
                e.path().display().to_string(),
                format!("{:o} {}:{} {what}", m.mode(), m.uid(), m.gid()),
            )
        })
        .collect()
}

#[test]
fn a_base_image_cannot_chmod_the_build_host_through_a_directory_it_replaced_with_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    use tar::EntryType::{Directory as D, Symlink as S};
    let c = setup();
    let outside = tempfile::tempdir().unwrap();
    for sub in ["suid", "open", "nested/b"] {
        let p = outside.path().join(sub);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
    let before = snapshot_modes(outside.path());
    let at = |s: &str| outside.path().join(s).display().to_string();
    let (suid, open, nested) = (at("suid"), at("open"), at("nested"));
    put_image(
        &c.store,
        "evil-base:v1",
        &[crafted_layer(&[
            ("x/", D, 0o4755, b"", None),
            ("y/", D, 0o777, b"", None),
            ("a/", D, 0o755, b"", None),
            ("a/b/", D, 0o777, b"", None),
            ("x", S, 0o777, b"", Some(&suid)),
            ("y", S, 0o777, b"", Some(&open)),
            ("a", S, 0o777, b"", Some(&nested)),
        ])],
    );
    // RUN materializes the base's rootfs on the build host.
    c.build("FROM evil-base:v1\nRUN touch built\n", "on-evil:v1")
        .unwrap();
    assert_eq!(
        snapshot_modes(outside.path()),
        before,
        "materializing the base changed the build host"
    );
    let r = c.rootfs("on-evil:v1");
    assert!(r.path().join("built").is_file());
    assert!(fs::symlink_metadata(r.path().join("x"))
        .unwrap()
        .is_symlink());
}

#[test]
fn registry_domains_with_dot_dot_are_refused_naming_where_they_came_from() {
    use seaport_rootfs::imagecache::{ImageCacheOptions, RegistryImageCache};
    use tar::EntryType::{Directory as D, Regular as F};
    let c = setup();
    let outside = tempfile::tempdir().unwrap();
    let before = snapshot_modes(outside.path());
    let cache = RegistryImageCache::new(ImageCacheOptions {
        image_list: None,
        ignored_image_list: None,
        platform: seaport_rootfs::oci::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        client: Default::default(),
        credentials: None,
    });
    // An imageList and a manifest naming domains that climb out.
    c.file("manifests/imageList", "busybox:1.36\n../../../etc/x:1\n");
    let err = c
        .build_with("FROM scratch\nCOPY manifests manifests\n", "dots:v1", |o| {
            o.image_cache = Some(&cache)
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("manifests/imageList:2") && err.contains("../../../etc/x:1"),
        "{err}"
    );
    fs::remove_file(c.ctx.join("manifests/imageList")).unwrap();
    c.file(
        "manifests/app.yaml",
        "kind: Pod\nspec:\n  containers:\n  - image: reg..istry.io/x:1\n",
    );
    let err = c
        .build_with("FROM scratch\nCOPY manifests manifests\n", "dots:v2", |o| {
            o.image_cache = Some(&cache)
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("manifests/app.yaml") && err.contains("reg..istry.io"),
        "{err}"
    );
    // A base image whose own index of cached images names such a domain.
    let index = serde_json::json!({"images": [{
        "name": "evil.io/x:1",
        "domain": format!("../../..{}", outside.path().display()),
        "repository": "x",
        "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    }]})
    .to_string();
    put_image(
        &c.store,
        "evil-index:v1",
        &[crafted_layer(&[
            ("registry/", D, 0o755, b"", None),
            (
                "registry/seaport-images.json",
                F,
                0o644,
                index.as_bytes(),
                None,
            ),
        ])],
    );
    fs::remove_file(c.ctx.join("manifests/app.yaml")).unwrap();
    c.file("manifests/imageList", "busybox:1.36\n");
    let err = c
        .build_with(
            "FROM evil-index:v1\nCOPY manifests manifests\n",
            "dots:v3",
            |o| o.image_cache = Some(&cache),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seaport-images.json") && err.contains("HOST[:PORT]"),
        "{err}"
    );
    assert_eq!(snapshot_modes(outside.path()), before);
    assert!(c.store.resolve("dots:v3").is_err());
}
