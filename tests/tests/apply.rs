//! End to end on 3 lab hosts, without the coordinator: the test cluster image
//! (tests/src/testimage.rs) applied by `seaport-agent apply` with roles
//! master0, node, node. containerd runs on all, the registry on master0;
//! the image from images/ and the one named in manifests/imageList pull
//! with `ctr` on every host through sea.hub:5000 (plain HTTP and through the
//! hosts.toml mirrors); the kubeadm double ran init on master0 and join on
//! the others with master0's join data. A second apply changes nothing; an
//! agent killed in the middle of the kubeadm step resumes; `reset --prune`
//! leaves /etc, /usr and systemd's unit state as they were.
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md and docs/install.md).

use std::time::{Duration, Instant};

use seaport_lab::seaport::{Binaries, AGENT_BIN_PATH};
use seaport_lab::testimage::{self, LISTED_REPO, LISTED_TAG};
use seaport_lab::{lab, wait, Host, Lab};

const CLUSTER: &str = "lab";
const LAYOUT: &str = "/root/image";

struct Phases(Instant);

impl Phases {
    fn done(&mut self, what: &str) {
        eprintln!("phase {what}: {:.1} s", self.0.elapsed().as_secs_f64());
        self.0 = Instant::now();
    }
}

/// What reset must put back: every path under /etc and /usr with its type,
/// mode and link target, every file's sha256, and systemd's unit files and
/// loaded units.
const SNAPSHOT: &str = r#"set -e
find /etc /usr -xdev -printf '%p %y %m %u:%g %l\n' | LC_ALL=C sort
find /etc /usr -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
systemctl list-unit-files --no-legend --no-pager | LC_ALL=C sort
systemctl list-units --all --no-legend --no-pager --plain | grep -v -e '\.scope ' -e '\.mount ' | awk '{print $1, $2, $3}' | LC_ALL=C sort
"#;

fn snapshot(h: &Host) -> String {
    h.exec_ok(&["bash", "-c", SNAPSHOT]).unwrap().stdout
}

