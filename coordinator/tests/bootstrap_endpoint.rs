//! The bootstrap endpoint over real HTTPS on loopback, reached with curl
//! the way the bootstrap script reaches it (CA pinned, `--connect-to`):
//! the agent only for a token that can still enroll, refusals that say why,
//! and a bootstrap script that a host can run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use seaport::bootstrap;
use seaport::state::{RedbStore, StateStore};
use seaport_shared::pki::JoinToken;

struct Answer {
    code: String,
    body: Vec<u8>,
    headers: String,
}

/// `curl` as the script runs it; returns the HTTP status, body and headers.
fn fetch(root: &Path, port: u16, path: &str, token: Option<&str>) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--proto", "=https"])
        .arg("--cacert")
        .arg(root.join("coordinator/ca.pem"))
        .arg("--capath")
        .arg(dir.path())
        .arg("--connect-to")
        .arg(format!("coordinator.seaport:{port}:127.0.0.1:{port}"))
        .args(["--write-out", "%{http_code}", "--output"])
        .arg(&body)
        .arg("--dump-header")
        .arg(&headers);
    if let Some(t) = token {
        let auth = dir.path().join("auth");
        std::fs::write(&auth, format!("Authorization: Bearer {t}\n")).unwrap();
        c.arg("--header").arg(format!("@{}", auth.display()));
    }
    c.arg(format!("https://coordinator.seaport:{port}{path}"));
    let out = c.output().expect("curl runs (Debian package curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Answer {
        code: String::from_utf8_lossy(&out.stdout).to_string(),
        body: std::fs::read(&body).unwrap_or_default(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_serves_the_agent_only_to_valid_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    seaport::ca::init(&root).unwrap();
    let agent = tmp.path().join("seaport-agent");
    std::fs::write(&agent, b"#!/bin/sh\necho pretend agent\n").unwrap();
    let want_sha = bootstrap::sha256_hex(&std::fs::read(&agent).unwrap());

    let store = Arc::new(RedbStore::open(&root.join("coordinator/state.redb")).unwrap());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let valid = JoinToken::generate();
    store.add_token(&valid, now, 600, 1, None).unwrap();
    let expired = JoinToken::generate();
    store.add_token(&expired, now - 100, 10, 1, None).unwrap();
    let checker = {
        let store = store.clone();
        move |t: &JoinToken| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            store.check_token(t, now).map(|_| ())
        }
    };
    let server = bootstrap::bind(&root, "127.0.0.1:0".parse().unwrap(), &agent, 7443, checker)
        .await
        .unwrap();
    let port = server.local_addr().port();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let root2 = root.clone();
    let valid_s = valid.to_string();
    let expired_s = expired.to_string();
    tokio::task::spawn_blocking(move || {
        let root = root2;
        // No token, a made-up token, an expired token: refused, with reasons.
        let a = fetch(&root, port, "/v1/agent", None);
        assert_eq!(a.code, "401");
        assert!(String::from_utf8_lossy(&a.body).contains("join token is required"));
        let a = fetch(&root, port, "/v1/agent", Some("abcdef.0123456789abcdef"));
        assert_eq!(a.code, "403");
        assert!(String::from_utf8_lossy(&a.body).contains("not valid"));
        let a = fetch(&root, port, "/v1/agent", Some(&expired_s));
        assert_eq!(a.code, "403");
        assert!(
            String::from_utf8_lossy(&a.body).contains("expired"),
            "{}",
            String::from_utf8_lossy(&a.body)
        );

        // A valid token: the binary, byte for byte, with its digest.
        let a = fetch(&root, port, "/v1/agent", Some(&valid_s));
        assert_eq!(a.code, "200");
        assert_eq!(bootstrap::sha256_hex(&a.body), want_sha);
        assert!(a
            .headers
            .to_ascii_lowercase()
            .contains(&format!("x-seaport-agent-sha256: {want_sha}")));
        // Checking did not spend the token's only use.
        let a = fetch(&root, port, "/v1/agent", Some(&valid_s));
        assert_eq!(a.code, "200");

        // The script for this endpoint: pins the CA and the digest, no token.
        let a = fetch(&root, port, "/v1/bootstrap.sh", Some(&valid_s));
        assert_eq!(a.code, "200");
        let script = String::from_utf8(a.body).unwrap();
        assert!(script.contains(&format!("AGENT_SHA256='{want_sha}'")));
        assert!(script.contains(&format!("BOOTSTRAP='127.0.0.1:{port}'")));
        assert!(script.contains("COORDINATOR='127.0.0.1:7443'"));
        assert!(script.contains("TOKEN=''"));
        assert!(!script.contains(&valid_s));

        let a = fetch(&root, port, "/nope", Some(&valid_s));
        assert_eq!(a.code, "404");
    })
    .await
    .unwrap();
    let _ = stop.send(true);
    task.await.unwrap();
}

/// Opens `count` TCP connections to the endpoint from `from` and never
/// sends a byte on them (the slowest possible clients).
async fn idle_connections(
    from: std::net::IpAddr,
    port: u16,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..count {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind((from, 0).into()).unwrap();
        out.push(s.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }
    out
}

/// How many of `conns` the server has not closed.
fn still_open(conns: &[tokio::net::TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|c| match c.try_read(&mut buf) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_do_not_stop_an_honest_download() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    seaport::ca::init(&root).unwrap();
    let agent = tmp.path().join("seaport-agent");
    std::fs::write(&agent, b"#!/bin/sh\necho pretend agent\n").unwrap();
    let want_sha = bootstrap::sha256_hex(&std::fs::read(&agent).unwrap());
    let store = Arc::new(RedbStore::open(&root.join("coordinator/state.redb")).unwrap());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let valid = JoinToken::generate();
    store.add_token(&valid, now, 600, 1, None).unwrap();
    let checker = {
        let store = store.clone();
        move |t: &JoinToken| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            store.check_token(t, now).map(|_| ())
        }
    };
    let server = bootstrap::bind(&root, "127.0.0.1:0".parse().unwrap(), &agent, 7443, checker)
        .await
        .unwrap();
    let port = server.local_addr().port();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    // Someone without a token opens 200 connections from 127.0.0.2 and
    // sends nothing. The endpoint keeps a few of them (4 served, 8
    // waiting, a few more while the endpoint takes them from the kernel on
    // a busy machine) and closes the rest without any TLS work.
    let attacker: std::net::IpAddr = [127, 0, 0, 2].into();
    let flood = idle_connections(attacker, port, 200).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let open = still_open(&flood);
    assert!(
        open <= 16,
        "{open} idle connections of one source kept open"
    );

    // An honest host elsewhere downloads the agent meanwhile, while the
    // attacker keeps its connections and opens more.
    let more = idle_connections(attacker, port, 100).await;
    let root2 = root.clone();
    let token = valid.to_string();
    let got = tokio::task::spawn_blocking(move || fetch(&root2, port, "/v1/agent", Some(&token)))
        .await
        .unwrap();
    assert_eq!(got.code, "200");
    assert_eq!(bootstrap::sha256_hex(&got.body), want_sha);

    // The idle ones it served are closed after the 5 s request deadline.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let open = still_open(&flood) + still_open(&more);
    assert!(open <= 16, "{open} idle connections still open after 7 s");
    drop((flood, more));
    let _ = stop.send(true);
    task.await.unwrap();
}
