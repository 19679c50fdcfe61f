//! A cluster image of a newer Kubernetes on lab hosts: the test cluster
//! image (tests/src/testimage.rs) built for v1.28.2, whose kubeadm double
//! stands for kubeadm 1.28 (it refuses `kubeadm.k8s.io/v1beta2`), installed
//! from a Clusterfile on two masters, the second labelled. The install succeeds: the configuration
//! each master was given is `kubeadm.k8s.io/v1beta3` and the double read it
//! without a warning; every master has `/root/.kube/config`, 0600, equal to
//! its `/etc/kubernetes/admin.conf`, and a plain `kubectl` as root (the
//! strict kubectl double, no `--kubeconfig`) reaches the API server with it;
//! the label/taint commands the install ran through kubectl succeeded.
//! After `seaport delete --all --prune` no `/root/.kube/config` is left and
//! every host is as before.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md).

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::seaport::Binaries;
use seaport_lab::{runs, testimage};

const VERSION: &str = "v1.28.2";
const IMAGE: &str = "seaport-test:v1.28.2";
const KUBECONFIG: &str = "/root/.kube/config";

#[test]
fn a_kubernetes_1_28_image_installs_with_v1beta3_and_masters_get_root_kubeconfig() {
    let mut phases = Phases::start();
    testimage::require_machine();
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().join("seaport-root");
    testimage::build_test_image_at_version(tmp.path(), &bins.seaport, &root, IMAGE, VERSION)
        .expect("build the v1.28 test image");
    phases.done("build binaries and the v1.28 test image");
    let lab = seaport_lab::Lab::up(2).expect("bring up a lab of 2 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, m1) = (lab.host(0), lab.host(1));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    // Two masters, the second labelled: the labels-taints stage runs
    // `kubectl label` on master0 through the agent.
    let clusterfile = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: k128\nspec:\n  image: {IMAGE}\n  hosts:\n  - ips: [{}]\n    roles: [master]\n  - ips: [{}]\n    roles: [master]\n    labels:\n      tier: front\n",
        m0.ip(),
        m1.ip()
    );
    let file = tmp.path().join("Clusterfile");
    std::fs::write(&file, clusterfile).unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        ok,
        "seaport apply failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    phases.done("seaport apply: 2 masters of v1.28.2");

    for h in [m0, m1] {
        let cfg = h
            .exec_ok(&["cat", "/var/lib/seaport/data/k128/kubeadm.yaml"])
            .unwrap()
            .stdout;
        assert!(
            cfg.contains("apiVersion: kubeadm.k8s.io/v1beta3") && !cfg.contains("v1beta2"),
            "{}: kubeadm.yaml:\n{cfg}",
            h.name()
        );
        let mode = h.exec_ok(&["stat", "-c", "%a", KUBECONFIG]).unwrap().stdout;
        assert_eq!(mode.trim(), "600", "{}: {KUBECONFIG} mode", h.name());
        let same = h
            .exec(&["cmp", KUBECONFIG, "/etc/kubernetes/admin.conf"])
            .unwrap();
        assert!(same.success(), "{}: {}", h.name(), same.stdout);
        // Root's kubectl, as a user types it: HOME=/root, no flags.
        let get = h
            .exec(&[
                "env",
                "-i",
                "HOME=/root",
                "PATH=/usr/bin:/bin",
                "kubectl",
                "get",
                "nodes",
            ])
            .unwrap();
        assert!(
            get.success() && get.stdout.contains("answered by"),
            "{}: kubectl get nodes: {}{}",
            h.name(),
            get.stdout,
            get.stderr
        );
    }
    let nodes = m0
        .exec_ok(&["cat", "/var/lib/kubectl-double/nodes.log"])
        .unwrap()
        .stdout;
    assert!(nodes.contains("tier=front"), "nodes.log:\n{nodes}");
    let calls = m0
        .exec_ok(&["cat", "/var/lib/kubectl-double/calls.log"])
        .unwrap()
        .stdout;
    assert!(!calls.contains("FAILED"), "calls.log:\n{calls}");
    phases.done(
        "v1beta3 given, /root/.kube/config 0600 on both masters, kubectl reaches the cluster",
    );

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    for (i, h) in [m0, m1].into_iter().enumerate() {
        assert!(
            !h.exec(&["test", "-e", KUBECONFIG]).unwrap().success(),
            "{}: {KUBECONFIG} left after delete",
            h.name()
        );
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
    }
    coordinator.stop().unwrap();
    phases.done("delete --all --prune: no root kubeconfig, hosts as before");
}
