use super::*;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const TOKEN: &str = "abcdef.0123456789abcdef";

/// A master: CA, serving certificate, uploaded certificates, a token, and
/// the stand-in on a loopback port.
fn master(dir: &Path, name: &str) -> Server {
    let pki = PkiDir::new(&dir.join("pki"));
    pki.ensure_ca().unwrap();
    pki.issue_serving(name, &["127.0.0.1".parse().unwrap()], &[])
        .unwrap();
    let state = dir.join("state");
    certs::store(&state, &certs::seal_dir(KEY, &dir.join("pki")).unwrap()).unwrap();
    certs::add_token(&state, TOKEN).unwrap();
    Server::start(ServerOptions {
        pki: dir.join("pki"),
        state,
        listen: "127.0.0.1:0".parse().unwrap(),
        host: name.into(),
    })
    .unwrap()
}

fn ep(s: &Server) -> String {
    format!("127.0.0.1:{}", s.addr().port())
}

fn ca(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap()
}

#[test]
fn healthz_answers_ok_over_verified_tls_and_names_the_host() {
    let d = tempfile::tempdir().unwrap();
    let s = master(d.path(), "master-a");
    let a = get(&ep(&s), "/healthz", &Trust::Ca(ca(d.path())), None).unwrap();
    assert_eq!((a.code, a.body.as_str()), (200, "ok"));
    assert_eq!(a.host.as_deref(), Some("master-a"));
    let a = get(&ep(&s), "/api/v1/pods", &Trust::Ca(ca(d.path())), None).unwrap();
    assert_eq!(a.code, 404);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "NotFound");
    // An unknown token is refused, even on /healthz.
    let a = get(
        &ep(&s),
        "/healthz",
        &Trust::Ca(ca(d.path())),
        Some("zzzzzz.zzzzzzzzzzzzzzzz"),
    )
    .unwrap();
    assert_eq!(a.code, 401);
}

#[test]
fn another_ca_does_not_verify_the_stand_in() {
    let d = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let s = master(d.path(), "master-a");
    PkiDir::new(&other.path().join("pki")).ensure_ca().unwrap();
    let e = get(&ep(&s), "/healthz", &Trust::Ca(ca(other.path())), None).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn a_joining_master_gets_the_ca_and_its_key_with_token_and_certificate_key() {
    let d = tempfile::tempdir().unwrap();
    let s = master(d.path(), "master-a");
    let hash = pki::ca_hash(&ca(d.path())).unwrap().to_string();
    let j = tempfile::tempdir().unwrap();
    let jpki = PkiDir::new(&j.path().join("pki"));
    let disc = Discovery {
        endpoint: ep(&s),
        token: TOKEN.into(),
        ca_hashes: vec![hash.clone()],
        certificate_key: Some(KEY.into()),
    };
    discover(&disc, &jpki, &j.path().join("state")).unwrap();
    assert_eq!(
        std::fs::read(jpki.ca_key()).unwrap(),
        std::fs::read(d.path().join("pki/ca.key")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(jpki.ca_cert()).unwrap(),
        ca(d.path())
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(jpki.ca_key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The joined master can hand the certificates on in turn.
    assert!(certs::load(&j.path().join("state")).unwrap().is_some());

    // A wrong certificate key: nothing written.
    let k = tempfile::tempdir().unwrap();
    let kpki = PkiDir::new(&k.path().join("pki"));
    let wrong = Discovery {
        certificate_key: Some(KEY.replace('0', "1")),
        ..disc.clone()
    };
    let e = discover(&wrong, &kpki, &k.path().join("state")).unwrap_err();
    assert!(e.to_string().contains("certificate key"), "{e}");
    assert!(!kpki.ca_key().exists() && !kpki.ca_cert().exists());

    // A wrong token: refused by the server.
    let bad_token = Discovery {
        token: "zzzzzz.zzzzzzzzzzzzzzzz".into(),
        ..disc
    };
    let e = discover(&bad_token, &kpki, &k.path().join("state")).unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    assert!(!kpki.ca_key().exists());
}

#[test]
fn a_worker_refuses_a_ca_that_is_not_pinned() {
    let d = tempfile::tempdir().unwrap();
    let s = master(d.path(), "master-a");
    let w = tempfile::tempdir().unwrap();
    let wpki = PkiDir::new(&w.path().join("pki"));
    let pin = "sha256:455be31d60b377cafb5e23a7efcfdbaae2953a46f4e19fff5bbc18523f97bb39";
    let disc = Discovery {
        endpoint: ep(&s),
        token: TOKEN.into(),
        ca_hashes: vec![pin.into()],
        certificate_key: None,
    };
    let e = discover(&disc, &wpki, &w.path().join("state")).unwrap_err();
    assert!(matches!(e, ApiError::NotPinned { .. }), "{e}");
    assert!(e.to_string().contains(pin), "{e}");
    assert!(!wpki.ca_cert().exists());
    // With the right pin it writes ca.crt only.
    let good = Discovery {
        ca_hashes: vec![pki::ca_hash(&ca(d.path())).unwrap().to_string()],
        ..disc
    };
    discover(&good, &wpki, &w.path().join("state")).unwrap();
    assert_eq!(
        std::fs::read_to_string(wpki.ca_cert()).unwrap(),
        ca(d.path())
    );
    assert!(!wpki.ca_key().exists());
}

#[test]
fn the_serving_certificate_names_what_the_cluster_reaches_it_by() {
    let d = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(d.path());
    assert!(pki.ensure_ca().unwrap());
    assert!(!pki.ensure_ca().unwrap(), "an existing CA is kept");
    let names = pki
        .issue_serving(
            "h1",
            &["198.18.0.11".parse().unwrap()],
            &["extra.example".into()],
        )
        .unwrap();
    for n in [
        "h1",
        "198.18.0.11",
        "apiserver.cluster.local",
        "10.103.97.2",
        "10.96.0.1",
        "localhost",
        "127.0.0.1",
        "extra.example",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
    }
    use std::os::unix::fs::PermissionsExt;
    for (f, m) in [
        (pki.ca_key(), 0o600),
        (pki.serving_key(), 0o600),
        (pki.ca_cert(), 0o644),
    ] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, m, "{}", f.display());
    }
}

#[test]
fn request_heads_parse() {
    let r =
        parse_head("GET /healthz?verbose HTTP/1.1\r\nHost: x\r\nauthorization: Bearer a.b\r\n\r\n")
            .unwrap();
    assert_eq!(
        r,
        Request {
            method: "GET".into(),
            path: "/healthz".into(),
            bearer: Some("a.b".into())
        }
    );
}
