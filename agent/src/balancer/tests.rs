//! The balancer against API-server stand-ins on loopback: TLS listeners
//! with certificates of a test CA that answer every request with their
//! name, and can be stopped or made to answer 500.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{check_tls, Balancer, Options};

struct Ca {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    let signed = params.self_signed(&key).unwrap();
    let (cert, pem) = (signed.der().clone(), signed.pem());
    Ca {
        cert,
        pem,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// An API server stand-in: answers every request with `status` and its
/// name until stopped.
struct Master {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Master {
    async fn start(name: &'static str, ca: &Ca) -> Master {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        let server = rustls::ServerConfig::builder_with_provider(seaport_shared::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let answer = status.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let code = answer.load(Ordering::SeqCst);
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Master { addr, status, task }
    }

    /// The host goes away: its port refuses connections.
    async fn stop(&self) {
        self.task.abort();
        while TcpStream::connect(self.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `GET /healthz` through the balancer, TLS verified end to end against
/// the cluster's CA: the status and the answering master's name.
async fn get(through: SocketAddr, ca: &Ca) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(seaport_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(through).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS through the balancer");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: apiserver.cluster.local\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    let text = String::from_utf8(all).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap().to_string();
    (code, body)
}

/// The (status, name) answers of `n` requests through the balancer.
async fn seen(through: SocketAddr, ca: &Ca, n: usize) -> BTreeSet<(u16, String)> {
    let mut s = BTreeSet::new();
    for _ in 0..n {
        s.insert(get(through, ca).await);
    }
    s
}

fn options(listen: SocketAddr, backends: Vec<SocketAddr>, ca: &Ca) -> Options {
    let mut o = Options::new(listen, backends, check_tls(ca.cert.clone()).unwrap());
    o.interval = Duration::from_millis(200);
    o.check_timeout = Duration::from_millis(500);
    o
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forwards_to_healthy_masters_and_drops_dead_and_failing_ones() {
    let ca = ca();
    let m1 = Master::start("m1", &ca).await;
    let m2 = Master::start("m2", &ca).await;
    let m3 = Master::start("m3", &ca).await;
    let b = Balancer::start(options(
        "127.0.0.1:0".parse().unwrap(),
        vec![m1.addr, m2.addr, m3.addr],
        &ca,
    ))
    .await
    .unwrap();
    let through = b.local_addr();
    let names = |s: BTreeSet<(u16, String)>| s.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
    // Every master serves, in turn.
    assert_eq!(names(seen(through, &ca, 6).await), ["m1", "m2", "m3"]);

    // m2 goes away: no request fails, its dial marks it down at once.
    m2.stop().await;
    assert_eq!(names(seen(through, &ca, 6).await), ["m1", "m3"]);
    let s = b.status();
    assert!(!s[1].healthy, "{s:?}");
    assert!(
        s[1].failed_dials >= 1
            || s[1]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("connect")),
        "{s:?}"
    );

    // m3 answers 500 on /healthz: the active check takes it out.
    m3.status.store(500, Ordering::SeqCst);
    until("m3 down", || !b.status()[2].healthy).await;
    assert!(
        b.status()[2]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("500")),
        "{:?}",
        b.status()
    );
    assert_eq!(
        seen(through, &ca, 4).await,
        BTreeSet::from([(200, "m1".to_string())])
    );

    // Every master down: connections are still forwarded, in order.
    m1.status.store(503, Ordering::SeqCst);
    until("m1 down", || !b.status()[0].healthy).await;
    assert_eq!(get(through, &ca).await, (503, "m1".to_string()));

    // m3 recovers: it is back in the pool.
    m3.status.store(200, Ordering::SeqCst);
    until("m3 up", || b.status()[2].healthy).await;
    assert_eq!(get(through, &ca).await, (200, "m3".to_string()));

    // A new list: m2 and m3 leave, m4 joins and serves at once.
    let m4 = Master::start("m4", &ca).await;
    b.set_backends(&[m1.addr, m4.addr]);
    let s = b.status();
    assert_eq!(
        s.iter().map(|x| x.addr).collect::<Vec<_>>(),
        [m1.addr, m4.addr]
    );
    assert_eq!(
        seen(through, &ca, 3).await,
        BTreeSet::from([(200, "m4".to_string())])
    );
    b.stop().await;
    assert!(
        TcpStream::connect(through).await.is_err(),
        "the balancer still listens after stop"
    );
}

#[tokio::test]
async fn a_master_whose_certificate_the_cluster_ca_did_not_sign_is_down() {
    let ca = ca();
    let other = self::ca();
    let impostor = Master::start("impostor", &other).await;
    let b = Balancer::start(options(
        "127.0.0.1:0".parse().unwrap(),
        vec![impostor.addr],
        &ca,
    ))
    .await
    .unwrap();
    until("the impostor down", || !b.status()[0].healthy).await;
    let why = b.status()[0].reason.clone().unwrap();
    assert!(why.starts_with("TLS"), "{why}");
    b.stop().await;
}

#[tokio::test]
async fn a_taken_address_is_an_error_naming_it() {
    let ca = ca();
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Balancer::start(options(addr, vec![], &ca))
        .await
        .err()
        .expect("started on a taken address");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

mod host {
    //! The balancer as the agent runs it: the kept list, a restart, the
    //! address on the loopback link, one cluster at a time.

    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use seaport_shared::cluster::ClusterName;
    use seaport_shared::wire::BalancerTask;

    use super::super::host::{HostBalancer, HostBalancerError};
    use super::*;
    use crate::apply::RecordingEffects;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn task(cluster: &str, ip: &str, port: u16, backends: &[SocketAddr]) -> BalancerTask {
        BalancerTask {
            cluster: ClusterName::parse(cluster).unwrap(),
            listen_ip: ip.into(),
            port,
            backends: backends.iter().map(|b| b.to_string()).collect(),
            registry_port: None,
            registry_backends: vec![],
            registry_ca: None,
            registry_domain: None,
        }
    }

    #[tokio::test]
    async fn the_kept_list_serves_again_after_the_agent_restarts_and_a_reset_forgets_it() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (m1, m2) = (
            Master::start("m1", &ca).await,
            Master::start("m2", &ca).await,
        );
        let port = free_port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let fx = Arc::new(RecordingEffects::default());
        let first = HostBalancer::new(dir.path(), &ca_file, fx.clone());
        let facts = first
            .apply(&task("c1", "127.0.0.1", port, &[m1.addr, m2.addr]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(facts.listen, listen.to_string());
        assert_eq!(facts.backends.len(), 2);
        let kept = first.kept_file();
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: BTreeSet<String> = seen(listen, &ca, 4)
            .await
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(names, ["m1".to_string(), "m2".to_string()].into());
        // A loopback address is not added to the link.
        assert!(fx.calls().is_empty(), "{:?}", fx.calls());
        // Another cluster's list is refused while this one runs.
        let other = first
            .apply(&task("c2", "127.0.0.1", port, &[m1.addr]))
            .await;
        assert!(matches!(other, Err(HostBalancerError::OtherCluster(c)) if c == "c1"));

        // The agent stops (its balancer with it) and starts again.
        drop(first);
        let mut tries = 0;
        while TcpStream::connect(listen).await.is_ok() && tries < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tries += 1;
        }
        let again = HostBalancer::new(dir.path(), &ca_file, fx.clone());
        let restored = again.restore().await.unwrap().unwrap();
        assert_eq!(restored.listen, listen.to_string());
        assert_eq!(get(listen, &ca).await.0, 200);
        assert_eq!(again.facts().unwrap().backends.len(), 2);

        // Master m1 leaves: the new list is kept and served.
        again
            .apply(&task("c1", "127.0.0.1", port, &[m2.addr]))
            .await
            .unwrap();
        let names: BTreeSet<String> = seen(listen, &ca, 3)
            .await
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(names, ["m2".to_string()].into());
        let text = std::fs::read_to_string(&kept).unwrap();
        assert!(
            !text.contains(&m1.addr.to_string()) && text.contains(&m2.addr.to_string()),
            "{text}"
        );

        // A reset of another cluster leaves it; the cluster's own stops it
        // and forgets the list.
        assert!(!again.stop(&ClusterName::parse("c2").unwrap()).await);
        assert!(TcpStream::connect(listen).await.is_ok());
        assert!(again.stop(&ClusterName::parse("c1").unwrap()).await);
        assert!(TcpStream::connect(listen).await.is_err());
        assert!(!kept.exists());
        assert!(again.facts().is_none());
        let third = HostBalancer::new(dir.path(), &ca_file, fx);
        assert!(third.restore().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_virtual_ip_goes_on_the_loopback_link_and_off_again() {
        let dir = tempfile::tempdir().unwrap();
        let fx = Arc::new(RecordingEffects::default());
        let b = HostBalancer::new(dir.path(), dir.path().join("ca.crt"), fx.clone());
        let backend = SocketAddr::from(([127, 0, 0, 1], 1));
        // The recording effects add nothing: listening on the VIP fails
        // here, after the address was asked for, and names the address.
        let err = b
            .apply(&task("c1", "10.103.97.2", 6443, &[backend]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.103.97.2:6443"), "{err}");
        assert_eq!(fx.calls(), ["run ip -4 addr replace 10.103.97.2/32 dev lo"],);
        // A reset takes the kept address off the link.
        assert!(b.stop(&ClusterName::parse("c1").unwrap()).await);
        assert_eq!(
            fx.calls().last().unwrap(),
            "run ip -4 addr del 10.103.97.2/32 dev lo"
        );
        for (ip, port, backend, field) in [
            ("10.103.97", 6443, "127.0.0.1:1", "listen address"),
            ("0.0.0.0", 6443, "127.0.0.1:1", "listen address"),
            ("127.0.0.1", 0, "127.0.0.1:1", "port"),
            ("127.0.0.1", 6443, "master-1:6443", "backend"),
        ] {
            let t = BalancerTask {
                cluster: ClusterName::parse("c1").unwrap(),
                listen_ip: ip.into(),
                port,
                backends: vec![backend.into()],
                registry_port: None,
                registry_backends: vec![],
                registry_ca: None,
                registry_domain: None,
            };
            let e = b.apply(&t).await.unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    /// A plain TCP server that answers every connection with `name`.
    async fn registry(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_registry_port_forwards_to_the_registry_hosts_and_goes_when_the_list_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let fx = Arc::new(RecordingEffects::default());
        let b = HostBalancer::new(dir.path(), dir.path().join("ca.crt"), fx);
        let (r1, api) = (registry("r1").await, registry("api").await);
        let (port, rport) = (free_port(), free_port());
        let mut t = task("c1", "127.0.0.1", port, &[api]);
        t.registry_port = Some(rport);
        t.registry_backends = vec![r1.to_string()];
        let facts = b.apply(&t).await.unwrap().unwrap();
        let through = SocketAddr::from(([127, 0, 0, 1], rport));
        assert_eq!(facts.registry_listen, Some(through.to_string()));
        assert_eq!(facts.registry[0].addr, r1.to_string());
        let mut got = String::new();
        TcpStream::connect(through)
            .await
            .unwrap()
            .read_to_string(&mut got)
            .await
            .unwrap();
        assert_eq!(got, "r1");
        // Kept with the API list, so a restarted agent serves it too.
        let kept = std::fs::read_to_string(b.kept_file()).unwrap();
        assert!(kept.contains(&r1.to_string()), "{kept}");
        // The same port as the API's is refused.
        let mut same = t.clone();
        same.registry_port = Some(port);
        let e = b.apply(&same).await.unwrap_err().to_string();
        assert!(e.contains("registry port"), "{e}");
        // No registry hosts any more: the port closes, the API stays.
        t.registry_backends.clear();
        let facts = b.apply(&t).await.unwrap().unwrap();
        assert!(facts.registry_listen.is_none() && facts.registry.is_empty());
        assert!(TcpStream::connect(through).await.is_err());
        assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .is_ok());
    }
}

/// A plain-HTTP server answering every request with `status` (a registry
/// that wants credentials answers 401 to `GET /v2/`); the paths it was
/// asked go to `asked`.
async fn plain_http(status: u16) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(path) = head.split(' ').nth(1) {
                log.lock().unwrap().push(path.to_string());
            }
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (addr, asked)
}

#[tokio::test]
async fn registry_backends_are_checked_by_get_v2_and_401_counts_as_up() {
    let (wants_login, asked) = plain_http(401).await;
    let (failing, _) = plain_http(503).await;
    // Listens, but is no HTTP server: a TCP connect alone would call it up.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut o = Options::registry(
        "127.0.0.1:0".parse().unwrap(),
        vec![wants_login, failing, silent_addr],
        None,
    );
    o.interval = Duration::from_millis(200);
    o.check_timeout = Duration::from_millis(500);
    let b = Balancer::start(o).await.unwrap();
    until("the checks ran", || {
        b.status().iter().all(|s| s.healthy || s.reason.is_some()) && !b.status()[2].healthy
    })
    .await;
    let s = b.status();
    assert!(s[0].healthy, "401 is an answering registry: {s:?}");
    assert!(!s[1].healthy, "{s:?}");
    assert!(
        s[1].reason.as_deref().is_some_and(|r| r.contains("503")),
        "{s:?}"
    );
    assert!(
        s[2].reason
            .as_deref()
            .is_some_and(|r| r.contains("GET /v2/")),
        "{s:?}"
    );
    assert!(asked.lock().unwrap().iter().all(|p| p == "/v2/"));
    assert!(!asked.lock().unwrap().is_empty());
    drop(silent);
    b.stop().await;
}

/// A TLS registry stand-in serving `cert` (for `sea.hub`), answering 401.
async fn tls_registry(cert: &seaport_shared::registry_cert::RegistryCert) -> SocketAddr {
    let chain = seaport_shared::pki::certs_from_pem(&cert.certificate, "cert").unwrap();
    let key = seaport_shared::pki::key_from_pem(&cert.key, "key").unwrap();
    let server = rustls::ServerConfig::builder_with_provider(seaport_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 401 X\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_registry_backends_are_checked_against_their_ca_for_their_domain() {
    let served = seaport_shared::registry_cert::generate("sea.hub", &[], &[]).unwrap();
    let other = seaport_shared::registry_cert::generate("sea.hub", &[], &[]).unwrap();
    let addr = tls_registry(&served).await;
    let der = |pem: &str| {
        seaport_shared::pki::certs_from_pem(pem, "ca")
            .unwrap()
            .remove(0)
    };
    let start = |ca: &str, name: &str| {
        let mut o = Options::registry(
            "127.0.0.1:0".parse().unwrap(),
            vec![addr],
            Some((check_tls(der(ca)).unwrap(), name.to_string())),
        );
        o.interval = Duration::from_millis(200);
        o.check_timeout = Duration::from_millis(500);
        Balancer::start(o)
    };
    // Its own CA and domain: up (401 answers).
    let b = start(&served.ca, "sea.hub").await.unwrap();
    // New backends start up: give the checks a few rounds to say otherwise.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(b.status()[0].healthy, "{:?}", b.status());
    b.stop().await;
    // Another CA, or another name: down, naming TLS.
    for (ca, name) in [(&other.ca, "sea.hub"), (&served.ca, "other.hub")] {
        let b = start(ca, name).await.unwrap();
        until("checked", || !b.status()[0].healthy).await;
        let s = b.status();
        assert!(
            s[0].reason.as_deref().is_some_and(|r| r.contains("TLS")),
            "{s:?}"
        );
        b.stop().await;
    }
}
