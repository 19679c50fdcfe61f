//! `seaport login`, `logout`, `push`, `pull` as a user runs them, against a
//! real docker-registry with TLS (test CA) and htpasswd auth.

#[path = "../../rootfs/tests/registry_support/server.rs"]
mod server;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use server::*;

fn seaport(root: &Path, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seaport"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("SEAPORT_ROOT")
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

#[test]
fn login_push_pull_logout_as_a_user_runs_them() {
    let storage = tempfile::tempdir().unwrap();
    let reg = TestRegistry::tls_auth(storage.path());
    let ca = reg.ca_file.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let docker = work.path().join("docker");
    let root = work.path().join("root");

    // Wrong password: a clear error, and nothing stored.
    let out = seaport(
        &root,
        &docker,
        &[
            "login",
            &reg.addr,
            "-u",
            USER,
            "-p",
            "nope",
            "--ca-file",
            ca,
        ],
    );
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains(&format!("authentication to {} failed", reg.addr)),
        "{msg}"
    );
    assert!(!msg.contains("nope"), "the password leaks: {msg}");
    assert!(!docker.join("config.json").exists());

    let out = seaport(
        &root,
        &docker,
        &[
            "login",
            &reg.addr,
            "-u",
            USER,
            "-p",
            PASSWORD,
            "--ca-file",
            ca,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = docker.join("config.json");
    let mode = fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    let auth = json["auths"][&reg.addr]["auth"]
        .as_str()
        .unwrap()
        .to_string();
    let decoded = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {auth} | base64 -d")),
    );
    assert_eq!(decoded, format!("{USER}:{PASSWORD}"));

    // Build a small cluster image, push it with the stored credentials.
    let context = work.path().join("context");
    fs::create_dir_all(context.join("etc")).unwrap();
    fs::write(
        context.join("etc/kubeadm.yml"),
        "kind: ClusterConfiguration\n",
    )
    .unwrap();
    fs::write(context.join("Kubefile"), "FROM scratch\nCOPY etc etc\n").unwrap();
    let name = format!("{}/clusters/tiny:v1", reg.addr);
    let out = seaport(
        &root,
        &docker,
        &["build", "-t", &name, context.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = seaport(&root, &docker, &["push", &name, "--ca-file", ca]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Pushed"), "{}", text(&out));

    // Pull into another root and compare what `inspect` shows.
    let root2 = work.path().join("root2");
    let out = seaport(&root2, &docker, &["pull", &name, "--ca-file", ca]);
    assert!(out.status.success(), "{}", text(&out));
    let a = seaport(&root, &docker, &["images", "--json"]);
    let b = seaport(&root2, &docker, &["images", "--json"]);
    let digests = |o: &Output| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut d: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.get("digest").and_then(|d| d.as_str()).map(str::to_string))
            .collect();
        d.sort();
        d
    };
    assert!(!digests(&a).is_empty());
    assert_eq!(digests(&a), digests(&b));

    // Without the CA the registry is not trusted, and the error says what to do.
    let out = seaport(&root2, &docker, &["pull", &name]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--ca-file"), "{}", text(&out));

    // After logout the registry refuses the pull.
    let out = seaport(&root, &docker, &["logout", &reg.addr]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    assert!(json["auths"].get(&reg.addr).is_none());
    let out = seaport(&root2, &docker, &["pull", &name, "--ca-file", ca]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no credentials are stored"),
        "{}",
        text(&out)
    );
}
