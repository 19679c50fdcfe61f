//! End to end: hosts get their agent with no manual step.
//!
//! - A fresh host with Debian's real cloud-init and a NoCloud seed holding
//!   `seaport bootstrap cloud-init` user-data boots and shows online.
//! - `seaport bootstrap script` run in existing hosts: a valid token enrolls
//!   (and running it again changes nothing), an expired token and a binary
//!   that does not match the pinned sha256 fail loudly with no agent left
//!   running; `--preinstalled` uses the agent already in the image.
//! - The offline bundle, on hosts cut off from everything but each other,
//!   installs the coordinator, enrolls three hosts and installs a cluster on
//!   them with `seaport run`, as the bundle's README says.
//!
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md); the bundle
//! test also Debian's containerd, runc and docker-registry on the machine.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use seaport_lab::seaport::{self, status_of, Binaries, Coordinator, Node};
use seaport_lab::{lab, testimage, Host, Lab};

/// Cloud-init boots are slow (python); everything else is quicker.
const EVENTUALLY: Duration = Duration::from_secs(240);
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

fn online(name: &str) -> impl Fn(&[Node]) -> bool + '_ {
    move |nodes| status_of(nodes, name) == Some("online")
}

fn agent_state(h: &Host) -> String {
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
    // The user-data names the coordinator at the lab's gateway, known once
    // the lab has its slot.
    let user_data_for = {
        let (bins, root, token) = (bins.clone(), root.clone(), token.token.clone());
        move |gateway: Ipv4Addr| {
            bins.seaport_ok(
                &root,
                &[
                    "bootstrap",
                    "cloud-init",
                    "--token",
                    &token,
                    "--coordinator",
                    &format!("{gateway}:{quic}"),
                ],
            )
        }
    };
    let lab = Lab::builder()
        .hosts(1)
        .cloud_init_user_data_for(user_data_for.clone())
        .up()
        .expect("bring up a lab host with cloud-init");
    let user_data = user_data_for(lab.gateway());
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
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
    let gateway = lab.gateway();
    let quic = format!("{gateway}:{}", seaport::COORDINATOR_PORT);
    let agent = bins.agent.to_string_lossy().to_string();
    let _coordinator = Coordinator::start_with(
        &bins,
        &root,
        &quic,
        &[
            "--bootstrap-listen",
            &format!("{gateway}:7444"),
            "--agent-binary",
            &agent,
        ],
    )
    .expect("start the coordinator");
    wait_bootstrap_endpoint(&root);
    let script_for = |token: &str, extra: &[&str]| {
        let mut args = vec!["bootstrap", "script", "--token", token];
        args.extend_from_slice(extra);
        let line = bins.seaport_ok(&root, &args);
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

/// Cuts `h` off from everything but the lab's hosts, before anything is
/// installed: the machine side of the bridge becomes a blackhole, IPv6 goes
/// off on the host's link (no link-local way to the machine either), and
/// there is no default route. `probe` is a TCP port open on the machine
/// side: reachable before the cut, proving the check can fail.
fn cut_off(h: &Host, gateway: Ipv4Addr, probe: u16) {
    let reach = h.sh(&reach_gateway(gateway, probe)).unwrap();
    assert!(
        reach.success(),
        "{}: the machine side is not reachable before the cut, so the cut proves nothing: {}",
        h.name(),
        reach.stderr
    );
    h.exec_ok(&["ip", "route", "add", "blackhole", &format!("{gateway}/32")])
        .unwrap();
    h.sh("echo 1 > /proc/sys/net/ipv6/conf/host0/disable_ipv6")
        .unwrap();
    assert_cut_off(h, gateway, probe);
}

fn reach_gateway(gateway: Ipv4Addr, probe: u16) -> String {
    format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{gateway}/{probe}'")
}

/// `h` reaches no address outside the lab's hosts.
fn assert_cut_off(h: &Host, gateway: Ipv4Addr, probe: u16) {
    for family in ["-4", "-6"] {
        let default = h
            .exec_ok(&["ip", family, "route", "show", "default"])
            .unwrap()
            .stdout;
        assert!(
            default.trim().is_empty(),
            "{}: a default route: {default}",
            h.name()
        );
    }
    let v6 = h
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "host0"])
        .unwrap()
        .stdout;
    assert!(
        v6.trim().is_empty(),
        "{}: IPv6 is on the link: {v6}",
        h.name()
    );
    let route = h
        .exec_ok(&["ip", "route", "show", "type", "blackhole"])
        .unwrap()
        .stdout;
    assert!(
        route.contains(&gateway.to_string()),
        "{}: no blackhole for the machine side: {route}",
        h.name()
    );
    let reach = h.sh(&reach_gateway(gateway, probe)).unwrap();
    assert!(
        !reach.success(),
        "{}: the machine side is reachable after the cut",
        h.name()
    );
}

