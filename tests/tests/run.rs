//! End to end on 3 lab hosts with the coordinator driving: `seaport run`
//! installs the test cluster image (tests/src/testimage.rs) with master0
//! and two workers. containerd runs on all, the registry on master0; the
//! image from images/ and the one named in manifests/imageList pull with
//! `ctr` on every host through sea.hub:5000 (TLS trusted through
//! containerd's certs.d, by the registry's name and through the hosts.toml
//! mirrors); the kubeadm double ran init on master0 and join on
//! the others with master0's join data, which the coordinator passed on.
//! The coordinator killed and restarted in the middle of the install
//! resumes it, and the agent killed in the middle of a step resumes it; a
//! second `seaport run` changes nothing; an image whose layer escapes its
//! directory is refused with nothing written; an image whose layer gives
//! directories modes and then turns them into symlinks to /usr/bin/bash and
//! /etc changes no mode on the host; `seaport delete --all
//! --prune` leaves /etc, /usr and systemd's unit state as they were.
//!
//! The docker variant of the test image (docker from Debian's `docker.io`
//! binaries in `cri/docker.tar.gz`) installs on 3 hosts the same way:
//! dockerd runs on every host, `docker pull` of both images works through
//! the registry on master0 (by its name and through the Docker Hub
//! mirror), kubeadm is given docker's CRI socket, and `seaport delete --all
//! --prune` leaves every host as before (docker's data, bridge and key
//! included).
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc,
//! docker.io and docker-registry on the machine (see docs/lab.md and
//! docs/install.md).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::seaport::Binaries;
use seaport_lab::testimage::{self, TestRuntime, BUNDLED_IMAGE, LISTED_REPO, LISTED_TAG};
use seaport_lab::{runs, wait, Host};

const CLUSTER: &str = "lab";

fn seaport(bins: &Binaries, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(&bins.seaport);
    c.arg("--root").arg(root).args(args).stdin(Stdio::null());
    c
}

fn status(bins: &Binaries, root: &Path) -> serde_json::Value {
    let (ok, out, err) = bins.seaport_out(root, &["status", "--json"]);
    assert!(ok, "seaport status: {err}");
    serde_json::from_str(&out).unwrap()
}

fn cluster<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {status}"))
}

fn step_state<'a>(
    cluster: &'a serde_json::Value,
    ip: &str,
    step: &str,
) -> Option<&'a serde_json::Value> {
    cluster["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["ip"] == ip)?["steps"]
        .as_array()?
        .iter()
        .find(|s| s["step"] == step)
        .map(|s| &s["state"])
}

