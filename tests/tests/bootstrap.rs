//! End to end: hosts get their agent with no manual step.
//!
//! - A fresh host with Debian's real cloud-init and a NoCloud seed holding
//!   `seaport bootstrap cloud-init` user-data boots and shows online.
//! - `seaport bootstrap script` run in existing hosts: a valid token enrolls
//!   (and running it again changes nothing), an expired token and a binary
//!   that does not match the pinned sha256 fail loudly with no agent left
//!   running; `--preinstalled` uses the agent already in the image.
//!
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use seaport_lab::seaport::{self, status_of, Binaries, Coordinator, Node};
use seaport_lab::{lab, Lab};

/// Cloud-init boots are slow (python); everything else is quicker.
const EVENTUALLY: Duration = Duration::from_secs(240);
const GATEWAY: &str = "198.18.0.1";
const AGENT: &str = "/usr/local/bin/seaport-agent";

fn free_port() -> u16 {
    // Free for both protocols at the moment of asking.
    loop {
        let tcp = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until the bootstrap endpoint has recorded itself under the root.
fn wait_bootstrap_endpoint(root: &Path) {
    let path = root.join("coordinator/bootstrap.json");
    for _ in 0..300 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the bootstrap endpoint did not start ({} missing)",
        path.display()
    );
}

fn seaport_out(bins: &Binaries, root: &Path, args: &[&str]) -> String {
    let out = Command::new(&bins.seaport)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seaport {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn online(name: &str) -> impl Fn(&[Node]) -> bool + '_ {
    move |nodes| status_of(nodes, name) == Some("online")
}

fn agent_state(h: &seaport_lab::host::Host) -> String {
    h.exec(&["systemctl", "is-active", "seaport-agent.service"])
        .unwrap()
        .stdout
        .trim()
        .to_string()
}

#[test]
fn cloud_init_user_data_enrolls_a_fresh_host_at_first_boot() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("coordinator");
    Coordinator::init(&bins, &root).unwrap();
    // The coordinator listens on every address before the lab's bridge
    // exists, so it is there when the host's cloud-init runs at first boot.
    let (quic, https) = (free_port(), free_port());
    let agent = bins.agent.to_string_lossy().to_string();
    let _coordinator = Coordinator::start_with(
        &bins,
        &root,
        &format!("0.0.0.0:{quic}"),
        &[
            "--bootstrap-listen",
            &format!("0.0.0.0:{https}"),
            "--agent-binary",
            &agent,
        ],
    )
    .expect("start the coordinator");
    wait_bootstrap_endpoint(&root);
    let token = seaport::create_token(&bins, &root, "15m", 1).unwrap();
    let user_data = seaport_out(
        &bins,
        &root,
        &[
            "bootstrap",
            "cloud-init",
            "--token",
            &token.token,
            "--coordinator",
            &format!("{GATEWAY}:{quic}"),
        ],
    );
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");

    let lab = Lab::builder()
        .hosts(1)
        .cloud_init_user_data(user_data.clone())
        .up()
        .expect("bring up a lab host with cloud-init");
    let h = lab.host(0);
    let nodes = seaport::wait_for_nodes(
        &bins,
        &root,
        "the cloud-init host to show online",
        EVENTUALLY,
        online(h.name()),
    )
    .unwrap_or_else(|e| {
        let log = h
            .exec(&["cat", "/var/log/cloud-init-output.log"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        panic!("{e}\ncloud-init output:\n{log}")
    });
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(agent_state(h), "active");
    let enabled = h
        .exec(&["systemctl", "is-enabled", "seaport-agent.service"])
        .unwrap();
    assert_eq!(enabled.stdout.trim(), "enabled");
    // Cloud-init itself ran the bootstrap (not a manual step), and the
    // script holding the token is gone once it succeeded.
    let log = h
        .exec_ok(&["cat", "/var/log/cloud-init-output.log"])
        .unwrap()
        .stdout;
    assert!(log.contains("seaport bootstrap: enrolled"), "{log}");
    let left = h
        .exec(&["test", "-e", "/var/lib/seaport-bootstrap/bootstrap.sh"])
        .unwrap();
    assert!(
        !left.success(),
        "the bootstrap script with the token was left on the host"
    );

    // Running the same user-data's script again changes nothing, even
    // though its token is spent.
    let before = h
        .exec_ok(&["sha256sum", "/var/lib/seaport-agent/identity/node.pem"])
        .unwrap()
        .stdout;
    let script = user_data
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("content: |"))
        .skip(1)
        .take_while(|l| l.starts_with("      ") || l.is_empty())
        .map(|l| l.strip_prefix("      ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    h.write_file("/root/bootstrap-again.sh", script.as_bytes(), 0o700)
        .unwrap();
    let again = h.exec(&["sh", "/root/bootstrap-again.sh"]).unwrap();
    assert!(again.success(), "re-run failed: {}", again.stderr);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    let after = h
        .exec_ok(&["sha256sum", "/var/lib/seaport-agent/identity/node.pem"])
        .unwrap()
        .stdout;
    assert_eq!(before, after, "re-running replaced the node's certificate");
    let nodes = seaport::nodes(&bins, &root).unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    lab.down().unwrap();
}

#[test]
fn bootstrap_script_enrolls_and_refuses_expired_tokens_and_tampered_binaries() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("coordinator");
    Coordinator::init(&bins, &root).unwrap();
    let quic = format!("{GATEWAY}:{}", seaport::COORDINATOR_PORT);
    let agent = bins.agent.to_string_lossy().to_string();
    let _coordinator = Coordinator::start_with(
        &bins,
        &root,
        &quic,
        &[
            "--bootstrap-listen",
            &format!("{GATEWAY}:7444"),
            "--agent-binary",
            &agent,
        ],
    )
    .expect("start the coordinator");
    wait_bootstrap_endpoint(&root);
    let script_for = |token: &str, extra: &[&str]| {
        let mut args = vec!["bootstrap", "script", "--token", token];
        args.extend_from_slice(extra);
        let line = seaport_out(&bins, &root, &args);
        assert_eq!(line.trim().lines().count(), 1, "not one line: {line}");
        line.trim().to_string()
    };
    let (h1, h2, h3) = (lab.host(0), lab.host(1), lab.host(2));

    // A valid token: the host enrolls and its agent runs as a service.
    let token = seaport::create_token(&bins, &root, "15m", 2).unwrap();
    let line = script_for(&token.token, &[]);
    let run = h1.sh(&line).unwrap();
    assert!(
        run.success(),
        "bootstrap failed: {}{}",
        run.stdout,
        run.stderr
    );
    seaport::wait_for_nodes(&bins, &root, "h1 online", EVENTUALLY, online(h1.name())).unwrap();
    assert_eq!(agent_state(h1), "active");
    let before = h1
        .exec_ok(&[
            "sha256sum",
            "/var/lib/seaport-agent/identity/node.pem",
            AGENT,
        ])
        .unwrap()
        .stdout;
    // Again: nothing changes (no new enrollment, same binary and identity).
    let again = h1.sh(&line).unwrap();
    assert!(again.success(), "{}", again.stderr);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    let after = h1
        .exec_ok(&[
            "sha256sum",
            "/var/lib/seaport-agent/identity/node.pem",
            AGENT,
        ])
        .unwrap()
        .stdout;
    assert_eq!(before, after);

    // An expired token: the endpoint refuses, the script says why and exits
    // non-zero, and nothing is installed or running.
    let expired = seaport::create_token(&bins, &root, "1s", 1).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let run = h2.sh(&script_for(&expired.token, &[])).unwrap();
    assert!(
        !run.success(),
        "an expired token bootstrapped: {}",
        run.stderr
    );
    assert!(run.stderr.contains("expired"), "{}", run.stderr);
    assert!(!h2.exec(&["test", "-e", AGENT]).unwrap().success());
    assert_ne!(agent_state(h2), "active");

    // A binary that is not the one pinned: refused before installing.
    let other = tmp.path().join("other-agent");
    let mut bytes = std::fs::read(&bins.agent).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&other, bytes).unwrap();
    let token3 = seaport::create_token(&bins, &root, "15m", 1).unwrap();
    let pinned_elsewhere = script_for(&token3.token, &["--agent-binary", other.to_str().unwrap()]);
    let run = h3.sh(&pinned_elsewhere).unwrap();
    assert!(
        !run.success(),
        "a mismatched binary was installed: {}",
        run.stderr
    );
    assert!(run.stderr.contains("refusing to install"), "{}", run.stderr);
    assert!(!h3.exec(&["test", "-e", AGENT]).unwrap().success());
    assert_ne!(agent_state(h3), "active");

    // The agent already in the image (--preinstalled): no download.
    h3.copy_in(&bins.agent, AGENT, 0o755).unwrap();
    let run = h3
        .sh(&script_for(&token3.token, &["--preinstalled"]))
        .unwrap();
    assert!(run.success(), "{}", run.stderr);
    assert!(run.stderr.contains("already installed"), "{}", run.stderr);
    let nodes = seaport::wait_for_nodes(&bins, &root, "h1 and h3 online", EVENTUALLY, |n| {
        online(h1.name())(n) && online(h3.name())(n)
    })
    .unwrap();
    assert_eq!(status_of(&nodes, h2.name()), None, "{nodes:?}");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    lab.down().unwrap();
}

/// The offline bundle on a lab whose hosts reach nothing but each other:
/// unpacked on a clean host and installed as its README says, it runs the
/// coordinator as a service and loads the images; a second host then gets
/// its agent from that coordinator alone.
#[test]
fn offline_bundle_installs_the_coordinator_and_images_on_a_clean_host() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("etc")).unwrap();
    std::fs::write(ctx.join("etc/site.conf"), "offline\n").unwrap();
    std::fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY etc etc/\n").unwrap();
    let store = tmp.path().join("store");
    let kubefile = ctx.join("Kubefile");
    seaport_out(
        &bins,
        &store,
        &[
            "build",
            "-f",
            kubefile.to_str().unwrap(),
            "-t",
            "site:v1",
            ctx.to_str().unwrap(),
        ],
    );
    let bundle = tmp.path().join("site.tar");
    // SEAPORT_BUNDLE_BIN_DIR names other binaries to bundle, e.g. the static
    // ones from packaging/build-static.sh (target/static).
    let (bundled_seaport, bundled_agent) = match std::env::var_os("SEAPORT_BUNDLE_BIN_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            (dir.join("seaport"), dir.join("seaport-agent"))
        }
        None => (bins.seaport.clone(), bins.agent.clone()),
    };
    seaport_out(
        &bins,
        &store,
        &[
            "save",
            "--bundle",
            "-o",
            bundle.to_str().unwrap(),
            "--seaport-binary",
            bundled_seaport.to_str().unwrap(),
            "--agent-binary",
            bundled_agent.to_str().unwrap(),
            "site:v1",
        ],
    );

    let lab = Lab::up(2).expect("bring up a lab of 2 hosts");
    let (h1, h2) = (lab.host(0), lab.host(1));
    // Follow the bundle's README on h1.
    h1.copy_in(&bundle, "/root/site.tar", 0o600).unwrap();
    h1.exec_ok(&["tar", "-xf", "/root/site.tar", "-C", "/root"])
        .unwrap();
    let readme = h1
        .exec_ok(&["cat", "/root/seaport-bundle/README.md"])
        .unwrap()
        .stdout;
    assert!(readme.contains("sh seaport-bundle/install.sh"), "{readme}");
    let install = h1.sh("cd /root && sh seaport-bundle/install.sh").unwrap();
    assert!(
        install.success(),
        "install.sh failed: {}{}\n{}",
        install.stdout,
        install.stderr,
        h1.journal(Some("seaport-coordinator.service"))
            .unwrap_or_default()
    );
    let active = h1
        .exec(&["systemctl", "is-active", "seaport-coordinator.service"])
        .unwrap();
    assert_eq!(active.stdout.trim(), "active");
    let images = h1.exec_ok(&["seaport", "images"]).unwrap().stdout;
    assert!(images.contains("site"), "{images}");

    // h2 gets its agent from h1 alone.
    let token = h1
        .exec_ok(&["seaport", "token", "create", "--json"])
        .unwrap()
        .stdout;
    let token: seaport::Token = serde_json::from_str(&token).unwrap();
    let line = h1
        .exec_ok(&[
            "seaport",
            "bootstrap",
            "script",
            "--token",
            &token.token,
            "--coordinator",
            &format!("{}:7443", h1.ip()),
        ])
        .unwrap()
        .stdout;
    let run = h2.sh(line.trim()).unwrap();
    assert!(
        run.success(),
        "bootstrap from the bundle's coordinator failed: {}",
        run.stderr
    );
    let deadline = std::time::Instant::now() + EVENTUALLY;
    loop {
        let nodes = h1.exec_ok(&["seaport", "nodes", "--json"]).unwrap().stdout;
        let nodes: Vec<Node> = serde_json::from_str(&nodes).unwrap();
        if status_of(&nodes, h2.name()) == Some("online") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h2 never showed online on the bundle's coordinator: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.down().unwrap();
}
