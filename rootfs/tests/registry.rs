//! Push, pull, login and verification against a real `docker-registry`
//! on loopback: once with TLS from a test CA and htpasswd auth, once plain.

mod registry_support;

use std::fs;
use std::process::Command;

use registry_support::*;
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::{
    pull_image, push_image, ClientOptions, CopyError, Credentials, RegistryClient, RegistryError,
};
use seaport_rootfs::store::Store;
use seaport_shared::digest::Digest;

fn quiet() -> ClientOptions {
    ClientOptions {
        progress: false,
        retries: 1,
        ..ClientOptions::default()
    }
}

fn tls_options(reg: &TestRegistry) -> ClientOptions {
    ClientOptions {
        ca_files: vec![reg.ca_file.clone().unwrap()],
        ..quiet()
    }
}

fn plain_options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        ..quiet()
    }
}

/// Layers: one large enough for a chunked upload with a 1 MiB chunk size,
/// and a small one for a monolithic upload.
fn layers() -> Vec<Vec<u8>> {
    vec![noise(1, 3 * 1024 * 1024 + 123), noise(2, 10_000)]
}

#[test]
fn tls_and_auth_push_pull_round_trip_skips_blobs_the_registry_has() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::tls_auth(storage.path());
    let name = format!("{}/clusters/kubernetes:v1.28.0", reg.addr);
    let src_root = tempfile::tempdir().unwrap();
    let src = Store::open(src_root.path()).unwrap();
    let digest = make_store_image(&src, &name, &layers());
    let image = ImageRef::parse(&name).unwrap();
    let opts = ClientOptions {
        chunk_size: 1024 * 1024,
        ..tls_options(&reg)
    };
    let creds = Some(Credentials::new(USER, PASSWORD));
    let client = RegistryClient::new(&reg.addr, &opts, creds.clone()).unwrap();
    client.check_login().unwrap();

    let report = push_image(&src, &name, &image, &client).unwrap();
    assert_eq!(report.digest, Some(digest));
    assert_eq!(report.transferred, 3, "config and two layers uploaded");

    // Pushing again uploads nothing: every blob is already there.
    let again = push_image(&src, &name, &image, &client).unwrap();
    assert_eq!((again.transferred, again.skipped), (0, 3));

    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let client = RegistryClient::new(&reg.addr, &opts, creds).unwrap();
    let pulled = pull_image(&dst, &image, &client, None).unwrap();
    assert_eq!(pulled.digest, Some(digest));
    let resolved = dst.resolve(&name).unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    for (layer, desc) in layers().iter().zip(&resolved.manifest.layers) {
        assert_eq!(&fs::read(dst.blob_path(&desc.digest)).unwrap(), layer);
    }
}

#[test]
fn plain_http_push_then_skopeo_copies_it_cleanly() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let name = format!("{}/team/cluster:v1", reg.addr);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let digest = make_store_image(&store, &name, &layers());
    let client = RegistryClient::new(&reg.addr, &plain_options(), None).unwrap();
    push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &client).unwrap();

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("copy");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:v1", dest.display()),
    ]));
    // skopeo verified every blob and kept the manifest byte for byte.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.to_string());
    for layer in layers() {
        let d = Digest::of(&layer);
        assert_eq!(
            fs::read(dest.join("blobs/sha256").join(d.hex())).unwrap(),
            layer
        );
    }
    let inspect = run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    assert!(inspect.contains(&digest.to_string()), "{inspect}");
}

#[test]
fn wrong_credentials_fail_with_a_clear_error() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::tls_auth(storage.path());
    let client = RegistryClient::new(
        &reg.addr,
        &tls_options(&reg),
        Some(Credentials::new(USER, "wrong-password")),
    )
    .unwrap();
    let err = client.check_login().unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("authentication to {} failed", reg.addr)),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "the password leaks: {text}"
    );

    // A push without credentials says that none are stored.
    let name = format!("{}/x/y:1", reg.addr);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    make_store_image(&store, &name, &[noise(3, 100)]);
    let anonymous = RegistryClient::new(&reg.addr, &tls_options(&reg), None).unwrap();
    let err = push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &anonymous)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no credentials are stored"), "{err}");
}

