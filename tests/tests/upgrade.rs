//! The control-plane upgrade on lab hosts: `seaport run` of the test image
//! (Kubernetes v1.19.8) with two masters and a worker, then `seaport run`
//! of the same image built for v1.20.4 on the same hosts. The kubectl
//! double on master0 saw each host drained then uncordoned, one host after
//! the other (master0, master1, the worker); the kubeadm double saw
//! `upgrade apply v1.20.4` on master0 and then `upgrade node` on master1
//! and then on the worker (the times of their `upgrades.log`); the API
//! server stand-in still answers through `apiserver.cluster.local` and
//! serves the new version; an image of an older Kubernetes is refused
//! naming both versions; `seaport delete --all --prune` leaves every host
//! as before.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md).

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::{runs, testimage, Host};

const KUBEADM: &str = "/var/lib/kubeadm-double";
const KUBECTL: &str = "/var/lib/kubectl-double";
const NEWER: &str = "seaport-test/kubernetes-newer:v1.20.4";
const OLDER: &str = "seaport-test/kubernetes-older:v1.18.20";

/// The lines of a file of a double's state directory on `h` (empty when
/// absent).
fn lines(h: &Host, dir: &str, file: &str) -> Vec<String> {
    let out = h.exec(&["cat", &format!("{dir}/{file}")]).unwrap();
    out.stdout.lines().map(str::to_string).collect()
}

/// The modification time of `upgrades.log` on `h`, in nanoseconds (the
/// lab hosts share the machine's clock).
fn upgraded_at(h: &Host) -> u128 {
    let out = h
        .exec_ok(&["date", "-r", &format!("{KUBEADM}/upgrades.log"), "+%s%N"])
        .unwrap();
    out.stdout.trim().parse().unwrap()
}

#[test]
fn a_newer_kubernetes_image_upgrades_master0_then_each_master_then_each_worker() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        root,
        image,
    } = testimage::prepare();
    testimage::build_test_image_at_version(
        &tmp.path().join("newer"),
        &bins.seaport,
        &root,
        NEWER,
        "v1.20.4",
    )
    .expect("build the v1.20.4 image");
    testimage::build_test_image_at_version(
        &tmp.path().join("older"),
        &bins.seaport,
        &root,
        OLDER,
        "v1.18.20",
    )
    .expect("build the v1.18.20 image");
    phases.done("build binaries and the v1.19.8, v1.20.4 and v1.18.20 images");
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, m1, n1) = (lab.host(0), lab.host(1), lab.host(2));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    let masters = format!("{},{}", m0.ip(), m1.ip());
    let n1ip = n1.ip().to_string();
    let run = |image: &str| {
        bins.seaport_out(
            &root,
            &["run", image, "-m", &masters, "-n", &n1ip, "--cluster", "up"],
        )
    };
    let (ok, out, err) = run(&image.name);
    assert!(
        ok,
        "install failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    for h in [m0, m1, n1] {
        assert!(lines(h, KUBEADM, "upgrades.log").is_empty(), "{}", h.name());
    }
    let nodes_before = lines(m0, KUBECTL, "nodes.log").len();
    phases.done("seaport run v1.19.8: 2 masters, 1 worker");

    let (ok, out, err) = run(OLDER);
    assert!(
        !ok && format!("{out}{err}").contains("v1.18.20")
            && format!("{out}{err}").contains("v1.19.8"),
        "a downgrade was not refused naming both versions:\n{out}\n{err}"
    );
    phases.done("an older Kubernetes refused");

    let (ok, out, err) = run(NEWER);
    assert!(
        ok,
        "upgrade failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    phases.done("seaport run v1.20.4: upgrade");

    // kubeadm: apply on master0, then node on master1, then on the worker.
    assert_eq!(
        lines(m0, KUBEADM, "upgrades.log"),
        ["apply v1.20.4 from v1.19.8"],
        "master0"
    );
    for h in [m1, n1] {
        assert_eq!(
            lines(h, KUBEADM, "upgrades.log"),
            ["node v1.20.4 from v1.19.8"],
            "{}",
            h.name()
        );
    }
    let (t0, t1, t2) = (upgraded_at(m0), upgraded_at(m1), upgraded_at(n1));
    assert!(
        t0 < t1 && t1 < t2,
        "upgrade order by time: master0 {t0}, master1 {t1}, worker {t2}"
    );
    // kubectl on master0: each host drained before and uncordoned after,
    // one host after the other.
    let names: Vec<String> = [m0, m1, n1]
        .iter()
        .map(|h| h.exec_ok(&["hostname"]).unwrap().stdout.trim().to_string())
        .collect();
    let node_ops: Vec<String> = lines(m0, KUBECTL, "nodes.log")[nodes_before..]
        .iter()
        .filter(|l| l.starts_with("drain ") || l.starts_with("uncordon "))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let want: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("drain {n}"), format!("uncordon {n}")])
        .collect();
    assert_eq!(node_ops, want, "drains and uncordons seen by kubectl");
    assert!(
        lines(m0, KUBECTL, "nodes.log")[nodes_before..]
            .iter()
            .any(|l| l.starts_with("drain ")
                && l.contains("--ignore-daemonsets")
                && l.contains("--delete-emptydir-data")),
        "drain flags"
    );
    // The API stand-in still answers, through the worker's balancer too,
    // and serves the new version.
    for h in [m0, m1, n1] {
        let out = h
            .exec(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                "/etc/kubernetes/pki/ca.crt",
                "https://apiserver.cluster.local:6443/healthz",
            ])
            .unwrap();
        assert!(
            out.code == 0 && out.stdout == "ok",
            "{}: healthz after the upgrade: {} {}",
            h.name(),
            out.stdout,
            out.stderr
        );
    }
    let version = m0
        .exec_ok(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            "/etc/kubernetes/pki/ca.crt",
            "https://127.0.0.1:6443/version",
        ])
        .unwrap()
        .stdout;
    assert!(version.contains("v1.20.4"), "/version: {version}");

    // Applying it again upgrades nothing again.
    let (ok, out, err) = run(NEWER);
    assert!(ok, "rerun failed:\n{out}\n{err}");
    assert_eq!(
        lines(m0, KUBEADM, "upgrades.log").len(),
        1,
        "master0 upgraded twice"
    );
    assert_eq!(
        lines(n1, KUBEADM, "upgrades.log").len(),
        1,
        "worker upgraded twice"
    );
    phases.done("checked the order, the stand-in, a rerun");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "delete failed:\n{out}\n{err}");
    for (h, b) in lab.hosts().iter().zip(&before) {
        let after = snapshot(h);
        assert!(after == *b, "{} changed:\n{}", h.name(), diff(b, &after));
    }
    phases.done("delete --all --prune: every host as before");
    coordinator.stop().unwrap();
}
