//! End to end on 5 lab hosts: `seaport run` with three masters and two
//! workers. The kubeadm double ran `init --upload-certs` on master0, a
//! control-plane join (with master0's certificate key) on each other
//! master, one after the other, and a worker join on each worker; the
//! coordinator's record shows the masters' phases in that order.
//!
//! Then master0 goes offline (its link is cut: nothing reaches it, as when
//! it is powered off). `seaport delete --all --prune` names it at once and
//! waits for it; `--force` goes on without it: every other host is as it
//! was before the install, the summary names master0 as left out, and
//! master0 still holds its install until it is reset by hand.
//!
//! Workers reach the API servers (the test image's stand-ins) through
//! their agent's balancer: the VIP on their loopback link, named in
//! /etc/hosts, `https://apiserver.cluster.local:6443/healthz` answered by
//! every master in turn with the cluster CA, pulls from `sea.hub:5000`
//! through the balancer's registry port (a registry on every master),
//! served again after the agent restarts; masters name themselves.
//! Scaling a master in and out changes every worker's lists. A master
//! cut off is removed with `delete -m --force`: every balancer drops it,
//! master0 deletes its node and asks its etcd pod to remove its member,
//! the summary names it; reset by hand, it joins again. With
//! master0 cut off, workers are answered by the other masters within 10 s
//! and pulls go on; back, it re-enters every pool.
//!
//! Needs what tests/tests/run.rs needs (docs/lab.md).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::seaport::AGENT_BIN_PATH;
use seaport_lab::testimage;
use seaport_lab::{runs, wait, Host};

const CLUSTER: &str = "ha";

/// The kubeadm double's calls on a host.
fn calls(h: &Host) -> String {
    h.exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout
}

/// When the double wrote a file, in nanoseconds.
fn written_at(h: &Host, path: &str) -> u128 {
    h.exec_ok(&["stat", "-c", "%.9Y", path])
        .unwrap()
        .stdout
        .trim()
        .replace('.', "")
        .parse()
        .unwrap()
}

/// sealer's VIP, where workers' API balancers listen.
const VIP: &str = "10.103.97.2";

/// The lines of the host's /etc/hosts that name the API server.
fn api_lines(h: &Host) -> Vec<String> {
    h.exec_ok(&["cat", "/etc/hosts"])
        .unwrap()
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("apiserver.cluster.local"))
        .map(String::from)
        .collect()
}

/// A pull of the image the test image caches, through `sea.hub:5000` (the
/// worker's balancer): the image is removed first, so the registry must
/// answer.
fn pull(h: &Host) -> Result<(), String> {
    let image = "sea.hub:5000/library/seaport-bundled:1.0";
    let _ = h.exec(&["ctr", "images", "rm", image]);
    let out = h
        .exec(&[
            "ctr",
            "images",
            "pull",
            "--hosts-dir=/etc/containerd/certs.d",
            image,
        ])
        .unwrap();
    if out.success() {
        Ok(())
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

/// The names of the masters that answered `n` requests from `h`.
fn answered_by(h: &Host, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            testimage::apiserver_healthz(h).unwrap_or_else(|e| panic!("{}: healthz: {e}", h.name()))
        })
        .collect()
}

/// Whether the VIP is on the host's loopback link.
fn vip_on_lo(h: &Host) -> bool {
    h.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "lo"])
        .unwrap()
        .stdout
        .contains(&format!("inet {VIP}/32"))
}

/// Whether something listens on the VIP's port 6443 on the host.
fn vip_listening(h: &Host) -> bool {
    h.exec_ok(&["ss", "-Hltn"])
        .unwrap()
        .stdout
        .contains(&format!("{VIP}:6443 "))
}

/// Waits until `seaport status` shows the balancer of the worker at `ip`
/// listening on the VIP with exactly `masters` (any order) as backends;
/// returns that host's status.
fn wait_backends(
    bins: &seaport_lab::seaport::Binaries,
    root: &std::path::Path,
    ip: &str,
    masters: &[&String],
) -> serde_json::Value {
    wait_balancer(bins, root, ip, masters, |_| true)
}

