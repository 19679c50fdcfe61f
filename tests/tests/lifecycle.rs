//! A cluster's life through sealer Clusterfiles, on 4 lab hosts with the
//! coordinator driving: `seaport apply -f` with a dry run first (nothing
//! changes), then the install of master0 (h1) and two nodes (h2, h3) with a
//! merged Config file in the rootfs, SHELL plugins of both sealer
//! generations (PreInit on masters, post-install on master0) and host
//! labels; broken files refused with the document and field named; h4
//! added (only h4's kubeadm runs) and removed again (reset, deleted from
//! the cluster); files the install wrote changed by hand and found by
//! `seaport status --drift`; an upgrade to an image one small layer bigger,
//! with upgrade plugins, that moves only that layer; the audit log; and
//! `seaport delete --all --prune` leaving /etc, /usr and the units as they
//! were on every host.
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md and docs/install.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::seaport::{self as sp, Binaries};
use seaport_lab::testimage;
use seaport_lab::{runs, wait, Host};

const CLUSTER: &str = "lifecycle";
const DATA: &str = "/var/lib/seaport/data/lifecycle";
const ROOTFS: &str = "/var/lib/seaport/data/lifecycle/rootfs";
const IMAGE_V2: &str = "seaport-test:v2";
const CALLS: &str = "/var/lib/kubeadm-double/calls.log";
/// Markers the plugins write (under /etc, so reset takes them away).
const PREINIT_MARK: &str = "/etc/seaport-lifecycle/preinit.ran";
const POST_INSTALL_MARK: &str = "/etc/seaport-lifecycle/post-install.ran";
const UPGRADE_HOST_MARK: &str = "/etc/seaport-lifecycle/upgrade-host.ran";
const UPGRADE_MARK: &str = "/etc/seaport-lifecycle/upgrade.ran";

fn cluster(bins: &Binaries, root: &Path) -> serde_json::Value {
    let s = bins.seaport_json(root, &["status", "--json"]);
    s.as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == CLUSTER)
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {CLUSTER} in {s}"))
}

fn exists(h: &Host, path: &str) -> bool {
    h.exec(&["test", "-e", path]).unwrap().success()
}

fn cat(h: &Host, path: &str) -> String {
    h.exec_ok(&["cat", path]).unwrap().stdout
}

/// The Clusterfile: h1 master0, h2 (labelled) and h3 nodes, `extra` hosts
/// as nodes, a merged Config, a PreInit plugin on masters, a post-install
/// plugin, and with `upgrade` the two upgrade plugins.
fn clusterfile(image: &str, ips: &[String], extra: &[String], upgrade: bool) -> String {
    let mut s = format!(
        r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: {CLUSTER}
spec:
  image: {image}
  hosts:
  - ips: [{h1}]
    roles: [master]
  - ips: [{h2}]
    roles: [node]
    labels:
      disk: ssd
  - ips: [{h3}]
    roles: [node]
"#,
        h1 = ips[0],
        h2 = ips[1],
        h3 = ips[2],
    );
    for ip in extra {
        s.push_str(&format!("  - ips: [{ip}]\n    roles: [node]\n"));
    }
    s.push_str(&format!(
        r#"---
apiVersion: sealer.io/v2
kind: Config
metadata:
  name: registry-headers
spec:
  path: etc/registry_config.yml
  strategy: merge
  data: |
    http:
      headers:
        X-Seaport-Lifecycle: [lab]
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: preinit-marker
spec:
  type: SHELL
  action: PreInit
  on: master
  data: |
    mkdir -p /etc/seaport-lifecycle
    echo "PreInit on $(hostname)" > {PREINIT_MARK}
---
apiVersion: sealer.io/v2
kind: Plugin
metadata:
  name: post-install-marker
spec:
  type: SHELL
  action: post-install
  data: |
    mkdir -p /etc/seaport-lifecycle
    echo "post-install on $(hostname)" > {POST_INSTALL_MARK}
"#
    ));
    if upgrade {
        s.push_str(&format!(
            r#"---
apiVersion: sealer.io/v2
kind: Plugin
metadata:
  name: upgrade-host-marker
spec:
  type: SHELL
  action: upgrade-host
  data: |
    mkdir -p /etc/seaport-lifecycle
    echo "upgrade-host on $(hostname)" > {UPGRADE_HOST_MARK}
---
apiVersion: sealer.io/v2
kind: Plugin
metadata:
  name: upgrade-marker
spec:
  type: SHELL
  action: upgrade
  data: |
    mkdir -p /etc/seaport-lifecycle
    echo "upgrade on $(hostname)" > {UPGRADE_MARK}
"#
        ));
    }
    s
}

