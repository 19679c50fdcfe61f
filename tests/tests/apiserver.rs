//! The API server stand-in on lab hosts: `seaport run` with two masters
//! and a worker of the test cluster image (tests/src/testimage.rs). The
//! kubeadm double's `init` creates a cluster CA on master0 (`ca.key` 0600)
//! and starts `kube-apiserver-double.service`, a TLS listener on :6443; the
//! joining master downloads the CA and its key with the certificate key
//! (kubeadm's `--upload-certs` hand-over) and starts its own; the worker
//! gets `ca.crt` alone after checking its hash. `curl --cacert
//! /etc/kubernetes/pki/ca.crt https://apiserver.cluster.local:6443/healthz`
//! answers `ok` naming the master, each master's certificate verifies for
//! every name the cluster reaches it by; the kubectl double reaches master0
//! with the admin's and the kubelet's kubeconfigs and refuses what kubectl
//! refuses; `kubeadm upgrade apply` on master0 and `upgrade node` on the
//! others are checked and recorded, and `kubeadm init` with a field under
//! the wrong parent is refused naming it; after `seaport delete --all
//! --prune` nothing listens on :6443 and every host is as before.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md).

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::{runs, testimage, Host};

const CA: &str = testimage::CLUSTER_CA;
const UNIT: &str = "kube-apiserver-double.service";

fn assert_answers(h: &Host, url: &str, extra: &[&str], want: &str) {
    let testimage::StandInAnswer { code, host, body } = testimage::stand_in_request(h, url, extra);
    assert!(
        code == 0 && body == "ok" && host.as_deref() == Some(want),
        "{}: {url} {extra:?}: curl exit {code}, host {host:?}, body {body:?} (want ok from {want})",
        h.name()
    );
}

fn file_sum(h: &Host, path: &str) -> String {
    h.exec_ok(&["sha256sum", path]).unwrap().stdout[..64].to_string()
}

fn listens_on_6443(h: &Host) -> bool {
    !h.exec_ok(&["ss", "-Htln", "sport = :6443"])
        .unwrap()
        .stdout
        .trim()
        .is_empty()
}

/// Whether an API server listens on the host's :6443: anything but a
/// worker's node-local balancer on the VIP 10.103.97.2.
fn api_server_on_6443(h: &Host) -> bool {
    h.exec_ok(&["ss", "-Htln", "sport = :6443"])
        .unwrap()
        .stdout
        .lines()
        .any(|l| !l.contains("10.103.97.2:6443"))
}