fn diff(before: &str, after: &str) -> String {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let mut out = String::new();
    for l in b.difference(&a) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in a.difference(&b) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

fn apply_args(h: &Host, role: &str, master0: &Host) -> Vec<String> {
    let mut a: Vec<String> = [
        AGENT_BIN_PATH,
        "apply",
        "--image-layout",
        LAYOUT,
        "--image",
        testimage::IMAGE_NAME,
        "--cluster",
        CLUSTER,
        "--role",
        role,
    ]
    .map(String::from)
    .to_vec();
    a.extend([
        "--host-ip".into(),
        h.ip().to_string(),
        "--masters".into(),
        master0.ip().to_string(),
    ]);
    if role == "master0" {
        a.extend(["--join-data-out".into(), "/root/join.json".into()]);
    } else {
        a.extend(["--join-data".into(), "/root/join.json".into()]);
    }
    a
}

fn apply(h: &Host, role: &str, master0: &Host) -> String {
    let out = h.exec(&apply_args(h, role, master0)).unwrap();
    assert!(
        out.success(),
        "{}: apply as {role} failed ({}):\n{}\n{}",
        h.name(),
        out.code,
        out.stdout,
        out.stderr
    );
    eprintln!("{} ({role}):\n{}", h.name(), out.stdout);
    out.stdout
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_cluster_image_is_applied_on_three_hosts_resumes_and_resets_cleanly() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let missing = testimage::missing_machine_files();
    assert!(
        missing.is_empty(),
        "install Debian's containerd, runc and docker-registry: missing {missing:?}"
    );
    let mut phases = Phases(Instant::now());
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let image =
        testimage::build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    phases.done("build binaries and the test image");
    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    phases.done("lab up");
    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let mut before = Vec::new();
    for h in lab.hosts() {
        h.copy_in(&bins.agent, AGENT_BIN_PATH, 0o755).unwrap();
        h.copy_in(&image.layout_tar, "/root/image-layout.tar", 0o644)
            .unwrap();
        h.exec_ok(&[
            "sh",
            "-c",
            "mkdir -p /root/image && tar -xf /root/image-layout.tar -C /root/image && rm /root/image-layout.tar",
        ])
        .unwrap();
        before.push(snapshot(h));
    }
    phases.done("copy the agent and the image, snapshots");

    // master0, then a node with its join data.
    let out = apply(m0, "master0", m0);
    assert!(out.contains("applied: 9 steps run, 0 skipped"), "{out}");
    let join = m0.exec_ok(&["cat", "/root/join.json"]).unwrap().stdout;
    let join: serde_json::Value = serde_json::from_str(&join).unwrap();
    for h in [n1, n2] {
        h.write_file("/root/join.json", join.to_string().as_bytes(), 0o600)
            .unwrap();
    }
    apply(n1, "node", m0);
    phases.done("apply master0 and node 1");

    // Node 2: the agent dies while kubeadm join runs; a rerun resumes there.
    n2.exec_ok(&["touch", "/run/kubeadm-double.hold"]).unwrap();
    let bg = format!(
        "setsid sh -c 'echo $$ > /root/apply.pid; exec {} > /root/apply-killed.log 2>&1' < /dev/null > /dev/null 2>&1 &",
        shell_quote(&apply_args(n2, "node", m0)).replace('\'', "'\\''")
    );
    n2.exec_ok(&["sh", "-c", &bg]).unwrap();
    wait::until(
        "the kubeadm double to hold in node 2",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || {
            let o = n2.exec(&["cat", "/run/kubeadm-double.waiting"]).unwrap();
            if o.success() {
                Ok(())
            } else {
                let log = n2.exec(&["cat", "/root/apply-killed.log"]).unwrap();
                Err(log.stdout)
            }
        },
    )
    .unwrap();
    n2.exec_ok(&[
        "sh",
        "-c",
        "kill -9 $(cat /root/apply.pid) $(cat /run/kubeadm-double.waiting); rm -f /run/kubeadm-double.hold /run/kubeadm-double.waiting",
    ])
    .unwrap();
    let killed = n2
        .exec_ok(&["cat", "/root/apply-killed.log"])
        .unwrap()
        .stdout;
    assert!(killed.contains("kubeadm          running"), "{killed}");
    let resumed = apply(n2, "node", m0);
    for step in ["rootfs", "runtime", "registry-access", "hook-init"] {
        assert!(
            resumed.contains(&format!("{step:<16} skipped (done)")),
            "{step} was not skipped:\n{resumed}"
        );
    }
    assert!(
        resumed.contains("kubeadm          resuming (attempt 2)"),
        "{resumed}"
    );
    let calls = n2
        .exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout;
    let lines: Vec<&str> = calls.lines().collect();
    assert!(
        lines.len() == 3
            && lines[0].starts_with("join --config")
            && lines[1] == "reset -f"
            && lines[2].starts_with("join --config"),
        "node 2 kubeadm calls: {calls}"
    );
    phases.done("apply node 2 with a kill in the kubeadm step");

    // Runtime and registry; both images pull on every host.
    let repo = image.listed_domain.clone();
    for h in lab.hosts() {
        let active = h
            .exec(&["systemctl", "is-active", "containerd.service"])
            .unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}", h.name());
        let listed = format!("{LISTED_REPO}:{LISTED_TAG}");
        let pulls: [(&str, [String; 2]); 4] = [
            (
                "bundled, plain HTTP",
                [
                    "--plain-http".into(),
                    "sea.hub:5000/library/seaport-bundled:1.0".into(),
                ],
            ),
            (
                "listed, plain HTTP",
                ["--plain-http".into(), format!("sea.hub:5000/{listed}")],
            ),
            (
                "bundled, docker.io through the hosts.toml mirror",
                [
                    "--hosts-dir=/etc/containerd/certs.d".into(),
                    "docker.io/library/seaport-bundled:1.0".into(),
                ],
            ),
            (
                "listed, its own domain through the hosts.toml mirror",
                [
                    "--hosts-dir=/etc/containerd/certs.d".into(),
                    format!("{repo}/{listed}"),
                ],
            ),
        ];
        for (what, args) in pulls {
            let mut argv: Vec<String> = ["ctr", "images", "pull"].map(String::from).to_vec();
            argv.extend(args);
            let out = h.exec(&argv).unwrap();
            assert!(
                out.success(),
                "{}: pulling {what} failed: {}{}",
                h.name(),
                out.stdout,
                out.stderr
            );
        }
    }
    let reg = m0
        .exec(&["systemctl", "is-active", "seaport-registry.service"])
        .unwrap();
    assert_eq!(reg.stdout.trim(), "active");
    for h in [n1, n2] {
        let reg = h
            .exec(&["systemctl", "is-active", "seaport-registry.service"])
            .unwrap();
        assert_ne!(
            reg.stdout.trim(),
            "active",
            "{}: a registry runs on a node",
            h.name()
        );
    }
    phases.done("runtime, registry and pulls on every host");

    // The kubeadm double: init on master0, join with master0's join data.
    let init = m0
        .exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout;
    assert!(
        init.starts_with("init --config") && init.contains("--upload-certs"),
        "{init}"
    );
    let token = join["token"].as_str().unwrap();
    let hash = join["ca_cert_hashes"][0].as_str().unwrap();
    assert_eq!(join["master0_ip"].as_str().unwrap(), m0.ip().to_string());
    let init_cfg = m0
        .exec_ok(&["cat", "/var/lib/kubeadm-double/init.yaml"])
        .unwrap()
        .stdout;
    assert!(init_cfg.contains(&format!("token: {token}")), "{init_cfg}");
    for h in [n1, n2] {
        let cfg = h
            .exec_ok(&["cat", "/var/lib/kubeadm-double/join.yaml"])
            .unwrap()
            .stdout;
        assert!(
            cfg.contains(&format!("token: {token}")),
            "{}: {cfg}",
            h.name()
        );
        assert!(cfg.contains(&format!("- {hash}")), "{}: {cfg}", h.name());
        assert!(
            cfg.contains(&format!("apiServerEndpoint: {}:6443", m0.ip())),
            "{cfg}"
        );
    }

    // Again: nothing runs.
    for (h, role) in [(m0, "master0"), (n1, "node"), (n2, "node")] {
        let out = apply(h, role, m0);
        assert!(out.contains("applied: 0 steps run"), "{}: {out}", h.name());
    }
    phases.done("second apply on every host");

    // Reset: every host as before.
    for (i, h) in lab.hosts().iter().enumerate() {
        let out = h
            .exec(&[AGENT_BIN_PATH, "reset", "--cluster", CLUSTER, "--prune"])
            .unwrap();
        assert!(
            out.success(),
            "{}: reset: {}{}",
            h.name(),
            out.stdout,
            out.stderr
        );
        assert!(
            !out.stderr.contains("warning"),
            "{}: {}",
            h.name(),
            out.stderr
        );
        let after = snapshot(h);
        let d = diff(&before[i], &after);
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after reset:\n{d}",
            h.name()
        );
        let data = h
            .exec(&["test", "-e", "/var/lib/seaport/data/lab"])
            .unwrap();
        assert!(!data.success(), "{}: the data directory is left", h.name());
    }
    phases.done("reset on every host");
}
