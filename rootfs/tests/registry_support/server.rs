//! Test support: a real `docker-registry` (distribution 2.8) on loopback,
//! with TLS from a throwaway CA (openssl) and htpasswd auth, or plain HTTP.
//! Needs only std and tempfile, so other crates' tests include it by path.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const USER: &str = "seaport";
pub(crate) const PASSWORD: &str = "s3cret-pass";

/// A running registry, killed (by its PID) when dropped, also on panic.
pub(crate) struct TestRegistry {
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
    pub(crate) fn plain(storage: &Path) -> Self {
        Self::start(storage, false)
    }

    /// TLS (test CA) and htpasswd auth ([`USER`]/[`PASSWORD`]).
    pub(crate) fn tls_auth(storage: &Path) -> Self {
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

/// A CA and a server certificate for 127.0.0.1/localhost, made with the
/// openssl command: (ca, cert, key) PEM.
pub(crate) fn test_ca() -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                &d("ca.key"),
                "-out",
                &d("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=seaport registry test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
    );
    run_ok(Command::new("openssl").arg("req").args(ec).args([
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]));
    fs::write(
        d("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("server.pem"),
        "-days",
        "2",
        "-extfile",
        &d("ext.cnf"),
    ]));
    let read = |n: &str| fs::read_to_string(d(n)).unwrap();
    (read("ca.pem"), read("server.pem"), read("server.key"))
}

/// Runs a command, panicking with its output unless it succeeds; returns stdout.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
