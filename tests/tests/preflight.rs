//! Preflight checks end to end on 3 lab hosts: master0 with port 6443
//! taken by a real listener, a worker with swap on, and the two workers
//! with one hostname. `seaport check` names each problem on its host and
//! exits 3; `seaport run` refuses before any change (every host's /etc,
//! /usr and units as before; exit 3 once the hostnames differ and only the
//! agents' checks stand in the way); once they are fixed it installs, a
//! rerun passes (the registry's port is the install's own), and `seaport
//! check` of the installed cluster passes too.
//!
//! Swap: a swap area cannot be enabled for one lab host. Its root is
//! overlayfs, which cannot hold a swap file (`swapon` says "Invalid
//! argument"), and /proc/swaps is not per container: swap turned on
//! anywhere on the machine would show in every other lab's hosts. So the
//! worker's /proc/swaps is covered by a bind mount listing a swap file, as
//! lxcfs does for containers; the agent reads the real path.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc
//! and docker-registry on the machine (see docs/lab.md).

use std::path::Path;

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::seaport::Binaries;
use seaport_lab::{runs, testimage, wait, Host};

const CLUSTER: &str = "pre";

/// The level and detail of `check` on the host `ip` in `seaport check
/// --json` output.
fn result(checked: &serde_json::Value, ip: &str, check: &str) -> (String, String) {
    let host = checked
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ip"] == ip)
        .unwrap_or_else(|| panic!("no host {ip} in {checked}"));
    let c = host["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check} on {ip}: {host}"));
    (
        c["level"].as_str().unwrap().to_string(),
        c["detail"].as_str().unwrap().to_string(),
    )
}