#[test]
fn masters_serve_healthz_with_the_cluster_ca_and_reset_stops_them() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp: _tmp,
        root,
        ..
    } = testimage::prepare();
    phases.done("build binaries and the test image");
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, m1, n1) = (lab.host(0), lab.host(1), lab.host(2));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    let masters = format!("{},{}", m0.ip(), m1.ip());
    let n1ip = n1.ip().to_string();
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &masters,
            "-n",
            &n1ip,
            "--cluster",
            "api",
        ],
    );
    assert!(
        ok,
        "seaport run failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    phases.done("seaport run: 2 masters, 1 worker");

    // One CA: made on master0, its key handed to master1 (0600 on both),
    // only its certificate on the worker.
    let ca_sum = file_sum(m0, CA);
    let key_sum = file_sum(m0, "/etc/kubernetes/pki/ca.key");
    for h in [m0, m1] {
        let mode = h
            .exec_ok(&["stat", "-c", "%a", "/etc/kubernetes/pki/ca.key"])
            .unwrap()
            .stdout;
        assert_eq!(mode.trim(), "600", "{}: ca.key mode", h.name());
        assert_eq!(
            file_sum(h, "/etc/kubernetes/pki/ca.key"),
            key_sum,
            "{}",
            h.name()
        );
        let active = h.exec(&["systemctl", "is-active", UNIT]).unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}: {UNIT}", h.name());
    }
    for h in [m1, n1] {
        assert_eq!(file_sum(h, CA), ca_sum, "{}: ca.crt", h.name());
    }
    assert!(
        !n1.exec(&["test", "-e", "/etc/kubernetes/pki/ca.key"])
            .unwrap()
            .success(),
        "the worker got the CA key"
    );
    assert!(
        !api_server_on_6443(n1),
        "an API server listens on the worker's :6443"
    );
    // The CA is the cluster's own, not one shipped in the image: its hash is
    // the one master0's join data gave the others.
    let join = m1
        .exec_ok(&["cat", "/var/lib/kubeadm-double/join.yaml"])
        .unwrap()
        .stdout;
    let hash = m0
        .exec_ok(&[
            "bash",
            "-c",
            "openssl x509 -in /etc/kubernetes/pki/ca.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        ])
        .unwrap()
        .stdout[..64]
        .to_string();
    assert!(join.contains(&format!("sha256:{hash}")), "{join}");

    // master0 by the name the cluster uses (/etc/hosts), and each master by
    // every name its certificate must carry.
    assert_answers(
        m0,
        "https://apiserver.cluster.local:6443/healthz",
        &[],
        m0.name(),
    );
    for h in [m0, m1] {
        let ip = h.ip().to_string();
        let to_self = format!("::{ip}:6443");
        for url in [
            "https://apiserver.cluster.local:6443/healthz",
            "https://10.103.97.2:6443/healthz",
            "https://10.96.0.1:6443/healthz",
            "https://localhost:6443/healthz",
            "https://127.0.0.1:6443/healthz",
            &format!("https://{}:6443/healthz", h.name()),
            &format!("https://{ip}:6443/healthz"),
        ] {
            assert_answers(h, url, &["--connect-to", &to_self], h.name());
        }
        // From the worker, with the CA it was given.
        assert_answers(n1, &format!("https://{ip}:6443/healthz"), &[], h.name());
    }
    // Any other path: a JSON Status, 404.
    let out = m0
        .exec_ok(&[
            "curl",
            "-sS",
            "--cacert",
            CA,
            "-w",
            "\n%{http_code}",
            "https://127.0.0.1:6443/api/v1/pods",
        ])
        .unwrap()
        .stdout;
    assert!(
        out.ends_with("\n404") && out.contains("\"kind\":\"Status\""),
        "{out}"
    );
    phases.done("healthz on both masters, verified for every name");

    // kubectl (the double) with the kubeconfigs the kubeadm double wrote:
    // the admin's on master0, the kubelet's on the worker; both reach
    // master0 by apiserver.cluster.local with the cluster CA.
    let kubectl = |h: &Host, args: &[&str]| {
        let mut argv = vec!["kubectl"];
        argv.extend(args);
        h.exec(&argv).unwrap()
    };
    let admin = ["--kubeconfig", "/etc/kubernetes/admin.conf"];
    let out = kubectl(m0, &[&admin[..], &["get", "nodes"]].concat());
    assert!(
        out.success() && out.stdout.contains(&format!("answered by {}", m0.name())),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = kubectl(
        m0,
        &[
            &admin[..],
            &[
                "drain",
                m1.name(),
                "--ignore-daemonsets",
                "--delete-emptydir-data",
            ],
        ]
        .concat(),
    );
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let nodes = m0
        .exec_ok(&["cat", "/var/lib/kubectl-double/nodes.log"])
        .unwrap()
        .stdout;
    assert!(
        nodes.contains(&format!(
            "drain {} --ignore-daemonsets --delete-emptydir-data",
            m1.name()
        )),
        "{nodes}"
    );
    let out = kubectl(
        n1,
        &[
            "--kubeconfig",
            "/etc/kubernetes/kubelet.conf",
            "get",
            "nodes",
        ],
    );
    assert!(
        out.success() && out.stdout.contains(&format!("answered by {}", m0.name())),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // What kubectl refuses: no kubeconfig at all (the worker: only masters
    // get root's kubeconfig), a bad taint, an unknown flag, a server name
    // that does not resolve.
    for (h, args, want) in [
        (n1, vec!["get", "nodes"], "localhost:8080"),
        (
            m0,
            [&admin[..], &["taint", "node", m1.name(), "a=b:Sometimes"]].concat(),
            "invalid taint effect",
        ),
        (
            m0,
            [&admin[..], &["drain", m1.name(), "--ignore-daemonset"]].concat(),
            "unknown flag: --ignore-daemonset",
        ),
    ] {
        let out = kubectl(h, &args);
        assert!(
            !out.success() && out.stderr.contains(want),
            "{args:?}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    m0.exec_ok(&[
        "bash",
        "-c",
        "sed s/apiserver.cluster.local/apiserver.invalid/ /etc/kubernetes/admin.conf > /tmp/elsewhere.conf",
    ])
    .unwrap();
    let out = kubectl(m0, &["--kubeconfig", "/tmp/elsewhere.conf", "get", "nodes"]);
    assert!(
        !out.success() && out.stderr.contains("no such host"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    m0.exec_ok(&["rm", "-f", "/tmp/elsewhere.conf"]).unwrap();
    phases.done("kubectl double: kubeconfigs reach the stand-in, bad calls refused");

    // kubeadm upgrade, as the double checks and records it: apply on the
    // initializing master (higher, one minor at a time, not above the
    // kubeadm that runs it), node on the others. The image's kubeadm is
    // v1.19.8 like its cluster; a newer kubeadm is put beside it first, as
    // an upgrade does ("upgrade kubeadm first").
    let kubeadm = |h: &Host, bin: &str, args: &[&str]| {
        let mut argv = vec![bin];
        argv.extend(args);
        h.exec(&argv).unwrap()
    };
    let newer = "/tmp/kubeadm-v1.20.4";
    for h in [m0, m1, n1] {
        h.exec_ok(&[
            "bash",
            "-c",
            &format!("sed 's/^KUBEADM_VERSION=.*/KUBEADM_VERSION=v1.20.4/' /usr/bin/kubeadm > {newer} && chmod 755 {newer}"),
        ])
        .unwrap();
    }
    for (h, bin, args, want) in [
        (
            m0,
            "kubeadm",
            vec!["upgrade", "apply", "v1.20.0", "-y"],
            "higher than the kubeadm version v1.19.8",
        ),
        (
            m0,
            "kubeadm",
            vec!["upgrade", "apply", "v1.19.8", "-y"],
            "equal to or lower",
        ),
        (
            m0,
            newer,
            vec!["upgrade", "apply", "v1.21.0", "-y"],
            "1 minor version at a time",
        ),
        (m0, newer, vec!["upgrade", "apply", "v1.20.4"], "without -y"),
        (
            m1,
            newer,
            vec!["upgrade", "apply", "v1.20.4", "-y"],
            "initialized no cluster",
        ),
    ] {
        let out = kubeadm(h, bin, &args);
        assert!(
            !out.success() && out.stderr.contains(want),
            "{}: {bin} {args:?}: {}{}",
            h.name(),
            out.stdout,
            out.stderr
        );
    }
    let out = kubeadm(m0, newer, &["upgrade", "apply", "v1.20.4", "-y"]);
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    for h in [m1, n1] {
        let out = kubeadm(h, newer, &["upgrade", "node"]);
        assert!(out.success(), "{}: {}{}", h.name(), out.stdout, out.stderr);
        h.exec_ok(&["rm", "-f", newer]).unwrap();
    }
    m0.exec_ok(&["rm", "-f", newer]).unwrap();
    let log = |h: &Host| {
        h.exec_ok(&["cat", "/var/lib/kubeadm-double/upgrades.log"])
            .unwrap()
            .stdout
    };
    assert_eq!(log(m0), "apply v1.20.4 from v1.19.8\n");
    for h in [m1, n1] {
        assert_eq!(log(h), "node v1.20.4 from v1.19.8\n", "{}", h.name());
    }
    // kubeadm init with a misplaced field: refused naming the field.
    n1.exec_ok(&[
        "bash",
        "-c",
        "printf 'apiVersion: kubeadm.k8s.io/v1beta2\\nkind: ClusterConfiguration\\nnetworking:\\n  certSANs: [a]\\n' > /tmp/bad.yaml",
    ])
    .unwrap();
    let out = kubeadm(n1, "kubeadm", &["init", "--config", "/tmp/bad.yaml"]);
    assert!(
        !out.success() && out.stderr.contains("unknown field \"networking.certSANs\""),
        "{}{}",
        out.stdout,
        out.stderr
    );
    n1.exec_ok(&["rm", "-f", "/tmp/bad.yaml"]).unwrap();
    phases.done("kubeadm upgrade apply/node checked and recorded; a bad config refused");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    for (i, h) in lab.hosts().iter().enumerate() {
        assert!(!listens_on_6443(h), "{}: :6443 still listens", h.name());
        let code = testimage::stand_in_request(h, "https://127.0.0.1:6443/healthz", &[]).code;
        assert_ne!(code, 0, "{}: healthz answers after delete", h.name());
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
    }
    phases.done("delete --all --prune: nothing on :6443, hosts as before");
    coordinator.stop().unwrap();
}