fn pulls_work_everywhere(hosts: &[Host], listed_domain: &str) {
    let listed = format!("{LISTED_REPO}:{LISTED_TAG}");
    for h in hosts {
        let active = h
            .exec(&["systemctl", "is-active", "containerd.service"])
            .unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}", h.name());
        let pulls: [(&str, [String; 2]); 4] = [
            (
                "bundled, by the local registry's name",
                [
                    "--hosts-dir=/etc/containerd/certs.d".into(),
                    "sea.hub:5000/library/seaport-bundled:1.0".into(),
                ],
            ),
            (
                "listed, by the local registry's name",
                [
                    "--hosts-dir=/etc/containerd/certs.d".into(),
                    format!("sea.hub:5000/{listed}"),
                ],
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
                    format!("{listed_domain}/{listed}"),
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
}

#[test]
fn seaport_run_installs_three_hosts_resumes_reruns_and_deletes_cleanly() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image,
        root,
    } = testimage::prepare();
    phases.done("build binaries and the test image");
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    let (m0ip, n1ip, n2ip) = (
        m0.ip().to_string(),
        n1.ip().to_string(),
        n2.ip().to_string(),
    );
    let workers = format!("{n1ip},{n2ip}");
    let run_args = [
        "run",
        testimage::IMAGE_NAME,
        "-m",
        m0ip.as_str(),
        "-n",
        workers.as_str(),
        "--cluster",
        CLUSTER,
        "-e",
        "pod_cidr=10.77.0.0/16",
    ];

    // A host without an agent is a clear error.
    let absent = lab.slot().unused_ip().to_string();
    let (ok, _, err) = bins.seaport_out(
        &root,
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &absent,
            "--cluster",
            "x",
        ],
    );
    assert!(
        !ok && err.contains(&format!("no agent is enrolled on {absent}"))
            && err.contains("seaport bootstrap"),
        "{err}"
    );

    // Install, with node 2's kubeadm held so its agent can be killed in
    // the middle of the step.
    n2.exec_ok(&["touch", "/run/kubeadm-double.hold"]).unwrap();
    let log = tmp.path().join("run.log");
    let mut child = seaport(&bins, &root, &run_args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("run.err")).unwrap())
        .spawn()
        .unwrap();
    wait::until(
        "the kubeadm double to hold in node 2",
        Duration::from_secs(300),
        Duration::from_millis(300),
        || {
            if n2
                .exec(&["test", "-e", "/run/kubeadm-double.waiting"])
                .unwrap()
                .success()
            {
                Ok(())
            } else {
                Err(std::fs::read_to_string(tmp.path().join("run.err")).unwrap_or_default())
            }
        },
    )
    .unwrap();
    // The step's state streamed back live.
    let s = status(&bins, &root);
    assert!(
        step_state(cluster(&s, CLUSTER), &n2ip, "kubeadm")
            .and_then(|st| st.get("running"))
            .is_some(),
        "node 2's kubeadm step is not shown running: {s}"
    );
    // The coordinator dies (kill -9) and comes back: the run resumes from
    // its journal, and the CLI reconnects.
    coordinator.kill();
    coordinator.restart().expect("restart the coordinator");
    wait::until(
        "the run to show again after the coordinator's restart",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (ok, out, err) = bins.seaport_out(&root, &["status", "--json"]);
            if ok && out.contains("\"running\"") {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .unwrap();
    let pid = n2
        .exec_ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "seaport-agent.service",
        ])
        .unwrap()
        .stdout;
    n2.exec_ok(&[
        "sh",
        "-c",
        &format!("kill -9 {}; kill -9 $(cat /run/kubeadm-double.waiting) 2>/dev/null; rm -f /run/kubeadm-double.hold /run/kubeadm-double.waiting", pid.trim()),
    ])
    .unwrap();
    let exit = wait::until(
        "seaport run to finish",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err(std::fs::read_to_string(tmp.path().join("run.err")).unwrap_or_default()),
        },
    );
    let exit = match exit {
        Ok(e) => e,
        Err(e) => {
            let _ = child.kill();
            panic!(
                "{e}\ncoordinator log: {}",
                std::fs::read_to_string(coordinator.log()).unwrap_or_default()
            );
        }
    };
    let out = std::fs::read_to_string(&log).unwrap();
    let err = std::fs::read_to_string(tmp.path().join("run.err")).unwrap();
    assert!(
        exit.success(),
        "seaport run failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(out.contains("cluster lab: succeeded"), "{out}");
    eprintln!("{out}");
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
        "node 2 kubeadm calls (join, then reset and join again on resume): {calls}"
    );
    phases.done(
        "seaport run, with the coordinator restarted and node 2's agent killed in the kubeadm step",
    );

    // Runtime and registry; both images pull on every host.
    pulls_work_everywhere(lab.hosts(), &image.listed_domain);
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
    let join = m0
        .exec_ok(&["cat", "/var/lib/seaport/data/lab/join.json"])
        .unwrap()
        .stdout;
    let join: serde_json::Value = serde_json::from_str(&join).unwrap();
    let token = join["token"].as_str().unwrap();
    let hash = join["ca_cert_hashes"][0].as_str().unwrap();
    assert_eq!(join["master0_ip"].as_str().unwrap(), m0ip);
    let init_cfg = m0
        .exec_ok(&["cat", "/var/lib/kubeadm-double/init.yaml"])
        .unwrap()
        .stdout;
    assert!(init_cfg.contains(&format!("token: {token}")), "{init_cfg}");
    assert!(
        init_cfg.contains("10.77.0.0/16"),
        "the -e pod_cidr did not reach kubeadm: {init_cfg}"
    );
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
            cfg.contains(&format!("apiServerEndpoint: {m0ip}:6443")),
            "{cfg}"
        );
    }
    // The secret join data never shows in status.
    let s = status(&bins, &root).to_string();
    assert!(!s.contains(token), "status shows the bootstrap token");

    // Again: every step is skipped on every host (the preflight checks run
    // again and pass: what they find is the install's own).
    let t = Instant::now();
    let (ok, out, err) = bins.seaport_out(&root, &run_args);
    let again = t.elapsed();
    assert!(ok, "second seaport run: {out}{err}");
    let s = status(&bins, &root);
    let c = cluster(&s, CLUSTER);
    assert_eq!(c["state"], "succeeded", "{c}");
    for h in c["hosts"].as_array().unwrap() {
        for st in h["steps"].as_array().unwrap() {
            if st["step"] == "preflight" {
                assert!(st["state"].get("done").is_some(), "{}: {st}", h["ip"]);
                continue;
            }
            assert_eq!(
                st["state"], "skipped",
                "{}: {} ran again: {st}",
                h["ip"], st["step"]
            );
        }
    }
    let calls_after = n2
        .exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout;
    assert_eq!(calls_after, calls, "kubeadm ran again on node 2");
    phases.done(&format!(
        "second seaport run (no-op, {:.1} s)",
        again.as_secs_f64()
    ));

    // An image whose layer writes through `..` and a symlink: refused at
    // the rootfs step, nothing outside the rootfs, no half-written rootfs.
    let evil = tmp.path().join("evil-layout");
    testimage::make_oci_layout_with_layer(&evil, "evil:v1", &testimage::escaping_layer().unwrap())
        .unwrap();
    let evil_tar = tmp.path().join("evil.tar");
    testimage::tar_dir(&evil, &evil_tar).unwrap();
    let (ok, _, err) = bins.seaport_out(&root, &["load", "-i", evil_tar.to_str().unwrap()]);
    assert!(ok, "load: {err}");
    let (ok, out, err) = bins.seaport_out(
        &root,
        // master0 runs cluster lab, whose ports and runtime a second
        // cluster's preflight rightly refuses: this is about the image.
        &[
            "run",
            "evil:v1",
            "-m",
            &m0ip,
            "--cluster",
            "evil",
            "--ignore-preflight",
            "all",
        ],
    );
    assert!(!ok, "an escaping image installed: {out}");
    assert!(
        err.contains("rootfs") && err.contains(".."),
        "the error names neither the step nor the entry: {err}"
    );
    for p in [
        "/var/lib/seaport/data/seaport-escape.txt",
        "/var/lib/seaport/data/evil/seaport-escape.txt",
        "/etc/seaport-escape.txt",
    ] {
        assert!(
            !m0.exec(&["test", "-e", p]).unwrap().success(),
            "{p} was written"
        );
    }
    assert!(
        !m0.exec(&["test", "-e", "/var/lib/seaport/data/evil/rootfs"])
            .unwrap()
            .success(),
        "a half-written rootfs is left"
    );
    let (ok, out, err) =
        bins.seaport_out(&root, &["delete", "--cluster", "evil", "--prune", "--yes"]);
    assert!(ok, "delete evil: {out}{err}");
    phases.done("escaping image refused");

    // An image whose layer gives directories modes and then replaces them
    // with symlinks to /usr/bin/bash and /etc: installing it changes no mode
    // on the host.
    let modes = |h: &Host| {
        h.exec(&["stat", "-c", "%n %a %U:%G", "/usr/bin/bash", "/etc"])
            .unwrap()
            .stdout
    };
    let before_modes = modes(m0);
    let chmod = tmp.path().join("chmod-layout");
    testimage::make_oci_layout_with_layer(
        &chmod,
        "chmod:v1",
        &testimage::chmod_through_symlink_layer().unwrap(),
    )
    .unwrap();
    let chmod_tar = tmp.path().join("chmod.tar");
    testimage::tar_dir(&chmod, &chmod_tar).unwrap();
    let (ok, _, err) = bins.seaport_out(&root, &["load", "-i", chmod_tar.to_str().unwrap()]);
    assert!(ok, "load: {err}");
    // The image is no cluster (no runtime): the run fails after its rootfs
    // step, which is the one that unpacks the layer.
    let (_, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            "chmod:v1",
            "-m",
            &m0ip,
            "--cluster",
            "chmod",
            "--ignore-preflight",
            "all",
        ],
    );
    assert!(
        m0.exec(&["test", "-L", "/var/lib/seaport/data/chmod/rootfs/x"])
            .unwrap()
            .success(),
        "the layer was not unpacked: {out}{err}"
    );
    assert_eq!(
        modes(m0),
        before_modes,
        "installing the image changed modes on the host"
    );
    let (ok, out, err) =
        bins.seaport_out(&root, &["delete", "--cluster", "chmod", "--prune", "--yes"]);
    assert!(ok, "delete chmod: {out}{err}");
    phases.done("image chmod-ing through symlinks changes nothing");

    // Delete: every host as before.
    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    assert!(out.contains("cluster lab: deleted"), "{out}");
    for (i, h) in lab.hosts().iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
        let data = h
            .exec(&["test", "-e", "/var/lib/seaport/data/lab"])
            .unwrap();
        assert!(!data.success(), "{}: the data directory is left", h.name());
    }
    phases.done("delete --all --prune on every host");
    coordinator.stop().unwrap();
}