fn errors(checked: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for h in checked.as_array().unwrap() {
        for c in h["checks"].as_array().unwrap() {
            if c["level"] == "error" {
                out.push((
                    h["ip"].as_str().unwrap().to_string(),
                    c["check"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn hostname(h: &Host) -> String {
    h.exec_ok(&["hostname"]).unwrap().stdout.trim().to_string()
}

fn set_hostname(h: &Host, name: &str) {
    h.exec_ok(&["hostname", name]).unwrap();
}

/// Waits until the coordinator's inventory shows `h` under `name` (the
/// agent's next heartbeat).
fn wait_for_hostname(bins: &Binaries, root: &Path, h: &Host, name: &str) {
    let ip = h.ip().to_string();
    wait::until(
        "the inventory to show the new hostname",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(500),
        || {
            let (_, out, err) = bins.seaport_status(root, &["nodes", "--json"], &[]);
            let nodes: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {err}"))?;
            let found = nodes.as_array().unwrap().iter().any(|n| {
                n["hostname"] == name
                    && n["ips"]
                        .as_array()
                        .is_some_and(|ips| ips.iter().any(|i| i == ip.as_str()))
            });
            if found {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .unwrap();
}

#[test]
fn preflight_names_each_problem_and_run_refuses_before_any_change_until_fixed() {
    testimage::require_machine();
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp: _tmp,
        root,
        ..
    } = testimage::prepare();
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("test image, lab up, agents enrolled");
    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let (m0ip, n1ip, n2ip) = (
        m0.ip().to_string(),
        n1.ip().to_string(),
        n2.ip().to_string(),
    );
    let workers = format!("{n1ip},{n2ip}");
    let hosts = ["-m", m0ip.as_str(), "-n", workers.as_str()];

    // Healthy hosts pass.
    let mut check = vec![
        "check",
        "--cluster",
        CLUSTER,
        "--image",
        testimage::IMAGE_NAME,
    ];
    check.extend(hosts);
    let (code, out, err) = bins.seaport_status(&root, &check, &[]);
    assert_eq!(code, 0, "check of healthy hosts: {out}{err}");
    assert!(out.contains("3 hosts: 0 errors"), "{out}");

    // Break them. Port 6443 on master0: a real listener.
    m0.exec_ok(&[
        "systemd-run",
        "--unit=squat-6443",
        "/usr/bin/systemd-socket-activate",
        "-l",
        "6443",
        "/bin/cat",
    ])
    .unwrap();
    wait::until(
        "the listener on 6443",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(200),
        || {
            let t = m0
                .exec_ok(&["cat", "/proc/net/tcp6", "/proc/net/tcp"])
                .unwrap()
                .stdout;
            if t.lines()
                .any(|l| l.contains(":192B ") && l.contains(" 0A "))
            {
                Ok(())
            } else {
                Err(t)
            }
        },
    )
    .unwrap();
    // Swap on the first worker, as its /proc/swaps shows it (see above).
    n1.write_file(
        "/run/swaps",
        b"Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile\t\t\t\tfile\t\t16380\t\t0\t\t-2\n",
        0o644,
    )
    .unwrap();
    n1.exec_ok(&["mount", "--bind", "/run/swaps", "/proc/swaps"])
        .unwrap();
    // One hostname on both workers.
    let n1name = hostname(n1);
    let n2name = hostname(n2);
    set_hostname(n2, &n1name);
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    phases.done("port 6443 taken, swap on, hostnames alike");

    // `seaport check` names each problem on its host, as a table and JSON.
    let (code, out, err) = bins.seaport_status(&root, &check, &[]);
    assert_eq!(code, 3, "check: {out}{err}");
    for needle in [
        m0ip.as_str(),
        "port-6443",
        "swap is on: /swapfile",
        "hostname",
        "3 hosts: 4 errors",
    ] {
        assert!(out.contains(needle), "check output lacks {needle}:\n{out}");
    }
    let mut json = check.clone();
    json.push("--json");
    let (code, out, err) = bins.seaport_status(&root, &json, &[]);
    assert_eq!(code, 3, "check --json: {err}");
    let checked: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        errors(&checked),
        vec![
            (m0ip.clone(), "port-6443".to_string()),
            (n1ip.clone(), "hostname".to_string()),
            (n1ip.clone(), "swap".to_string()),
            (n2ip.clone(), "hostname".to_string()),
        ],
        "{checked}"
    );
    assert!(result(&checked, &n1ip, "hostname").1.contains(&n2ip));
    assert!(result(&checked, &n2ip, "hostname").1.contains(&n1ip));
    assert_eq!(result(&checked, &m0ip, "port-2379").0, "ok");
    assert_eq!(result(&checked, &m0ip, "ip-forward").0, "ok");
    // Ignored errors are shown as such and pass.
    let mut ignoring = check.clone();
    ignoring.extend(["--ignore-preflight", "swap,port-6443,hostname"]);
    let (code, out, err) = bins.seaport_status(&root, &ignoring, &[]);
    assert_eq!(code, 0, "check ignoring every error: {out}{err}");
    assert!(out.contains("4 ignored"), "{out}");

    let mut run = vec!["run", testimage::IMAGE_NAME, "--cluster", CLUSTER];
    run.extend(hosts);
    // Refused while the hostnames collide (the coordinator plans nothing).
    wait_for_hostname(&bins, &root, n2, &n1name);
    let (code, out, err) = bins.seaport_status(&root, &run, &[]);
    assert_ne!(code, 0, "run with one hostname twice: {out}{err}");
    assert!(err.contains(&n1name), "{err}");
    // With distinct hostnames, the agents' checks stop it: exit 3, each
    // host's table shown.
    set_hostname(n2, &n2name);
    wait_for_hostname(&bins, &root, n2, &n2name);
    let (code, out, err) = bins.seaport_status(&root, &run, &[]);
    assert_eq!(code, 3, "run with swap and a taken port: {out}{err}");
    for needle in [
        "preflight failed",
        &format!("{m0ip}: port-6443"),
        &format!("{n1ip}: swap"),
        "--ignore-preflight",
    ] {
        assert!(err.contains(needle), "run's error lacks {needle}:\n{err}");
    }
    for (i, h) in lab.hosts().iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units changed by a refused run:\n{d}",
            h.name()
        );
        let data = h
            .exec(&["test", "-e", "/var/lib/seaport/data/pre"])
            .unwrap();
        assert!(!data.success(), "{}: cluster data written", h.name());
        let blobs = h
            .sh("ls /var/lib/seaport-agent/content/sha256 2>/dev/null | wc -l")
            .unwrap();
        assert_eq!(blobs.stdout.trim(), "0", "{}: layers fetched", h.name());
    }
    phases.done("check names each problem; run refused with every host unchanged");

    // Fixed: it installs, a rerun passes, and so does a check.
    m0.exec_ok(&["systemctl", "stop", "squat-6443.service"])
        .unwrap();
    n1.exec_ok(&["umount", "/proc/swaps"]).unwrap();
    let (code, out, err) = bins.seaport_status(&root, &run, &[]);
    assert_eq!(
        code,
        0,
        "run after the fixes: {out}{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(
        out.contains(&format!("cluster {CLUSTER}: succeeded")),
        "{out}"
    );
    let (code, out, err) = bins.seaport_status(&root, &run, &[]);
    assert_eq!(code, 0, "rerun of the installed cluster: {out}{err}");
    let (code, out, err) = bins.seaport_status(&root, &json, &[]);
    assert_eq!(code, 0, "check of the installed cluster: {out}{err}");
    let checked: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (level, detail) = result(&checked, &m0ip, "port-5000");
    assert_eq!(level, "ok");
    assert!(detail.contains("this cluster's install"), "{detail}");
    phases.done("installed after the fixes; rerun and check pass");

    let (code, out, err) =
        bins.seaport_status(&root, &["delete", "--all", "--prune", "--yes"], &[]);
    assert_eq!(code, 0, "delete: {out}{err}");
    coordinator.stop().unwrap();
}
