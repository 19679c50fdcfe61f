//! Test support: a real `docker-registry` (distribution 2.8) on loopback,
//! with TLS from a throwaway CA and htpasswd auth, or plain HTTP; and small
//! images for the local store and for OCI layouts.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seaport_rootfs::oci::{
    Descriptor, ImageConfig, Manifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_MANIFEST,
};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::store::Store;
use seaport_shared::digest::Digest;

pub const USER: &str = "seaport";
pub const PASSWORD: &str = "s3cret-pass";

/// A running registry, killed (by its PID) when dropped, also on panic.
pub struct TestRegistry {
    pub addr: String,
    pub storage: PathBuf,
    /// The CA that signed the server certificate (TLS registries only).
    pub ca_file: Option<PathBuf>,
    /// A directory with the CA as `ca.crt`, for skopeo's --cert-dir.
    pub cert_dir: Option<PathBuf>,
    child: Child,
    _work: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    /// Plain HTTP, no auth, serving `storage`.
    pub fn plain(storage: &Path) -> Self {
        Self::start(storage, false)
    }

    /// TLS (test CA) and htpasswd auth ([`USER`]/[`PASSWORD`]).
    pub fn tls_auth(storage: &Path) -> Self {
        Self::start(storage, true)
    }

    fn start(storage: &Path, secure: bool) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        let (mut ca_file, mut cert_dir) = (None, None);
        if secure {
            let (ca_pem, cert_pem, key_pem) = test_ca();
            let ca = work.path().join("ca.pem");
            fs::write(&ca, &ca_pem).unwrap();
            let certs = work.path().join("certs");
            fs::create_dir_all(&certs).unwrap();
            fs::write(certs.join("ca.crt"), &ca_pem).unwrap();
            fs::write(work.path().join("server.pem"), cert_pem).unwrap();
            fs::write(work.path().join("server.key"), key_pem).unwrap();
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(out.status.success());
            fs::write(work.path().join("htpasswd"), out.stdout).unwrap();
            extra = format!(
                "  tls:\n    certificate: {w}/server.pem\n    key: {w}/server.key\nauth:\n  htpasswd:\n    realm: seaport-test\n    path: {w}/htpasswd\n",
                w = work.path().display()
            );
            ca_file = Some(ca);
            cert_dir = Some(certs);
        }
        fs::create_dir_all(storage).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = work.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n  secret: seaport-test-secret\n{extra}",
                    storage.display()
                ),
            )
            .unwrap();
            let log = fs::File::create(work.path().join("registry.log")).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry is installed");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken or bad config: try again below
                }
                if TcpStream::connect(&addr).is_ok() {
                    return Self {
                        addr,
                        storage: storage.to_path_buf(),
                        ca_file,
                        cert_dir,
                        child,
                        _work: work,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let log = fs::read_to_string(work.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start:\n{log}");
    }
}

/// A CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) PEM.
pub fn test_ca() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "seaport registry test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Deterministic pseudo-random bytes (incompressible enough for tests).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Stores an image made of `layers` in `store` under `name`; returns the
/// manifest digest.
pub fn make_store_image(store: &Store, name: &str, layers: &[Vec<u8>]) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let d = store.put_blob(layer).unwrap();
        diff_ids.push(d);
        descs.push(Descriptor {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            digest: d,
            size: layer.len() as u64,
            annotations: Default::default(),
            platform: None,
        });
    }
    let mut config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    config.rootfs.diff_ids = diff_ids;
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = store.put_blob(&config_bytes).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers: descs,
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = store.put_blob(&bytes).unwrap();
    store
        .set_name(&ImageRef::parse(name).unwrap(), &digest)
        .unwrap();
    digest
}

/// A tar archive holding one file.
pub fn tar_with(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, path, content).unwrap();
    b.into_inner().unwrap()
}

/// Writes an OCI image layout at `dir` with one image tagged `tag` made of
/// one tar layer; returns the manifest digest.
pub fn make_oci_layout(dir: &Path, tag: &str, layer: &[u8]) -> Digest {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_MANIFEST}","config":{{"mediaType":"{MEDIA_TYPE_CONFIG}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{MEDIA_TYPE_LAYER_TAR}","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = put(manifest.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_TYPE_MANIFEST}","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    fs::write(dir.join("index.json"), index).unwrap();
    manifest_digest
}

/// Runs a command, panicking with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes a docker config.json with credentials for `registry`.
pub fn write_docker_config(dir: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("config.json");
    let mut f = fs::File::create(&path).unwrap();
    write!(f, r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#).unwrap();
    path
}