/// `docker pull` of the image from images/ and the one from
/// manifests/imageList on every host, through the registry on master0.
fn docker_pulls_work_everywhere(hosts: &[Host]) {
    let listed = format!("sea.hub:5000/{LISTED_REPO}:{LISTED_TAG}");
    let bundled_local = BUNDLED_IMAGE.replace("docker.io/", "sea.hub:5000/");
    for h in hosts {
        let active = h
            .exec(&["systemctl", "is-active", "docker.service"])
            .unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}", h.name());
        for (what, image) in [
            (
                "bundled, by the local registry's name",
                bundled_local.as_str(),
            ),
            ("listed, by the local registry's name", listed.as_str()),
            ("bundled, docker.io through registry-mirrors", BUNDLED_IMAGE),
        ] {
            let out = h.exec(&["docker", "pull", image]).unwrap();
            assert!(
                out.success(),
                "{}: docker pull of {what} ({image}) failed: {}{}",
                h.name(),
                out.stdout,
                out.stderr
            );
        }
        let images = h
            .exec_ok(&["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"])
            .unwrap()
            .stdout;
        for want in [
            bundled_local.as_str(),
            listed.as_str(),
            "seaport-bundled:1.0",
        ] {
            assert!(
                images.lines().any(|l| l == want),
                "{}: {want} not in docker images: {images}",
                h.name()
            );
        }
    }
}

