//! `coordinator init --store etcd` and `coordinator serve` on a real etcd
//! (started on loopback): the state is in etcd and not in a file, two
//! coordinator roots on one prefix share it, the CLI reads it with or
//! without a running coordinator, and the mistakes (an uninitialised
//! prefix, moving a redb coordinator to etcd) are refused with what to do.

mod common;
#[path = "../src/state/local_etcd.rs"]
mod local_etcd;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{listening, ok, seaport, text};
use local_etcd::{EtcdTls, LocalEtcd};

/// The admin certificates' serials, as `admin list --json` shows them.
fn admin_serials(root: &Path) -> Vec<u64> {
    let out = ok(seaport(root).args(["admin", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut serials: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["serial"].as_u64().unwrap())
        .collect();
    serials.sort_unstable();
    serials
}

#[test]
fn coordinators_initialised_on_etcd_share_its_state_and_keep_none_on_disk() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, plain) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("plain"),
    );
    let etcd_flags = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.url.as_str(),
        "--etcd-prefix",
        "/site-1/",
    ];

    // A coordinator on a prefix nobody initialised refuses to start, says
    // what to do, and records nothing.
    ok(seaport(&plain).args(["coordinator", "init"]));
    let out = seaport(&a).args(["coordinator", "init"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(a.join("coordinator/state.redb")).unwrap();
    seaport::state::SiteKey::load_or_create(&a.join("coordinator/site.key")).unwrap();
    let out = seaport(&a)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .args(etcd_flags)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("coordinator init"), "{}", text(&out));
    assert!(!a.join("coordinator/store.json").exists());

    // Moving a coordinator that has state in redb to etcd is refused.
    let out = seaport(&plain)
        .args(["coordinator", "init"])
        .args(etcd_flags)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("not supported"), "{}", text(&out));

    // Two roots initialised on one prefix, the second with the first's
    // site key: one state, no state file.
    ok(seaport(&a).args(["coordinator", "init"]).args(etcd_flags));
    // A root without the site's key is refused and records nothing.
    let out = seaport(&b)
        .args(["coordinator", "init"])
        .args(etcd_flags)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("copy site.key"), "{}", text(&out));
    assert!(!b.join("coordinator/store.json").exists());
    // `coordinator add` prints the key and the command; the new root takes
    // the site's CA from etcd (in place of the one its failed init made).
    let add = ok(seaport(&a).args(["coordinator", "add"]));
    let key = std::fs::read_to_string(a.join("coordinator/site.key")).unwrap();
    assert!(add.contains(key.trim()), "{add}");
    assert!(
        add.contains(&format!("--etcd-endpoints {}", etcd.url)),
        "{add}"
    );
    assert!(add.contains("--etcd-prefix /site-1/"), "{add}");
    std::fs::write(b.join("coordinator/site.key"), key).unwrap();
    let joined = ok(seaport(&b).args(["coordinator", "init"]).args(etcd_flags));
    assert!(
        joined.contains("took the site's coordinator CA"),
        "{joined}"
    );
    let ca = |root: &Path| std::fs::read(root.join("coordinator/ca.pem")).unwrap();
    assert_eq!(ca(&a), ca(&b), "one CA for the site");
    let out = seaport(&plain)
        .args(["coordinator", "add"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only coordinators on etcd"),
        "{}",
        text(&out)
    );
    for root in [&a, &b] {
        assert!(!root.join("coordinator/state.redb").exists());
        for file in ["store.json", "site.key"] {
            let path = root.join("coordinator").join(file);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let record = root.join("coordinator/store.json");
        assert!(std::fs::read_to_string(&record)
            .unwrap()
            .contains(&etcd.url));
    }
    // Each root's local admin certificate is in the shared state, with
    // serials drawn from one counter.
    let serials = admin_serials(&a);
    assert_eq!(serials.len(), 2, "{serials:?}");
    assert_eq!(admin_serials(&b), serials);
    // The redb coordinator next to them sees none of it.
    assert_eq!(admin_serials(&plain).len(), 1);

    // A coordinator serving from the recorded store answers the CLI from
    // it; what B writes meanwhile, A's coordinator sees.
    let mut serve = seaport(&a)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        listening(&a, &mut serve, Duration::from_secs(30)),
        "the coordinator on etcd did not start"
    );
    ok(seaport(&b)
        .args(["admin", "issue", "carol", "--out"])
        .arg(dir.path().join("carol")));
    let seen = admin_serials(&a);
    assert_eq!(seen.len(), 3, "{seen:?}");
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().unwrap().success());
    assert!(!a.join("coordinator/state.redb").exists());
}