#[test]
fn an_untrusted_certificate_is_refused_with_a_hint() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::tls_auth(storage.path());
    let client =
        RegistryClient::new(&reg.addr, &quiet(), Some(Credentials::new(USER, PASSWORD))).unwrap();
    let err = client.check_login().unwrap_err().to_string();
    assert!(err.contains("--ca-file"), "{err}");
}

#[test]
fn a_registry_serving_a_wrong_blob_fails_verification_naming_the_blob() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let name = format!("{}/team/tampered:v1", reg.addr);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let layer = noise(4, 200_000);
    make_store_image(&store, &name, std::slice::from_ref(&layer));
    let client = RegistryClient::new(&reg.addr, &plain_options(), None).unwrap();
    push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &client).unwrap();

    // Tamper with the layer in the registry's storage, keeping its size.
    let d = Digest::of(&layer);
    let data = storage
        .path()
        .join("docker/registry/v2/blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex())
        .join("data");
    let mut bad = layer.clone();
    bad[1000] ^= 0xff;
    fs::write(&data, &bad).unwrap();

    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let err = pull_image(&dst, &ImageRef::parse(&name).unwrap(), &client, None).unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::Registry(RegistryError::DigestMismatch { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&d.to_string()), "{text}");
    assert!(text.contains("failed verification"), "{text}");
    // Nothing was named and the bad blob was not kept.
    assert!(dst.resolve(&name).is_err());
    assert!(!dst.has_blob(&d));
}

#[test]
fn pulling_a_missing_image_names_it() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::plain(storage.path());
    let client = RegistryClient::new(&reg.addr, &plain_options(), None).unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let image = ImageRef::parse(&format!("{}/no/such:v9", reg.addr)).unwrap();
    let err = pull_image(&store, &image, &client, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no/such:v9") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_corrupt_blob_in_the_store_is_not_pushed() {
    // One layer large enough for a chunked upload (1 MiB chunks), one sent
    // in a single request: both are hashed as they are read, and the
    // upload is not completed when the bytes do not match the digest.
    for (i, layer) in layers().into_iter().enumerate() {
        let storage = tempfile::tempdir().unwrap();
        let reg = TestRegistry::plain(storage.path());
        let name = format!("{}/team/corrupt{i}:v1", reg.addr);
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        make_store_image(&store, &name, std::slice::from_ref(&layer));
        let d = Digest::of(&layer);
        // The local copy changes on disk, keeping its size.
        let path = store.blob_path(&d);
        let mut bad = layer.clone();
        bad[layer.len() - 10] ^= 0xff;
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, &bad).unwrap();

        let opts = ClientOptions {
            chunk_size: 1024 * 1024,
            ..plain_options()
        };
        let client = RegistryClient::new(&reg.addr, &opts, None).unwrap();
        let err = push_image(&store, &name, &ImageRef::parse(&name).unwrap(), &client).unwrap_err();
        assert!(
            matches!(
                err,
                CopyError::Registry(RegistryError::CorruptLocalBlob { expected, actual, .. })
                    if expected == d && actual == Digest::of(&bad)
            ),
            "layer {i}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&d.to_string()) && text.contains("corrupt"),
            "{text}"
        );
        // The registry holds neither the blob nor a manifest naming it.
        let blobs = storage.path().join("docker/registry/v2/blobs/sha256");
        assert!(
            !blobs.join(&d.hex()[..2]).join(d.hex()).exists(),
            "layer {i}"
        );
        let manifests = storage.path().join(format!(
            "docker/registry/v2/repositories/team/corrupt{i}/_manifests"
        ));
        assert!(!manifests.exists(), "layer {i}: a manifest was pushed");
    }
}