#[test]
fn seaport_run_installs_docker_on_three_hosts_and_deletes_cleanly() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp: _tmp,
        image,
        root,
    } = testimage::prepare_with(TestRuntime::Docker);
    phases.done("build binaries and the docker test image");
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    let m0ip = m0.ip().to_string();
    let workers = format!("{},{}", n1.ip(), n2.ip());
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            &image.name,
            "-m",
            &m0ip,
            "-n",
            &workers,
            "--cluster",
            CLUSTER,
        ],
    );
    assert!(
        ok,
        "seaport run of the docker image failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(out.contains("cluster lab: succeeded"), "{out}");
    phases.done("seaport run");

    for h in lab.hosts() {
        // docker is the runtime; containerd runs only under dockerd.
        let system_containerd = h
            .exec(&["systemctl", "is-active", "containerd.service"])
            .unwrap();
        assert_ne!(
            system_containerd.stdout.trim(),
            "active",
            "{}: containerd.service runs beside docker",
            h.name()
        );
        let daemon: serde_json::Value = serde_json::from_str(
            &h.exec_ok(&["cat", "/etc/docker/daemon.json"])
                .unwrap()
                .stdout,
        )
        .unwrap();
        // The local registry serves TLS (sealer's default): an https
        // mirror, its CA in docker's certs.d, never an insecure registry.
        assert!(
            daemon.get("insecure-registries").is_none()
                || !daemon["insecure-registries"]
                    .to_string()
                    .contains("sea.hub:5000"),
            "{}: {daemon}",
            h.name()
        );
        assert_eq!(
            daemon["registry-mirrors"],
            serde_json::json!(["https://sea.hub:5000"]),
            "{}",
            h.name()
        );
        h.exec_ok(&["test", "-s", "/etc/docker/certs.d/sea.hub:5000/ca.crt"])
            .unwrap();
        assert_eq!(daemon["iptables"], false, "the image's own setting is kept");
    }
    docker_pulls_work_everywhere(lab.hosts());
    let reg = m0
        .exec(&["systemctl", "is-active", "seaport-registry.service"])
        .unwrap();
    assert_eq!(reg.stdout.trim(), "active");
    phases.done("docker and pulls on every host");

    // kubeadm got docker's CRI socket (the double's preflight asked docker
    // itself), and the kubelet follows docker's cgroup driver.
    let init = m0
        .exec_ok(&["cat", "/var/lib/kubeadm-double/init.yaml"])
        .unwrap()
        .stdout;
    assert!(
        init.contains("criSocket: /var/run/dockershim.sock") && !init.contains("containerd.sock"),
        "{init}"
    );
    assert!(init.contains("cgroupDriver: systemd"), "{init}");
    for h in [n1, n2] {
        let join = h
            .exec_ok(&["cat", "/var/lib/kubeadm-double/join.yaml"])
            .unwrap()
            .stdout;
        assert!(
            join.contains("criSocket: /var/run/dockershim.sock"),
            "{}: {join}",
            h.name()
        );
    }

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    assert!(out.contains("cluster lab: deleted"), "{out}");
    for (i, h) in lab.hosts().iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
        for gone in [
            vec!["test", "-e", "/var/lib/docker"],
            vec!["test", "-e", "/run/docker"],
            vec!["test", "-e", "/var/lib/seaport/data/lab"],
            vec!["ip", "link", "show", "docker0"],
            vec!["pgrep", "-x", "dockerd"],
            vec!["pgrep", "-x", "containerd"],
        ] {
            let out = h.exec(&gone).unwrap();
            assert!(
                !out.success(),
                "{}: `{}` after delete: {}",
                h.name(),
                gone.join(" "),
                out.stdout
            );
        }
    }
    phases.done("delete --all --prune on every host");
    coordinator.stop().unwrap();
}