/// A CA, and certificates it signed for etcd's server (127.0.0.1) and for
/// a client, written under `dir`; plus a client certificate from another
/// CA.
fn tls_files(dir: &Path) -> (EtcdTls, (PathBuf, PathBuf), (PathBuf, PathBuf)) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, sans: Vec<String>, usage| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, "seaport");
        p.extended_key_usages = vec![usage];
        (
            p.signed_by(&key, issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (ca_pem, issuer) = ca("etcd test CA");
    let (server, server_key) = leaf(
        &issuer,
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(&issuer, vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let (_, other) = ca("another CA");
    let (stranger, stranger_key) = leaf(&other, vec![], ExtendedKeyUsagePurpose::ClientAuth);
    (
        EtcdTls {
            ca: write("ca.pem", ca_pem),
            cert: write("server.pem", server),
            key: write("server.key", server_key),
        },
        (write("client.pem", client), write("client.key", client_key)),
        (
            write("stranger.pem", stranger),
            write("stranger.key", stranger_key),
        ),
    )
}

#[test]
fn the_state_goes_to_etcd_over_mutual_tls_and_a_client_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, (cert, key), (stranger, stranger_key)) = tls_files(dir.path());
    let Some(etcd) = LocalEtcd::start_with(Some(&tls)) else {
        return;
    };
    assert!(etcd.url.starts_with("https://"));
    let init = |root: &Path, cert: &Path, key: &Path| {
        seaport(root)
            .args(["coordinator", "init", "--store", "etcd", "--etcd-endpoints"])
            .arg(&etcd.url)
            .arg("--etcd-ca")
            .arg(&tls.ca)
            .arg("--etcd-cert")
            .arg(cert)
            .arg("--etcd-key")
            .arg(key)
            .output()
            .unwrap()
    };
    let good = dir.path().join("good");
    let out = init(&good, &cert, &key);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(admin_serials(&good).len(), 1);
    // etcd refuses a client certificate it did not issue: nothing is
    // initialised or recorded.
    let bad = dir.path().join("bad");
    let out = init(&bad, &stranger, &stranger_key);
    assert!(!out.status.success());
    assert!(text(&out).contains(&etcd.url), "{}", text(&out));
    assert!(!bad.join("coordinator/store.json").exists());
    // A missing key file is named.
    let out = init(&bad, &cert, &dir.path().join("nope.key"));
    assert!(!out.status.success());
    assert!(text(&out).contains("nope.key"), "{}", text(&out));
}

/// The address a coordinator listens on, from its serve info.
fn serve_addr(root: &Path) -> String {
    let t = std::fs::read_to_string(root.join("coordinator/serve.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    v["listen"].as_str().unwrap().to_string()
}

/// Waits until the log file holds `what` `times` times (false after 15 s).
fn logged(log: &Path, what: &str, times: usize) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.matches(what).count() >= times {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Two coordinators of one site: one leads; the CLI asking the other is
/// sent to the leader; a leader paused past its lease is replaced within
/// the TTL and, woken up, steps down and sends the CLI to the new leader;
/// a leader killed with SIGKILL is replaced too.
#[test]
fn coordinators_of_a_site_elect_one_leader_and_fail_over() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let etcd_flags = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.url.as_str(),
        "--etcd-prefix",
        "/ha/",
    ];
    ok(seaport(&a).args(["coordinator", "init"]).args(etcd_flags));
    std::fs::create_dir_all(b.join("coordinator")).unwrap();
    std::fs::copy(
        a.join("coordinator/site.key"),
        b.join("coordinator/site.key"),
    )
    .unwrap();
    ok(seaport(&b).args(["coordinator", "init"]).args(etcd_flags));
    let serve = |root: &Path, log: &Path| {
        let mut child = seaport(root)
            .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
            .args(["--lease-ttl", "2s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            listening(root, &mut child, Duration::from_secs(30)),
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
        child
    };
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let leading = "leading the site's coordinators";
    let mut serve_a = serve(&a, &log_a);
    assert!(logged(&log_a, leading, 1), "a does not lead");
    let mut serve_b = serve(&b, &log_b);
    let (addr_a, addr_b) = (serve_addr(&a), serve_addr(&b));
    let nodes = |root: &Path, at: &str| {
        let out = seaport(root)
            .args(["nodes", "--coordinator", at])
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    // The follower sends the CLI to the leader.
    let (fine, out) = nodes(&b, &addr_b);
    assert!(fine, "{out}");
    // A leader paused (SIGSTOP) past its lease: the other takes over
    // within the TTL and a second.
    signal(&serve_a, "-STOP");
    let paused = Instant::now();
    assert!(logged(&log_b, leading, 1), "b did not take over");
    assert!(
        paused.elapsed() < Duration::from_secs(5),
        "{:?}",
        paused.elapsed()
    );
    let (fine, out) = nodes(&b, &addr_b);
    assert!(fine, "{out}");
    // Woken up, it steps down and sends the CLI to the new leader.
    signal(&serve_a, "-CONT");
    assert!(
        logged(&log_a, "no longer leading", 1),
        "{}",
        std::fs::read_to_string(&log_a).unwrap()
    );
    let (fine, out) = nodes(&a, &addr_a);
    assert!(fine, "{out}");
    // A leader killed outright: the other leads again, and a CLI given
    // both addresses gets its answer.
    signal(&serve_b, "-KILL");
    let _ = serve_b.wait();
    assert!(logged(&log_a, leading, 2), "a did not take over again");
    let (fine, out) = nodes(&a, &format!("{addr_b},{addr_a}"));
    assert!(fine, "{out}");
    signal(&serve_a, "-TERM");
    assert!(serve_a.wait().unwrap().success());
}
