//! One etcd member on loopback for tests (Debian's `etcd-server`), its data
//! in a temporary directory, killed and removed on drop. Shared by the
//! state's unit tests and the CLI tests (`coordinator/tests/etcd_store.rs`
//! includes this file), so it uses only std and tempfile.
//!
//! Without an `etcd` binary on `PATH` [`LocalEtcd::start`] says so and
//! gives `None` (the test passes untested), unless `SEAPORT_REQUIRE_ETCD=1`
//! (CI sets it), where it fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// TLS for etcd's client URL: its CA, its server certificate and key;
/// clients must then present a certificate from that CA.
pub(crate) struct EtcdTls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[allow(dead_code)]
pub(crate) struct LocalEtcd {
    child: Child,
    /// The client URL (`http://127.0.0.1:PORT`).
    pub(crate) url: String,
    dir: tempfile::TempDir,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl LocalEtcd {
    /// Starts etcd on plain HTTP and waits until it answers `/health`.
    #[allow(dead_code)]
    pub(crate) fn start() -> Option<LocalEtcd> {
        LocalEtcd::start_with(None)
    }

    /// Starts etcd, with `tls` on its client URL (`https://`) and client
    /// certificates required, and waits until it answers `/health` (on a
    /// plain metrics URL).
    pub(crate) fn start_with(tls: Option<&EtcdTls>) -> Option<LocalEtcd> {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("etcd").is_file()))
            .unwrap_or(false);
        if !found {
            if std::env::var("SEAPORT_REQUIRE_ETCD").as_deref() == Ok("1") {
                panic!("SEAPORT_REQUIRE_ETCD=1 but no etcd on PATH: apt-get install etcd-server");
            }
            eprintln!("no etcd on PATH (apt-get install etcd-server): etcd backend not tested");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer, metrics) = (free_port(), free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(tls) = tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=test")
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = LocalEtcd { child, url, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !etcd.healthy(metrics) {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(etcd)
    }

    /// A site key file for the stores of this etcd (made by the first
    /// `EtcdStore::init`).
    #[allow(dead_code)]
    pub(crate) fn site_key(&self) -> PathBuf {
        self.dir.path().join("site.key")
    }

    fn healthy(&self, port: u16) -> bool {
        healthy(port)
    }
}

/// Several etcd members on loopback forming one cluster (a site's etcd
/// in the lab tests), killed and removed on drop.
#[allow(dead_code)]
pub(crate) struct LocalEtcdCluster {
    members: Vec<Option<Child>>,
    /// Each member's arguments, to start it again.
    args: Vec<Vec<String>>,
    /// Each member's client URL (`http://127.0.0.1:PORT`).
    pub(crate) urls: Vec<String>,
    /// Each member's metrics port (`/metrics`, `/health`, plain HTTP).
    pub(crate) metrics: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for m in self.members.iter_mut().flatten() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

#[allow(dead_code)]
impl LocalEtcdCluster {
    /// Starts `n` members and waits until every one answers `/health`
    /// (the cluster has a leader). Panics without an `etcd` binary.
    pub(crate) fn start(n: usize) -> LocalEtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let peer = |p: u16| format!("http://127.0.0.1:{p}");
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p, _))| format!("m{i}={}", peer(*p)))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = Vec::new();
        let mut urls = Vec::new();
        for (i, (client, p, _)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            args.push(vec![
                format!("--name=m{i}"),
                format!("--listen-metrics-urls=http://127.0.0.1:{}", ports[i].2),
                format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={}", peer(*p)),
                format!("--initial-advertise-peer-urls={}", peer(*p)),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".to_string(),
                "--initial-cluster-token=seaport-test".to_string(),
            ]);
            urls.push(url);
        }
        let members = (0..n)
            .map(|i| Some(spawn_member(dir.path(), i, &args[i])))
            .collect();
        let metrics = ports.iter().map(|p| p.2).collect();
        let cluster = LocalEtcdCluster {
            members,
            args,
            urls,
            metrics,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, (_, _, metrics)) in ports.iter().enumerate() {
            while !healthy(*metrics) {
                assert!(
                    Instant::now() < deadline,
                    "etcd member m{i} did not start: {}",
                    std::fs::read_to_string(cluster.dir.path().join(format!("m{i}.log")))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Stops member `i` (SIGKILL).
    pub(crate) fn stop_member(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it answers
    /// `/health` (panics after 60 s).
    pub(crate) fn start_member(&mut self, i: usize) {
        if self.members[i].is_none() {
            self.members[i] = Some(spawn_member(self.dir.path(), i, &self.args[i]));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(self.metrics[i]) {
            assert!(
                Instant::now() < deadline,
                "etcd member m{i} did not come back: {}",
                std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts etcd member `i` with `args`, its output appended to `dir/mI.log`.
fn spawn_member(dir: &Path, i: usize, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("m{i}.log")))
        .unwrap();
    Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd (etcd-server)")
}

/// Whether the etcd whose metrics listen on `port` says it is healthy.
fn healthy(port: u16) -> bool {
    http_get(port, "/health").contains("\"health\":\"true\"")
}

/// The body (with headers) of `GET path` on a loopback port; empty when
/// nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}