/// Writes `text` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// `seaport apply ARGS`, failing the test with the coordinator's log named.
fn apply_ok(bins: &Binaries, root: &Path, log: &Path, args: &[&str]) -> String {
    let mut argv = vec!["apply"];
    argv.extend_from_slice(args);
    let (ok, out, err) = bins.seaport_out(root, &argv);
    assert!(
        ok,
        "seaport {} failed:\n{out}\n{err}\ncoordinator log: {}",
        argv.join(" "),
        log.display()
    );
    eprintln!("{out}");
    out
}

/// The cluster succeeded with exactly `ips` as hosts, none failed.
fn assert_succeeded(c: &serde_json::Value, ips: &[&String]) {
    assert_eq!(c["state"], "succeeded", "{c:#}");
    let hosts: Vec<&str> = c["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["ip"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
    let mut got = hosts.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the cluster's hosts");
    for h in c["hosts"].as_array().unwrap() {
        assert!(h["error"].is_null(), "{}: {}", h["ip"], h["error"]);
        for st in h["steps"].as_array().unwrap() {
            assert!(
                st["state"].get("failed").is_none(),
                "{}: {} failed: {st}",
                h["ip"],
                st["step"]
            );
        }
    }
}

/// Bytes each node reported receiving (any source), by node id.
fn received(dist: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for img in dist["images"].as_array().into_iter().flatten() {
        for n in img["nodes"].as_array().into_iter().flatten() {
            let sum: u64 = n["received"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|pair| pair[1].as_u64().unwrap_or(0))
                .sum();
            let e = out
                .entry(n["node_id"].as_str().unwrap().to_string())
                .or_insert(0);
            *e = (*e).max(sum);
        }
    }
    out
}

#[test]
fn clusterfile_apply_plugins_scale_drift_upgrade_and_delete() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image: _,
        root,
    } = testimage::prepare();
    phases.done("build binaries and the test image");
    let lab = seaport_lab::Lab::up(4).expect("bring up a lab of 4 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    let clog = coordinator.log().to_path_buf();
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    phases.done("lab up, agents enrolled, hosts' /etc, /usr and units recorded");
    let (h1, h2, h3, h4) = (lab.host(0), lab.host(1), lab.host(2), lab.host(3));
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.ip().to_string()).collect();
    let original_registry_config =
        std::fs::read_to_string(sp::workspace_root().join("rootfs/base/etc/registry_config.yml"))
            .unwrap();
    let dir = tmp.path();
    let file = write(
        dir,
        "Clusterfile",
        &clusterfile(testimage::IMAGE_NAME, &ips, &[], false),
    );

    // 1. Dry run: every host with its stages, nothing changed anywhere.
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &file, "--dry-run"]);
    assert!(ok, "apply --dry-run: {out}{err}");
    eprintln!("{out}");
    assert!(
        out.contains(&format!(
            "cluster {CLUSTER}: install of {}",
            testimage::IMAGE_NAME
        )),
        "{out}"
    );
    for (ip, must) in [
        (&ips[0], ["fetch", "rootfs", "configs", "init-master0"]),
        (&ips[1], ["fetch", "rootfs", "configs", "join-nodes"]),
        (&ips[2], ["fetch", "rootfs", "configs", "join-nodes"]),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(ip.as_str()))
            .unwrap_or_else(|| panic!("no line for {ip} in the dry run:\n{out}"));
        for stage in must {
            assert!(line.contains(stage), "{ip} lacks stage {stage}: {line}");
        }
    }
    assert!(
        !out.lines()
            .any(|l| l.trim_start().starts_with(ips[3].as_str())),
        "h4 is in the plan: {out}"
    );
    for h in lab.hosts() {
        assert!(!exists(h, DATA), "{}: the dry run wrote {DATA}", h.name());
    }
    let s = bins.seaport_json(&root, &["status", "--json"]);
    assert!(
        s.as_array().unwrap().is_empty(),
        "the dry run made a cluster: {s}"
    );
    phases.done("dry run");

    // 2. Broken files: refused before anything runs, naming document and field.
    let mut broken = clusterfile(testimage::IMAGE_NAME, &ips, &[], false);
    broken = broken.replacen("    roles: [master]", "    rolez: [master]", 1);
    let bad = write(dir, "Clusterfile.rolez", &broken);
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &bad, "--dry-run"]);
    assert!(
        !ok,
        "a Clusterfile with spec.hosts[0].rolez was accepted: {out}"
    );
    assert!(
        err.contains(&format!("document 1 (Cluster {CLUSTER})"))
            && err.contains("spec.hosts[0].rolez")
            && err.contains("unknown field"),
        "{err}"
    );
    let unknown_kind = format!(
        "{}---\napiVersion: sealer.io/v2\nkind: Clustre\nmetadata:\n  name: typo\nspec: {{}}\n",
        clusterfile(testimage::IMAGE_NAME, &ips, &[], false)
    );
    let bad = write(dir, "Clusterfile.kind", &unknown_kind);
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &bad, "--dry-run"]);
    assert!(!ok, "a Clusterfile with kind Clustre was accepted: {out}");
    assert!(
        err.contains("document 5") && err.contains("kind") && err.contains("Clustre"),
        "{err}"
    );
    phases.done("broken Clusterfiles refused");

    // 1 (cont.). The install.
    let out = apply_ok(&bins, &root, &clog, &["-f", &file]);
    assert!(
        out.contains(&format!("cluster {CLUSTER}: succeeded")),
        "{out}"
    );
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2]]);
    for h in [h1, h2, h3] {
        let cfg = cat(h, &format!("{ROOTFS}/etc/registry_config.yml"));
        assert!(
            cfg.contains("X-Seaport-Lifecycle"),
            "{}: the Config was not merged: {cfg}",
            h.name()
        );
        for kept in [
            "X-Content-Type-Options",
            "rootdirectory: /var/lib/registry",
            "addr: :5000",
            "threshold: 3",
        ] {
            assert!(
                cfg.contains(kept),
                "{}: the merge lost {kept}: {cfg}",
                h.name()
            );
        }
    }
    assert!(original_registry_config.contains("X-Content-Type-Options"));
    assert!(
        cat(h1, PREINIT_MARK).contains("PreInit on"),
        "the PreInit plugin did not run on master0"
    );
    for h in [h2, h3, h4] {
        assert!(
            !exists(h, PREINIT_MARK),
            "{}: the PreInit plugin `on: master` ran on a node",
            h.name()
        );
    }
    assert!(cat(h1, POST_INSTALL_MARK).contains("post-install on"));
    for h in [h2, h3, h4] {
        assert!(
            !exists(h, POST_INSTALL_MARK),
            "{}: post-install ran off master0",
            h.name()
        );
    }
    let (ok, out, err) = bins.seaport_out(&root, &["logs", "--step", "labels-taints"]);
    assert!(ok, "seaport logs --step labels-taints: {out}{err}");
    assert!(
        out.contains("label node") && out.contains("disk=ssd") && out.contains(h2.name()),
        "no kubectl label of h2 in the labels-taints log:\n{out}"
    );
    let calls: Vec<String> = [h1, h2, h3].iter().map(|h| cat(h, CALLS)).collect();
    assert!(calls[0].starts_with("init"), "h1 kubeadm: {}", calls[0]);
    for c in &calls[1..] {
        assert!(c.starts_with("join"), "node kubeadm: {c}");
    }
    phases.done("install from the Clusterfile");

    // 3. Scale up: h4 joins, nothing runs kubeadm again elsewhere.
    let file4 = write(
        dir,
        "Clusterfile.h4",
        &clusterfile(testimage::IMAGE_NAME, &ips, &ips[3..], false),
    );
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &file4, "--dry-run"]);
    assert!(ok && out.contains("scale up"), "{out}{err}");
    apply_ok(&bins, &root, &clog, &["-f", &file4]);
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2], &ips[3]]);
    let h4calls = cat(h4, CALLS);
    assert!(h4calls.starts_with("join"), "h4 kubeadm: {h4calls}");
    for (h, before) in [h1, h2, h3].iter().zip(&calls) {
        assert_eq!(
            &cat(h, CALLS),
            before,
            "{}: kubeadm ran again on scale up",
            h.name()
        );
    }
    assert!(
        !exists(h4, PREINIT_MARK),
        "the PreInit plugin `on: master` ran on the new node"
    );
    phases.done("scale up to h4");

    // 4. Scale down: h4 leaves again.
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &file]);
    assert!(
        !ok && err.contains("--yes"),
        "removing a host without --yes and no terminal: {out}{err}"
    );
    apply_ok(&bins, &root, &clog, &["-f", &file, "--yes"]);
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2]]);
    assert!(!exists(h4, DATA), "h4 keeps {DATA} after it left");
    let active = h4
        .exec(&["systemctl", "is-active", "containerd.service"])
        .unwrap();
    assert_ne!(active.stdout.trim(), "active", "containerd runs on h4");
    let (ok, out, err) = bins.seaport_out(&root, &["logs", "--step", "delete-nodes"]);
    assert!(ok, "seaport logs --step delete-nodes: {out}{err}");
    assert!(
        out.contains("delete node") && out.contains(h4.name()),
        "no kubectl delete node of h4:\n{out}"
    );
    phases.done("scale down, h4 removed");

    // The same by host list: `seaport join -n` and `seaport delete -n`.
    let (ok, out, err) =
        bins.seaport_out(&root, &["join", "-n", &ips[3], "--cluster", "lifecycle"]);
    assert!(ok, "seaport join -n h4: {out}{err}");
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2], &ips[3]]);
    assert!(exists(h4, DATA), "h4 has no {DATA} after seaport join");
    let (ok, out, err) = bins.seaport_out(
        &root,
        &["delete", "-n", &ips[3], "--cluster", "lifecycle", "--yes"],
    );
    assert!(ok, "seaport delete -n h4: {out}{err}");
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2]]);
    assert!(!exists(h4, DATA), "h4 keeps {DATA} after seaport delete -n");
    phases.done("join -n and delete -n of h4");

    // 5. Drift: one file changed and one removed on h2.
    let (ok, out, err) = bins.seaport_out(&root, &["status", "--drift"]);
    assert!(ok, "drift right after an apply: {out}{err}");
    let hosts_toml = h2
        .exec_ok(&[
            "sh",
            "-c",
            "ls /etc/containerd/certs.d/*/hosts.toml | head -n1",
        ])
        .unwrap()
        .stdout
        .trim()
        .to_string();
    assert!(!hosts_toml.is_empty(), "h2 has no hosts.toml");
    let containerd_config = cat(h2, "/etc/containerd/config.toml");
    let hosts_toml_text = cat(h2, &hosts_toml);
    h2.exec_ok(&[
        "sh",
        "-c",
        &format!("echo '# changed by hand' >> /etc/containerd/config.toml && rm {hosts_toml}"),
    ])
    .unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["status", "--drift"]);
    eprintln!("{out}{err}");
    assert!(!ok, "drift not reported: {out}");
    assert!(
        out.contains(&format!("{}: modified /etc/containerd/config.toml", ips[1])),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: missing {hosts_toml}", ips[1])),
        "{out}"
    );
    for ip in [&ips[0], &ips[2]] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{ip}: ")) && l.ends_with("files as installed")),
            "{ip} is not clean: {out}"
        );
    }
    h2.write_file(
        "/etc/containerd/config.toml",
        containerd_config.as_bytes(),
        0o644,
    )
    .unwrap();
    h2.write_file(&hosts_toml, hosts_toml_text.as_bytes(), 0o644)
        .unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["status", "--drift"]);
    assert!(ok, "drift after putting the files back: {out}{err}");
    phases.done("drift");

    // 6. Upgrade to an image with one more small layer.
    let ctx = dir.join("v2-context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("seaport-v2.txt"), "the second version\n").unwrap();
    std::fs::write(
        ctx.join("Kubefile"),
        format!("FROM {}\nCOPY seaport-v2.txt etc/\n", testimage::IMAGE_NAME),
    )
    .unwrap();
    let kubefile = ctx.join("Kubefile");
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "build",
            "-f",
            kubefile.to_str().unwrap(),
            "-t",
            IMAGE_V2,
            ctx.to_str().unwrap(),
        ],
    );
    assert!(ok, "seaport build {IMAGE_V2}: {out}{err}");
    let inspect = bins.seaport_json(&root, &["inspect", IMAGE_V2]);
    let layers = inspect["layers"].as_array().unwrap();
    let total: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    let new_layer = layers.last().unwrap()["size"].as_u64().unwrap();
    let v1 = bins.seaport_json(&root, &["inspect", testimage::IMAGE_NAME]);
    assert_eq!(
        v1["layers"].as_array().unwrap().len() + 1,
        layers.len(),
        "{IMAGE_V2} is not {} plus one layer",
        testimage::IMAGE_NAME
    );
    let dist_before = bins.seaport_json(&root, &["distribute", "status", "--json"]);
    let upgrade_file = write(
        dir,
        "Clusterfile.v2",
        &clusterfile(IMAGE_V2, &ips, &[], true),
    );
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", &upgrade_file, "--dry-run"]);
    assert!(ok && out.contains("upgrade"), "{out}{err}");
    let out = apply_ok(&bins, &root, &clog, &["-f", &upgrade_file]);
    assert!(
        out.contains(&format!("cluster {CLUSTER}: succeeded")),
        "{out}"
    );
    let c = cluster(&bins, &root);
    assert_succeeded(&c, &[&ips[0], &ips[1], &ips[2]]);
    assert_eq!(c["image"], IMAGE_V2, "{c:#}");
    for h in [h1, h2, h3] {
        assert_eq!(
            cat(h, &format!("{ROOTFS}/etc/seaport-v2.txt")),
            "the second version\n",
            "{}",
            h.name()
        );
        assert!(
            cat(h, &format!("{ROOTFS}/etc/registry_config.yml")).contains("X-Seaport-Lifecycle"),
            "{}: the Config is gone from the new rootfs",
            h.name()
        );
        assert!(
            cat(h, UPGRADE_HOST_MARK).contains("upgrade-host on"),
            "{}: upgrade-host did not run",
            h.name()
        );
    }
    assert!(cat(h1, UPGRADE_MARK).contains("upgrade on"));
    for h in [h2, h3] {
        assert!(
            !exists(h, UPGRADE_MARK),
            "{}: `upgrade` ran off master0",
            h.name()
        );
    }
    for (h, before) in [h1, h2, h3].iter().zip(&calls) {
        assert_eq!(
            &cat(h, CALLS),
            before,
            "{}: kubeadm ran on upgrade",
            h.name()
        );
    }
    // Only the new layer moved: what the nodes received, and what the
    // coordinator served, since before the upgrade.
    let served_before = dist_before["served_bytes"].as_u64().unwrap();
    let recv_before = received(&dist_before);
    let node_ids: Vec<String> = c["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["node_id"].as_str().unwrap().to_string())
        .collect();
    let moved = |d: &serde_json::Value| -> u64 {
        let after = received(d);
        node_ids
            .iter()
            .map(|n| after.get(n).unwrap_or(&0) - recv_before.get(n).unwrap_or(&0))
            .sum()
    };
    let dist_after = wait::until(
        "the nodes to report the new layer received",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let d = bins.seaport_json(&root, &["distribute", "status", "--json"]);
            if moved(&d) >= 3 * new_layer {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        },
    )
    .unwrap();
    let moved_bytes = moved(&dist_after);
    let served = dist_after["served_bytes"].as_u64().unwrap() - served_before;
    eprintln!(
        "upgrade moved {moved_bytes} bytes to the nodes ({served} from the coordinator); image {total} bytes, new layer {new_layer}"
    );
    assert!(
        moved_bytes < total / 10 && served < total / 10,
        "the upgrade moved {moved_bytes} bytes to the nodes and {served} from the coordinator, of an image of {total}"
    );
    phases.done("upgrade to v2");

    // 7. The audit log: every apply, what it was and how it was taken.
    let audit = bins.seaport_json(&root, &["audit", "--json"]);
    let applies: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"].as_str().unwrap_or("").contains("Clusterfile"))
        .collect();
    eprintln!("{audit:#}");
    let results: Vec<&str> = applies
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(applies.len(), 4, "applies in the audit log: {audit:#}");
    for (r, op) in results
        .iter()
        .zip(["install", "scale up", "scale down", "upgrade"])
    {
        assert!(
            r.contains("accepted") && r.contains(op),
            "{r} (wanted {op})"
        );
    }
    // And how each ended.
    let ended: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"].as_str().unwrap_or("").ends_with("ended"))
        .map(|e| (e["what"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    for op in ["install", "scale up", "scale down", "upgrade"] {
        assert!(
            ended.iter().any(
                |(w, r)| w.starts_with(&format!("{op} of cluster lifecycle")) && *r == "succeeded"
            ),
            "no successful end of the {op} in the audit log: {ended:?}"
        );
    }
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["who"].as_str().is_some_and(|w| w.contains("admin"))),
        "an entry without the admin who asked: {audit:#}"
    );
    phases.done("audit");

    // 8. Delete: every host as before.
    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    assert!(
        out.contains(&format!("cluster {CLUSTER}: deleted")),
        "{out}"
    );
    for (i, h) in lab.hosts().iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
        assert!(!exists(h, DATA), "{}: {DATA} is left", h.name());
    }
    phases.done("delete --all --prune on every host");
    coordinator.stop().unwrap();
    lab.down().expect("take the lab down");
}