/// Runs `seaport ARGS` on the bundle's coordinator host; returns its output.
fn on_coordinator(h: &Host, args: &[&str]) -> String {
    let mut argv = vec!["seaport"];
    argv.extend_from_slice(args);
    let out = h.exec(&argv).unwrap();
    assert!(
        out.success(),
        "seaport {args:?} on {}: {}{}\ncoordinator log:\n{}",
        h.name(),
        out.stdout,
        out.stderr,
        tail(
            &h.journal(Some("seaport-coordinator.service"))
                .unwrap_or_default(),
            60
        )
    );
    out.stdout
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn unit_state(h: &Host, unit: &str) -> String {
    h.exec(&["systemctl", "is-active", unit])
        .unwrap()
        .stdout
        .trim()
        .to_string()
}

/// The offline bundle installs a 3-host cluster in a lab whose hosts reach
/// nothing but each other and the coordinator. The bundle holds the test
/// cluster image (tests/src/testimage.rs). Every host is cut off from the
/// machine before anything is installed; then, following the bundle's
/// README: h1 unpacks it and runs install.sh (the coordinator as a service,
/// the images loaded), h2..h4 get their agent from h1's bootstrap endpoint,
/// and `seaport run` on h1 installs the cluster with master h2 and workers
/// h3 and h4: containerd runs on each, the registry on h2 only, and its
/// images pull on every host; `seaport status` shows it succeeded, and
/// `seaport delete --all --prune` takes it off again.
#[test]
fn offline_bundle_installs_a_three_host_cluster_in_a_lab_cut_off_from_the_machine() {
    testimage::require_machine();
    let mut phase = Instant::now();
    let mut done = |what: &str| {
        eprintln!("phase {what}: {:.1} s", phase.elapsed().as_secs_f64());
        phase = Instant::now();
    };
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let image =
        testimage::build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    let store = tmp.path().join("seaport-root");
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
    bins.seaport_ok(
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
            testimage::IMAGE_NAME,
        ],
    );
    done("build binaries, the test image and the bundle");

    let lab = Lab::up(4).expect("bring up a lab of 4 hosts");
    let (h1, h2, h3, h4) = (lab.host(0), lab.host(1), lab.host(2), lab.host(3));
    let cluster_hosts = [h2, h3, h4];
    // The bundle goes in through the host's namespaces, not the network;
    // then every host loses its way to the machine.
    h1.copy_in(&bundle, "/root/site.tar", 0o600).unwrap();
    let gateway = lab.gateway();
    let probe = std::net::TcpListener::bind((gateway, 0)).unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    for h in lab.hosts() {
        cut_off(h, gateway, probe_port);
    }
    done("lab up, bundle copied, every host cut off");

    // 1. The coordinator, as the bundle's README says.
    h1.exec_ok(&["tar", "-xf", "/root/site.tar", "-C", "/root"])
        .unwrap();
    let readme = h1
        .exec_ok(&["cat", "/root/seaport-bundle/README.md"])
        .unwrap()
        .stdout;
    for step in [
        "sh seaport-bundle/install.sh",
        "seaport images",
        "seaport token create --uses 3 --ttl 1h",
        "seaport bootstrap script --token TOKEN --coordinator COORDINATOR_IP:7443",
        "seaport nodes",
        "seaport run IMAGE -m MASTER_IPS -n NODE_IPS",
        "seaport status",
        "seaport delete --all --prune",
    ] {
        assert!(
            readme.contains(step),
            "the README does not say `{step}`:\n{readme}"
        );
    }
    let install = h1.sh("cd /root && sh seaport-bundle/install.sh").unwrap();
    assert!(
        install.success(),
        "install.sh failed: {}{}\n{}",
        install.stdout,
        install.stderr,
        h1.journal(Some("seaport-coordinator.service"))
            .unwrap_or_default()
    );
    assert_eq!(unit_state(h1, "seaport-coordinator.service"), "active");
    let images = on_coordinator(h1, &["images"]);
    let repo = testimage::IMAGE_NAME.split(':').next().unwrap();
    assert!(images.contains(repo), "{images}");
    done("install.sh on h1");

    // 2. h2..h4 get their agent from h1 alone.
    let token = on_coordinator(
        h1,
        &["token", "create", "--uses", "3", "--ttl", "1h", "--json"],
    );
    let token: seaport::Token = serde_json::from_str(&token).unwrap();
    let coordinator = format!("{}:7443", h1.ip());
    let line = on_coordinator(
        h1,
        &[
            "bootstrap",
            "script",
            "--token",
            &token.token,
            "--coordinator",
            &coordinator,
        ],
    );
    for h in cluster_hosts {
        let run = h.sh(line.trim()).unwrap();
        assert!(
            run.success(),
            "{}: bootstrap from the bundle's coordinator failed: {}",
            h.name(),
            run.stderr
        );
    }
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let nodes = on_coordinator(h1, &["nodes", "--json"]);
        let nodes: Vec<Node> = serde_json::from_str(&nodes).unwrap();
        if cluster_hosts
            .iter()
            .all(|h| status_of(&nodes, h.name()) == Some("online"))
        {
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h2..h4 never all showed online on the bundle's coordinator: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    done("agents on h2..h4 from h1's bootstrap endpoint");

    // 3. The cluster: master h2, workers h3 and h4.
    let master = h2.ip().to_string();
    let workers = format!("{},{}", h3.ip(), h4.ip());
    let out = on_coordinator(
        h1,
        &["run", testimage::IMAGE_NAME, "-m", &master, "-n", &workers],
    );
    assert!(out.contains("cluster my-cluster: succeeded"), "{out}");
    eprintln!("{out}");
    done("seaport run on h1");

    for h in cluster_hosts {
        assert_eq!(
            unit_state(h, "containerd.service"),
            "active",
            "{}",
            h.name()
        );
        let pull = h
            .exec(&[
                "ctr",
                "images",
                "pull",
                "--hosts-dir=/etc/containerd/certs.d",
                "sea.hub:5000/library/seaport-bundled:1.0",
            ])
            .unwrap();
        assert!(
            pull.success(),
            "{}: pulling from the cluster's registry failed: {}{}",
            h.name(),
            pull.stdout,
            pull.stderr
        );
    }
    assert_eq!(unit_state(h2, "seaport-registry.service"), "active");
    for h in [h3, h4] {
        assert_ne!(
            unit_state(h, "seaport-registry.service"),
            "active",
            "{}: a registry runs on a worker",
            h.name()
        );
    }
    let status = on_coordinator(h1, &["status"]);
    let first = status.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("cluster my-cluster ") && first.contains(" succeeded "),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&on_coordinator(h1, &["status", "--json"])).unwrap();
    let c = &json[0];
    assert_eq!(c["state"], "succeeded", "{json}");
    assert_eq!(
        c["manifest_digest"].as_str(),
        Some(image.digest.to_string().as_str()),
        "the cluster is not the bundled image: {json}"
    );
    let mut ips: Vec<&str> = c["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["ip"].as_str())
        .collect();
    ips.sort_unstable();
    let mut want = vec![master.clone(), h3.ip().to_string(), h4.ip().to_string()];
    want.sort_unstable();
    assert_eq!(ips, want, "{json}");
    // Still cut off: the whole install ran inside the lab.
    for h in lab.hosts() {
        assert_cut_off(h, gateway, probe_port);
    }
    done("runtime, registry, pulls and status");

    // 4. Taking the cluster off again.
    let out = on_coordinator(h1, &["delete", "--all", "--prune", "--yes"]);
    assert!(out.contains("cluster my-cluster: deleted"), "{out}");
    for h in cluster_hosts {
        for unit in ["containerd.service", "seaport-registry.service"] {
            assert_ne!(unit_state(h, unit), "active", "{}: {unit}", h.name());
        }
        let data = h
            .exec(&["test", "-e", "/var/lib/seaport/data/my-cluster"])
            .unwrap();
        assert!(!data.success(), "{}: the cluster's data is left", h.name());
    }
    let status = on_coordinator(h1, &["status"]);
    let first = status.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("cluster my-cluster ") && first.contains(" deleted "),
        "{status}"
    );
    done("seaport delete --all --prune");
    drop(probe);
    lab.down().unwrap();
}
