//! Build-time image caching end to end: images pushed by skopeo to a TLS,
//! htpasswd-protected docker-registry are cached by a build from a
//! manifests/ YAML and an imageList; the image's registry layer, served by
//! a second docker-registry, lets skopeo find them.

mod registry_support;

use std::fs;
use std::path::Path;
use std::process::Command;

use registry_support::*;
use seaport_rootfs::build::{build, BuildOptions};
use seaport_rootfs::imagecache::{
    cached_domains, ImageCacheOptions, ImageIndex, RegistryImageCache,
};
use seaport_rootfs::registry::platform::host_platform;
use seaport_rootfs::registry::{ClientOptions, CredentialStore};
use seaport_rootfs::store::Store;

fn skopeo_push(reg: &TestRegistry, layout: &Path, dest: &str) {
    run_ok(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        reg.cert_dir.as_ref().unwrap().to_str().unwrap(),
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/{dest}", reg.addr),
    ]));
}

fn cache_for(reg: &TestRegistry, docker_config: &Path) -> RegistryImageCache {
    RegistryImageCache::new(ImageCacheOptions {
        image_list: None,
        ignored_image_list: None,
        platform: host_platform(),
        client: ClientOptions {
            ca_files: vec![reg.ca_file.clone().unwrap()],
            progress: false,
            retries: 1,
            ..ClientOptions::default()
        },
        credentials: Some(CredentialStore::at(docker_config.join("config.json"))),
    })
}

/// Unpacks the last layer of `name` (the registry layer) into `dest`.
fn unpack_last_layer(store: &Store, name: &str, dest: &Path) {
    let image = store.resolve(name).unwrap();
    let last = image.manifest.layers.last().unwrap();
    let file = store.open_blob(&last.digest).unwrap();
    let mut archive = tar::Archive::new(zstd::Decoder::new(file).unwrap());
    archive.unpack(dest).unwrap();
}

#[test]
fn build_caches_images_from_manifests_and_image_list_and_reuses_the_base() {
    let upstream_storage = tempfile::tempdir().unwrap();
    let upstream = TestRegistry::tls_auth(upstream_storage.path());
    let work = tempfile::tempdir().unwrap();
    let app_layout = work.path().join("app-layout");
    let app_digest = make_oci_layout(&app_layout, "v1", &tar_with("app/bin", &noise(7, 300_000)));
    skopeo_push(&upstream, &app_layout, "team/app:v1");
    let tool_layout = work.path().join("tool-layout");
    let tool_digest = make_oci_layout(&tool_layout, "v1", &tar_with("tool", b"tool binary"));
    skopeo_push(&upstream, &tool_layout, "other/tool:2");

    let docker_config = work.path().join("docker");
    fs::create_dir_all(&docker_config).unwrap();
    write_docker_config(&docker_config, &upstream.addr, USER, PASSWORD);
    let cache = cache_for(&upstream, &docker_config);

    // A context whose manifests name one image in YAML and one in imageList.
    let context = work.path().join("context");
    fs::create_dir_all(context.join("manifests")).unwrap();
    fs::write(
        context.join("manifests/app.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: {}/team/app:v1\n",
            upstream.addr
        ),
    )
    .unwrap();
    fs::write(
        context.join("manifests/imageList"),
        format!("# extra images\n{}/other/tool:2\n", upstream.addr),
    )
    .unwrap();
    fs::write(
        context.join("Kubefile"),
        "FROM scratch\nCOPY manifests manifests\n",
    )
    .unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let mut opts = BuildOptions::new(context.join("Kubefile"), &context, "cached:v1");
    opts.image_cache = Some(&cache);
    build(&store, &opts).unwrap();

    // Serve the image's registry layer with a second registry.
    let unpacked = tempfile::tempdir().unwrap();
    unpack_last_layer(&store, "cached:v1", unpacked.path());
    let registry_dir = unpacked.path().join("registry");
    assert!(registry_dir
        .join("docker/registry/v2/repositories/team/app")
        .is_dir());
    assert_eq!(
        cached_domains(&registry_dir).unwrap(),
        vec![upstream.addr.clone()]
    );
    let index = ImageIndex::load(&registry_dir).unwrap();
    assert_eq!(index.images.len(), 2);
    let served = TestRegistry::plain(&registry_dir);
    for (repo, digest) in [("team/app:v1", app_digest), ("other/tool:2", tool_digest)] {
        let out = run_ok(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{repo}", served.addr),
        ]));
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["Digest"], digest.to_string(), "{repo}: {out}");
    }
    // skopeo can also fetch every blob from it, verifying each.
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/team/app:v1", served.addr),
        &format!("oci:{}:v1", work.path().join("copy").display()),
    ]));
    drop(served);

    // Built FROM that image, with the upstream registry gone: the images
    // already in the base's registry/ are not pulled again.
    drop(upstream);
    fs::write(
        context.join("Kubefile"),
        "FROM cached:v1\nCOPY manifests manifests\n",
    )
    .unwrap();
    let mut opts = BuildOptions::new(context.join("Kubefile"), &context, "derived:v1");
    opts.image_cache = Some(&cache);
    let derived = build(&store, &opts).unwrap();
    let base_layers = store.resolve("cached:v1").unwrap().manifest.layers.len();
    assert!(
        derived.layers <= base_layers + 1,
        "no new registry layer expected"
    );

    // An image that cannot be pulled fails the build, naming it.
    fs::write(
        context.join("manifests/imageList"),
        "127.0.0.1:9/missing/image:v3\n",
    )
    .unwrap();
    let mut opts = BuildOptions::new(context.join("Kubefile"), &context, "broken:v1");
    opts.image_cache = Some(&cache);
    let err = build(&store, &opts).unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:9/missing/image:v3"), "{err}");
    assert!(err.contains("manifests/imageList:1"), "{err}");
    assert!(store.resolve("broken:v1").is_err());
}

#[test]
fn images_from_two_domains_with_one_repository_path_fail_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("manifests")).unwrap();
    fs::write(
        rootfs.join("manifests/imageList"),
        "quay.io/team/app:v1\nghcr.io/team/app:v2\n",
    )
    .unwrap();
    let cache = RegistryImageCache::new(ImageCacheOptions {
        image_list: None,
        ignored_image_list: None,
        platform: host_platform(),
        client: ClientOptions {
            progress: false,
            ..ClientOptions::default()
        },
        credentials: None,
    });
    let err = cache
        .cache_into(&rootfs, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ghcr.io/team/app:v2") && err.contains("quay.io/team/app:v1"),
        "{err}"
    );
    assert!(err.contains("repository team/app"), "{err}");
}
