//! Signed cluster images as a user makes and moves them, with the binary:
//! `seaport key generate`, `build --sign-key`, `sign`, `inspect`, `save` and
//! `load`, `push` to and `pull` from a real docker-registry with a `skopeo
//! copy` of both tags in between, the signature checked by openssl (a
//! verifier Seaport did not write), and the coordinator's policy
//! (`coordinator serve --trusted-keys DIR [--require-signed]`) refusing
//! unsigned and changed images before anything is planned.

#[path = "../../rootfs/tests/registry_support/server.rs"]
mod server;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use server::*;

const PASSWORD_ENV: &str = "SEAPORT_KEY_PASSWORD";

fn seaport(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seaport"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env(PASSWORD_ENV, "correct horse battery")
        .env("DOCKER_CONFIG", root.join("docker"))
        .env_remove("SEAPORT_ROOT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = seaport(root, args);
    assert!(out.status.success(), "seaport {args:?}: {}", text(&out));
    text(&out)
}

fn fails(root: &Path, args: &[&str]) -> String {
    let out = seaport(root, args);
    assert!(
        !out.status.success(),
        "seaport {args:?} succeeded: {}",
        text(&out)
    );
    text(&out)
}

/// A tiny context whose build differs with `marker`.
fn context(dir: &Path, marker: &str) -> PathBuf {
    let ctx = dir.join(format!("ctx-{marker}"));
    fs::create_dir_all(ctx.join("etc")).unwrap();
    fs::write(ctx.join("etc/marker"), marker).unwrap();
    fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY etc etc\n").unwrap();
    ctx
}

fn digest_of(root: &Path, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", name])).unwrap();
    v["digest"].as_str().unwrap().to_string()
}

/// The payload and DER signature of the first signature the store holds
/// for `digest`, read from the OCI layout as any tool would.
fn stored_signature(root: &Path, digest: &str) -> (Vec<u8>, Vec<u8>) {
    let images = root.join("images");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(images.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["io.seaport.signature.subject"] == digest)
        .unwrap_or_else(|| panic!("no signature entry for {digest}: {index}"));
    let blob = |d: &str| fs::read(images.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let sig = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    (blob(layer["digest"].as_str().unwrap()), sig)
}

/// `openssl dgst -sha256 -verify PUB -signature SIG PAYLOAD`: true when
/// openssl says "Verified OK".
fn openssl_verifies(dir: &Path, public: &Path, payload: &[u8], sig: &[u8]) -> bool {
    let (p, s) = (dir.join("payload.json"), dir.join("payload.sig"));
    fs::write(&p, payload).unwrap();
    fs::write(&s, sig).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&s)
        .arg(&p)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status.success() && said.contains("Verified OK")
}

fn skopeo_copy(from: &str, to: &str) {
    run_ok(Command::new("skopeo").args([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        from,
        to,
    ]));
}

#[test]
fn a_signed_image_keeps_its_signature_through_save_load_push_skopeo_and_pull() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let root = dir.join("root");

    // Keys: the private key encrypted, 0600; the public key 0644.
    let out = ok(
        &root,
        &["key", "generate", "-o", dir.join("site").to_str().unwrap()],
    );
    let (private, public) = (dir.join("site.key"), dir.join("site.pub"));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&private), mode(&public)), (0o600, 0o644));
    let key_text = fs::read_to_string(&private).unwrap();
    assert!(key_text.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .to_string();
    // The fingerprint is sha256 of the key's SubjectPublicKeyInfo, as
    // openssl reads it.
    assert_eq!(fp, openssl_fingerprint(dir, &public));
    let keys = dir.join("trusted");
    fs::create_dir_all(&keys).unwrap();
    fs::copy(&public, keys.join("site.pub")).unwrap();
    // A wrong passphrase opens nothing.
    let wrong = Command::new(env!("CARGO_BIN_EXE_seaport"))
        .arg("--root")
        .arg(&root)
        .args(["sign", "--key"])
        .arg(&private)
        .arg("x")
        .env(PASSWORD_ENV, "wrong")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        text(&wrong).contains("wrong passphrase"),
        "{}",
        text(&wrong)
    );

    // Build and sign in one go; openssl verifies the stored signature.
    let reg_a_storage = tempfile::tempdir().unwrap();
    let reg_b_storage = tempfile::tempdir().unwrap();
    let a = TestRegistry::plain(reg_a_storage.path());
    let b = TestRegistry::plain(reg_b_storage.path());
    let name = format!("{}/clusters/tiny:v1", a.addr);
    let ctx = context(dir, "one");
    ok(
        &root,
        &[
            "build",
            "-t",
            &name,
            "--sign-key",
            private.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    let digest = digest_of(&root, &name);
    let (payload, sig) = stored_signature(&root, &digest);
    assert!(openssl_verifies(dir, &public, &payload, &sig));
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    // The check is real: openssl refuses a payload changed by one byte.
    let mut changed = payload.clone();
    let at = changed.len() - 20;
    changed[at] ^= 1;
    assert!(!openssl_verifies(dir, &public, &changed, &sig));

    // inspect names the signer, verified against the trusted keys.
    let v: serde_json::Value = serde_json::from_str(&ok(
        &root,
        &["inspect", &name, "--trusted-keys", keys.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(v["signatures"][0]["key"], fp.as_str());
    assert_eq!(v["signatures"][0]["verified"], true);
    assert_eq!(v["signatures"][0]["signs"], digest.as_str());

    // save and load into another store: the signature comes along.
    let archive = dir.join("tiny.tar");
    ok(&root, &["save", "-o", archive.to_str().unwrap(), &name]);
    let loaded = dir.join("loaded");
    ok(&loaded, &["load", "-i", archive.to_str().unwrap()]);
    let (p2, s2) = stored_signature(&loaded, &digest);
    assert!(openssl_verifies(dir, &public, &p2, &s2));

    // push to registry a, skopeo copies both tags to b, pull from b.
    let pushed = ok(&root, &["push", &name, "--insecure"]);
    let tag = format!("sha256-{}.sig", &digest[7..]);
    assert!(pushed.contains(&tag), "{pushed}");
    let repo_a = format!("docker://{}/clusters/tiny", a.addr);
    let repo_b = format!("docker://{}/clusters/tiny", b.addr);
    skopeo_copy(&format!("{repo_a}:v1"), &format!("{repo_b}:v1"));
    skopeo_copy(&format!("{repo_a}:{tag}"), &format!("{repo_b}:{tag}"));
    let from_b = format!("{}/clusters/tiny:v1", b.addr);
    let pulled = dir.join("pulled");
    let out = ok(&pulled, &["pull", &from_b, "--insecure"]);
    assert!(out.contains("Pulled its signatures: 1"), "{out}");
    let (p3, s3) = stored_signature(&pulled, &digest);
    assert!(openssl_verifies(dir, &public, &p3, &s3));
    let v: serde_json::Value = serde_json::from_str(&ok(
        &pulled,
        &["inspect", &from_b, "--trusted-keys", keys.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(v["signatures"][0]["verified"], true);

    // A second key signs too: two signatures in one signature image, both
    // pushed; rotation keeps either verifying.
    ok(
        &root,
        &["key", "generate", "-o", dir.join("next").to_str().unwrap()],
    );
    ok(
        &root,
        &[
            "sign",
            "--key",
            dir.join("next.key").to_str().unwrap(),
            &name,
        ],
    );
    ok(&root, &["push", &name, "--insecure"]);
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("{repo_a}:{tag}"),
    ]));
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2, "{raw}");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
}

/// A coordinator process of ours, stopped with SIGTERM when dropped.
struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path, extra: &[&str]) -> Serve {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _ = fs::remove_file(root.join("coordinator/serve.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_seaport"))
        .arg("--root")
        .arg(root)
        .args([
            "coordinator",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !root.join("coordinator/serve.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Serve { child }
}

#[test]
fn the_coordinator_refuses_unsigned_under_require_signed_and_changed_images_always() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let root = dir.join("root");
    ok(&root, &["coordinator", "init"]);
    ok(
        &root,
        &["key", "generate", "-o", dir.join("site").to_str().unwrap()],
    );
    let keys = dir.join("trusted");
    fs::create_dir_all(&keys).unwrap();
    fs::copy(dir.join("site.pub"), keys.join("site.pub")).unwrap();
    let fp = openssl_fingerprint(dir, &dir.join("site.pub"));
    let key = dir.join("site.key");
    ok(
        &root,
        &[
            "build",
            "-t",
            "signed:v1",
            "--sign-key",
            key.to_str().unwrap(),
            context(dir, "s").to_str().unwrap(),
        ],
    );
    ok(
        &root,
        &[
            "build",
            "-t",
            "unsigned:v1",
            context(dir, "u").to_str().unwrap(),
        ],
    );
    // The attack on a signed image: its manifest changed (here: the image
    // rebuilt with other content), the signature image moved to the new
    // digest, as someone with write access to a registry or an archive
    // would do it.
    ok(
        &root,
        &[
            "build",
            "-t",
            "changed:v1",
            context(dir, "c").to_str().unwrap(),
        ],
    );
    let signed = digest_of(&root, "signed:v1");
    let changed = digest_of(&root, "changed:v1");
    let index_path = root.join("images/index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let moved = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["io.seaport.signature.subject"] == signed.as_str())
        .unwrap()
        .clone();
    let mut moved = moved;
    moved["annotations"]["io.seaport.signature.subject"] = changed.clone().into();
    index["manifests"].as_array_mut().unwrap().push(moved);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let run = |image: &str| {
        let out = seaport(
            &root,
            &["run", image, "-m", "198.18.0.250", "--cluster", "c"],
        );
        assert!(!out.status.success());
        text(&out)
    };
    // Past the signature check, a run fails on the host having no agent.
    let accepted = |msg: &str| msg.contains("no agent is enrolled");

    {
        let _c = serve(
            &root,
            &["--trusted-keys", keys.to_str().unwrap(), "--require-signed"],
        );
        let msg = run("unsigned:v1");
        for part in ["unsigned:v1", &fp, "no signature", "refused"] {
            assert!(msg.contains(part), "{part:?} missing: {msg}");
        }
        let msg = run("changed:v1");
        for part in ["changed:v1", &fp, &signed, "changed after it was signed"] {
            assert!(msg.contains(part), "{part:?} missing: {msg}");
        }
        assert!(accepted(&run("signed:v1")), "{}", run("signed:v1"));
        // Nothing was recorded for the refused runs.
        let status = ok(&root, &["status", "--json"]);
        assert!(
            !status.contains("unsigned:v1") && !status.contains("changed:v1"),
            "{status}"
        );
    }
    {
        // Trusted keys, signatures not required: unsigned images pass, a
        // signature that does not hold still does not.
        let _c = serve(&root, &["--trusted-keys", keys.to_str().unwrap()]);
        assert!(accepted(&run("unsigned:v1")));
        assert!(run("changed:v1").contains("changed after it was signed"));
    }
    // --require-signed without keys is refused at start.
    let msg = fails(&root, &["coordinator", "serve", "--require-signed"]);
    assert!(msg.contains("--trusted-keys"), "{msg}");
}

/// `sha256:` of the DER public key openssl reads from a PEM file.
fn openssl_fingerprint(dir: &Path, public: &Path) -> String {
    let der = dir.join("key.der");
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(public)
            .arg("-out")
            .arg(&der),
    );
    format!("sha256:{}", sha256_hex(&fs::read(&der).unwrap()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}
