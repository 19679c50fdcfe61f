//! sealer app images of both generations, built with `seaport build` FROM
//! the test cluster image (tests/src/testimage.rs) and installed with
//! `seaport run` on lab hosts, each its own cluster:
//!
//! - a sealer 0.8 app image, as sealerio/applications writes them:
//!   `COPY etc .` then `CMD kubectl apply -f etc/...`; its CMD finds its
//!   files because the directory keeps its name (sealer 0.8's rule);
//! - a sealer 0.9+ image: `COPY rootfs .` (spread, as basefs uses it), a
//!   kube app from a directory of plain YAML, a shell app whose script uses
//!   paths relative to the rootfs (as basefs' calico.sh does), and an app of
//!   mixed files launched by its APPCMDS, all named by LAUNCH.
//!
//! kubectl on the hosts is the recording double of the test image
//! (tests/fixtures/kubectl-double): it fails on a missing or malformed
//! manifest, and records each file it accepted, which the test reads.
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc and
//! docker-registry on the machine (see docs/lab.md).

use std::fs;
use std::path::Path;

use seaport_lab::checks::Phases;
use seaport_lab::seaport::Binaries;
use seaport_lab::{runs, testimage};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, v) in files {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }
}

fn manifest(kind: &str, name: &str) -> String {
    format!("apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n")
}

/// Builds `tag` from `kubefile` and `files` with the `seaport` CLI; returns
/// its stderr (the notes and warnings).
fn build(
    bins: &Binaries,
    root: &Path,
    dir: &Path,
    tag: &str,
    kubefile: &str,
    files: &[(&str, &str)],
) -> String {
    write(dir, files);
    fs::write(dir.join("Kubefile"), kubefile).unwrap();
    let (ok, out, err) = bins.seaport_out(root, &["build", "-t", tag, dir.to_str().unwrap()]);
    assert!(ok, "seaport build {tag}: {out}{err}");
    err
}

#[test]
fn sealer_08_and_09_app_images_install_and_launch() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image: _,
        root,
    } = testimage::prepare();
    let base = testimage::IMAGE_NAME;

    // sealer 0.8: the base carries Metadata, the Kubefile has CMD.
    let x = manifest("ConfigMap", "x");
    let y = format!(
        "{}---\n{}",
        manifest("Namespace", "demo"),
        manifest("Service", "y")
    );
    let notes = build(
        &bins,
        &root,
        &tmp.path().join("app08"),
        "app08:v1",
        &format!(
            "FROM {base}\nCOPY etc . # the app's manifests\nCMD kubectl apply -f etc/x.yaml\nCMD kubectl apply -f etc/y.yaml\n"
        ),
        &[("etc/x.yaml", &x), ("etc/y.yaml", &y)],
    );
    assert!(
        notes.contains("note:")
            && notes.contains("COPY etc . # the app's manifests: the contents of directory etc go to etc/ (sealer 0.9+ rules: to /): sealer 0.8 rules"),
        "{notes}"
    );
    assert!(!notes.contains("warning:"), "{notes}");

    // sealer 0.9+: LAUNCH and APP.
    let extra = manifest("ConfigMap", "extra");
    let deploy = manifest("ConfigMap", "nginx-conf");
    let svc = manifest("Service", "nginx");
    let app = manifest("ConfigMap", "mixed");
    let notes = build(
        &bins,
        &root,
        &tmp.path().join("app09"),
        "app09:v1",
        &format!(
            "FROM {base}\nCOPY rootfs .\nAPP nginx local://nginx\nAPP setup local://setup.sh\n\
             APP mixed local://mixed\nAPPCMDS mixed [\"kubectl\", \"apply\", \"-f\", \"app.yaml\"]\n\
             LAUNCH [\"nginx\", \"setup\", \"mixed\"]\n"
        ),
        &[
            ("rootfs/applications/extra.yaml", &extra),
            ("nginx/deployment.yaml", &deploy),
            ("nginx/service.yml", &svc),
            ("setup.sh", "#!/bin/bash\nset -e\nkubectl apply -f applications/extra.yaml\n"),
            ("mixed/app.yaml", &app),
            ("mixed/install.sh", "echo not run\n"),
        ],
    );
    assert!(
        notes.contains("COPY rootfs .: the contents of directory rootfs go to / (sealer 0.8 rules: to rootfs/): sealer 0.9+ rules, line 3 has APP"),
        "{notes}"
    );
    phases.done("test image and both app images built");

    let lab = seaport_lab::Lab::up(2).expect("bring up a lab of 2 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (h1, h2) = (lab.host(0), lab.host(1));

    for (image, host, cluster) in [("app08:v1", h1, "c08"), ("app09:v1", h2, "c09")] {
        let ip = host.ip().to_string();
        let (ok, out, err) =
            bins.seaport_out(&root, &["run", image, "-m", &ip, "--cluster", cluster]);
        assert!(
            ok && out.contains(&format!("cluster {cluster}: succeeded")),
            "seaport run {image}: {out}{err}\ncoordinator log: {}",
            coordinator.log().display()
        );
    }
    phases.done("both images installed");

    let cat = |h: &seaport_lab::Host, p: &str| h.exec_ok(&["cat", p]).unwrap().stdout;
    let rootfs = |c: &str| format!("/var/lib/seaport/data/{c}/rootfs");
    // 0.8: the CMDs ran in the rootfs and found etc/x.yaml and etc/y.yaml.
    let applied = cat(h1, "/var/lib/kubectl-double/applied.log");
    let r08 = rootfs("c08");
    assert_eq!(
        applied,
        format!("apply {r08}/etc/x.yaml ConfigMap\napply {r08}/etc/y.yaml Namespace,Service\n"),
        "calls: {}",
        cat(h1, "/var/lib/kubectl-double/calls.log")
    );
    // 0.9: the kube app applied each of its files, the shell app's script
    // found applications/extra.yaml from the rootfs, the mixed app ran its
    // APPCMDS in its own directory; in LAUNCH's order.
    let applied = cat(h2, "/var/lib/kubectl-double/applied.log");
    let r09 = rootfs("c09");
    assert_eq!(
        applied,
        format!(
            "apply {r09}/application/apps/nginx/deployment.yaml ConfigMap\n\
             apply {r09}/application/apps/nginx/service.yml Service\n\
             apply {r09}/applications/extra.yaml ConfigMap\n\
             apply {r09}/application/apps/mixed/app.yaml ConfigMap\n"
        ),
        "calls: {}",
        cat(h2, "/var/lib/kubectl-double/calls.log")
    );
    let calls = cat(h2, "/var/lib/kubectl-double/calls.log");
    assert!(
        calls.contains(&format!(
            "{r09}/application/apps/mixed\tapply -f app.yaml\n"
        )),
        "{calls}"
    );
    phases.done("launch commands checked from the kubectl double's record");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    coordinator.stop().unwrap();
}