/// [`wait_backends`], until `healthy(backend address)` holds for every
/// backend's `healthy` field too.
fn wait_balancer(
    bins: &seaport_lab::seaport::Binaries,
    root: &std::path::Path,
    ip: &str,
    masters: &[&String],
    healthy: impl Fn(&str) -> bool,
) -> serde_json::Value {
    let mut want: Vec<String> = masters.iter().map(|m| format!("{m}:6443")).collect();
    want.sort();
    let mut found = serde_json::Value::Null;
    wait::until(
        &format!("the balancer of {ip} to forward to {want:?}"),
        Duration::from_secs(40),
        Duration::from_millis(500),
        || {
            let (_, out, err) = bins.seaport_out(root, &["status", "--json"]);
            let s: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {out}{err}"))?;
            let host = s[0]["hosts"]
                .as_array()
                .and_then(|hs| hs.iter().find(|h| h["ip"] == ip))
                .cloned()
                .unwrap_or_default();
            let b = &host["balancer"];
            let mut got: Vec<String> = b["backends"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x["addr"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            let states = b["backends"].as_array().is_some_and(|a| {
                a.iter().all(|x| {
                    let addr = x["addr"].as_str().unwrap_or("");
                    x["healthy"] == healthy(addr)
                })
            });
            if b["listen"] == format!("{VIP}:6443") && got == want && states {
                found = host;
                Ok(())
            } else {
                Err(format!("{b}"))
            }
        },
    )
    .unwrap();
    found
}

#[test]
fn three_masters_install_and_an_offline_master0_neither_hangs_nor_blocks_delete() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image: _,
        root,
    } = testimage::prepare();
    phases.done("build binaries and the test image");
    let lab = seaport_lab::Lab::up(5).expect("bring up a lab of 5 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let hosts = lab.hosts();
    let before: Vec<String> = hosts.iter().map(snapshot).collect();
    let ips: Vec<String> = hosts.iter().map(|h| h.ip().to_string()).collect();
    let masters = ips[..3].join(",");
    let workers = ips[3..].join(",");
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &masters,
            "-n",
            &workers,
            "--cluster",
            CLUSTER,
        ],
    );
    assert!(
        ok,
        "seaport run with 3 masters:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(out.contains("cluster ha: succeeded"), "{out}");
    phases.done("seaport run: 3 masters, 2 workers");

    // master0: init with the certificates uploaded for the other masters.
    let init = calls(&hosts[0]);
    assert!(
        init.lines().count() == 1
            && init.starts_with("init --config")
            && init.contains("--upload-certs"),
        "master0's kubeadm calls: {init}"
    );
    let join: serde_json::Value = serde_json::from_str(
        &hosts[0]
            .exec_ok(&["cat", "/var/lib/seaport/data/ha/join.json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let key = join["certificate_key"].as_str().unwrap();
    // The other masters: a control-plane join with master0's key; the
    // workers: a plain join.
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let c = calls(h);
        assert!(
            c.lines().count() == 1 && c.starts_with("join --config"),
            "{}: kubeadm calls {c}",
            h.name()
        );
        let cfg = h
            .exec_ok(&["cat", "/var/lib/kubeadm-double/join.yaml"])
            .unwrap()
            .stdout;
        let control_plane = cfg.lines().any(|l| l == "controlPlane:");
        if i < 3 {
            assert!(
                control_plane && cfg.contains(&format!("certificateKey: {key}")),
                "{}: a master joined without the control plane or master0's key:\n{cfg}",
                h.name()
            );
            assert!(
                cfg.contains(&format!("advertiseAddress: {}", ips[i])),
                "{}: {cfg}",
                h.name()
            );
        } else {
            assert!(
                !control_plane && !cfg.contains(key),
                "{}: a worker joined as a master:\n{cfg}",
                h.name()
            );
        }
    }
    // One master after the other: master 2's kubeadm started (its one
    // call logged) after master 1's had joined (its configuration kept,
    // the double's last act).
    let started = |h: &Host| written_at(h, "/var/lib/kubeadm-double/calls.log");
    let joined = |h: &Host| written_at(h, "/var/lib/kubeadm-double/join.yaml");
    assert!(
        started(&hosts[2]) > joined(&hosts[1]),
        "master 2 started joining before master 1 had joined"
    );
    let (ok, s, err) = bins.seaport_out(&root, &["status", "--json"]);
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    let phases_of: Vec<String> = s[0]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let pos = |name: &str| {
        phases_of
            .iter()
            .position(|p| p == name)
            .unwrap_or_else(|| panic!("no phase {name} in {phases_of:?}"))
    };
    assert!(
        pos("init-master0") < pos("join-master-1")
            && pos("join-master-1") < pos("join-master-2")
            && pos("join-master-2") < pos("join-nodes"),
        "{phases_of:?}"
    );
    phases.done("kubeadm: init, control-plane joins one at a time, worker joins");

    // Workers name the VIP, which their agent put on the loopback link and
    // serves; masters name themselves and run no balancer.
    for (i, h) in hosts.iter().enumerate() {
        let at = if i < 3 { ips[i].as_str() } else { VIP };
        assert_eq!(
            api_lines(h),
            [format!("{at} apiserver.cluster.local")],
            "{}",
            h.name()
        );
        assert_eq!(vip_on_lo(h), i >= 3, "{}: VIP on lo", h.name());
        assert_eq!(
            vip_listening(h),
            i >= 3,
            "{}: listening on the VIP",
            h.name()
        );
    }
    let all_masters: Vec<&String> = ips[..3].iter().collect();
    for ip in &ips[3..] {
        // Every master's API server stand-in answers its check: all up,
        // and the registry port has every master's registry.
        let w = wait_balancer(&bins, &root, ip, &all_masters, |_| true);
        assert_eq!(
            w["balancer"]["registry_listen"],
            format!("{VIP}:5000"),
            "{w}"
        );
        let mut regs: Vec<&str> = w["balancer"]["registry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["addr"].as_str().unwrap())
            .collect();
        regs.sort();
        let mut want: Vec<String> = ips[..3].iter().map(|m| format!("{m}:5000")).collect();
        want.sort();
        assert_eq!(regs, want, "{w}");
    }
    let names: Vec<&str> = hosts[..3].iter().map(|h| h.name()).collect();
    for w in &hosts[3..] {
        // Through the balancer, with the cluster CA: every master answers
        // in turn.
        let by = answered_by(w, 6);
        assert!(
            by.iter().all(|n| names.contains(&n.as_str())) && by.len() == 3,
            "{}: answered by {by:?}",
            w.name()
        );
        pull(w).unwrap_or_else(|e| panic!("{}: pull: {e}", w.name()));
    }
    let (ok, out, err) = bins.seaport_out(&root, &["status"]);
    assert!(
        ok && out.contains(&format!("api balancer {VIP}:6443: {}:6443 up", ips[0]))
            && out.contains(&format!("registry balancer {VIP}:5000: ")),
        "{out}{err}"
    );
    // The agent restarts: the balancer serves again from the list the host
    // kept, before any operation.
    hosts[3]
        .exec_ok(&["systemctl", "restart", "seaport-agent.service"])
        .unwrap();
    wait::until(
        "the restarted agent's balancer to listen",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            if vip_listening(&hosts[3]) {
                Ok(())
            } else {
                Err("not listening".to_string())
            }
        },
    )
    .unwrap();
    wait_backends(&bins, &root, &ips[3], &all_masters);
    phases.done("workers' balancers: VIP, /etc/hosts, status, agent restart");

    // Scale in: the third master leaves (its node deleted from master0,
    // kubeadm reset on it, which removes its etcd member) and is as
    // before; scale out: it joins the control plane again.
    let m2 = &hosts[2];
    let (ok, out, err) = bins.seaport_out(
        &root,
        &["delete", "-m", &ips[2], "--cluster", CLUSTER, "--yes"],
    );
    assert!(ok, "delete -m: {out}\n{err}");
    let c = calls(m2);
    assert!(c.ends_with("reset -f\n"), "master 2's kubeadm calls: {c}");
    let d = diff(&before[2], &snapshot(m2));
    assert!(d.is_empty(), "master 2 differs after it left:\n{d}");
    for ip in &ips[3..] {
        wait_backends(&bins, &root, ip, &all_masters[..2]);
    }
    let (ok, out, err) = bins.seaport_out(&root, &["join", "-m", &ips[2], "--cluster", CLUSTER]);
    assert!(ok, "join -m: {out}\n{err}");
    let c = calls(m2);
    let last = c.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("join --config"),
        "master 2's kubeadm calls: {c}"
    );
    let cfg = m2
        .exec_ok(&["cat", "/var/lib/kubeadm-double/join.yaml"])
        .unwrap()
        .stdout;
    assert!(
        cfg.lines().any(|l| l == "controlPlane:")
            && cfg.contains(&format!("certificateKey: {key}")),
        "master 2 joined again without the control plane:\n{cfg}"
    );
    assert_eq!(
        api_lines(m2),
        [format!("{} apiserver.cluster.local", ips[2])]
    );
    for ip in &ips[3..] {
        wait_backends(&bins, &root, ip, &all_masters);
    }
    phases.done("scale a master in and out");

    // A dead master: its link cut, `delete -m --force` goes on without it.
    // Every worker's balancer drops it, master0 deletes its node and
    // removes its etcd member (etcdctl in master0's etcd pod, through
    // kubectl), the host is forgotten and the summary names it.
    m2.cut_link().unwrap();
    wait::until(
        "master 2 offline",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (_, out, _) = bins.seaport_out(&root, &["status", "--json"]);
            let s: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}"))?;
            let offline = s[0]["hosts"].as_array().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["ip"] == ips[2].as_str() && h["online"] == false)
            });
            if offline {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .unwrap();
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "delete",
            "-m",
            &ips[2],
            "--cluster",
            CLUSTER,
            "--yes",
            "--force",
        ],
    );
    assert!(ok, "delete -m --force: {out}\n{err}");
    assert!(
        err.contains(&format!("{} (", ips[2])) && err.contains("is offline: going on without it"),
        "{err}"
    );
    assert!(
        out.contains(&format!(
            "{} ({}) was offline: not reset",
            ips[2],
            m2.name()
        )) && out.contains(&format!("its etcd member from {}", ips[0])),
        "the summary does not say what was done about master 2:\n{out}"
    );
    for ip in &ips[3..] {
        wait_backends(&bins, &root, ip, &all_masters[..2]);
    }
    let kubectl = hosts[0]
        .exec_ok(&["cat", "/var/lib/kubectl-double/calls.log"])
        .unwrap()
        .stdout;
    assert!(
        kubectl.contains(&format!("delete node {}", m2.name()))
            && kubectl.contains(&format!(
                "-n kube-system exec etcd-{} -- etcdctl",
                hosts[0].name().to_lowercase()
            ))
            && kubectl.contains("member list"),
        "master0's kubectl calls: {kubectl}"
    );
    let (_, out, _) = bins.seaport_out(&root, &["status", "--json"]);
    assert!(
        !out.contains(&format!("\"{}\"", ips[2])),
        "master 2 still in the status: {out}"
    );
    // Back: reset by hand, then joined again to the control plane.
    m2.restore_link().unwrap();
    let out = m2
        .exec(&[AGENT_BIN_PATH, "reset", "--cluster", CLUSTER, "--prune"])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let (ok, out, err) = bins.seaport_out(&root, &["join", "-m", &ips[2], "--cluster", CLUSTER]);
    assert!(ok, "join -m after the forced removal: {out}\n{err}");
    for ip in &ips[3..] {
        wait_backends(&bins, &root, ip, &all_masters);
    }
    phases.done("a dead master removed with delete -m --force, back by join");

    // master0 goes away (its link cut: nothing reaches it, as when it is
    // powered off). Within 10 s the workers' requests are answered by the
    // other masters, and pulls still work.
    hosts[0].cut_link().unwrap();
    let cut = Instant::now();
    for w in &hosts[3..] {
        wait::until(
            "a worker's request answered by another master",
            Duration::from_secs(10).saturating_sub(cut.elapsed()),
            Duration::from_millis(100),
            || match testimage::apiserver_healthz(w) {
                Ok(n) if n != hosts[0].name() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .unwrap();
    }
    let failover = cut.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    eprintln!("workers answered by another master {failover:?} after master0's cut");
    for w in &hosts[3..] {
        let by = answered_by(w, 4);
        assert!(!by.contains(hosts[0].name()), "{}: {by:?}", w.name());
        pull(w).unwrap_or_else(|e| panic!("{}: pull without master0: {e}", w.name()));
    }
    let m0 = format!("{}:6443", ips[0]);
    for ip in &ips[3..] {
        wait_balancer(&bins, &root, ip, &all_masters, |a| a != m0);
    }
    // master0 comes back: it re-enters every pool.
    hosts[0].restore_link().unwrap();
    for ip in &ips[3..] {
        wait_balancer(&bins, &root, ip, &all_masters, |_| true);
    }
    wait::until(
        "master0 answering workers again",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            if answered_by(&hosts[3], 3).contains(hosts[0].name()) {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .unwrap();
    phases.done("master0 cut: failover within 10 s, pulls go on; back in every pool");

    // master0 goes away again. A delete names it at once and waits.
    hosts[0].cut_link().unwrap();
    wait::until(
        "the coordinator to see master0 offline",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let (ok, out, err) = bins.seaport_out(&root, &["status", "--json"]);
            let s: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}"))?;
            if ok && s[0]["hosts"][0]["online"] == false {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut waiting = Command::new(&bins.seaport)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--all", "--prune", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = waiting.stderr.take().unwrap();
    // Read stderr to its end (the CLI must not see a closed pipe), and say
    // when it first names an offline host.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&all).into_owned();
            if !told && text.contains("is offline") {
                let _ = tx.send((text, Instant::now()));
                told = true;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let (said, when) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("delete never named the offline host");
    assert!(
        said.contains(&format!("{} (", ips[0]))
            && said.contains("is offline: the delete waits")
            && said.contains("--force"),
        "{said}"
    );
    assert!(
        when.duration_since(t) < Duration::from_secs(5),
        "the offline host was named only after {:?}",
        when.duration_since(t)
    );
    // The status says so too, while the others are reset.
    wait::until(
        "status to show master0 offline and waited for",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let (_, out, _) = bins.seaport_out(&root, &["status", "--json"]);
            if out.contains("the operation waits for it") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .unwrap();
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "delete ended without master0"
    );
    let _ = waiting.kill();
    let _ = waiting.wait();
    let _ = reader.join();
    phases.done("delete names the offline master0 at once and waits");

    // --force: goes on without it and says so.
    let t = Instant::now();
    let (ok, out, err) =
        bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes", "--force"]);
    assert!(ok, "delete --force: {out}\n{err}");
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "delete --force took {:?}",
        t.elapsed()
    );
    assert!(
        err.contains("is offline: going on without it (--force)"),
        "{err}"
    );
    assert!(out.contains("cluster ha: deleted"), "{out}");
    assert!(
        out.contains(&format!("{} (", ips[0])) && out.contains("was offline: not reset"),
        "the summary does not name master0 as left out:\n{out}"
    );
    // The record stays a little while as deleted, naming master0.
    let (ok, out, _) = bins.seaport_out(&root, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    if let Some(c) = s
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == CLUSTER)
    {
        assert!(ok && c["state"] == "deleted", "{c}");
        assert!(
            c["hosts"][0]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("offline: left out (--force)")),
            "{c}"
        );
    }
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let d = diff(&before[i], &snapshot(h));
        assert!(d.is_empty(), "{}: differs after delete:\n{d}", h.name());
        assert!(
            !vip_on_lo(h) && !vip_listening(h),
            "{}: balancer left",
            h.name()
        );
        assert!(
            !h.exec(&["test", "-e", "/var/lib/seaport-agent/balancer.json"])
                .unwrap()
                .success(),
            "{}: kept list left",
            h.name()
        );
    }
    // master0 was not touched: its install is all there.
    assert!(
        hosts[0]
            .exec(&["test", "-e", "/etc/kubernetes/admin.conf"])
            .unwrap()
            .success(),
        "master0 was reset although it was offline"
    );
    phases.done("delete --force: every other host as before, master0 named");

    // Back, and reset by hand: as before too.
    hosts[0].restore_link().unwrap();
    let out = hosts[0]
        .exec(&[AGENT_BIN_PATH, "reset", "--cluster", CLUSTER, "--prune"])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let d = diff(&before[0], &snapshot(&hosts[0]));
    assert!(d.is_empty(), "master0 differs after its reset:\n{d}");
    phases.done("master0 reset by hand");
    drop(tmp);
    coordinator.stop().unwrap();
}
