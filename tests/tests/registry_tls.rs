//! End to end on 2 lab hosts (master0 and a worker) with the containerd
//! test image, installed from a Clusterfile whose `localRegistry` sets
//! `insecure: false`:
//!
//! - first a Clusterfile giving a certificate for another domain is
//!   refused naming `spec.registry.localRegistry.cert.certificate`, and
//!   neither host changed;
//! - then the install succeeds and the registry serves TLS: `ctr` pulls
//!   from `sea.hub:5000` (and of the `docker.io` name through the mirror)
//!   work on both hosts through containerd's `certs.d` trust (the worker's
//!   through its node-local balancer, whose registry backend is up by
//!   `GET /v2/` over TLS); `curl https://sea.hub:5000/v2/` with the
//!   cluster's registry CA works, without it or with another CA it is
//!   refused, and plain HTTP gets no registry answer;
//! - the key is 0600 on master0 and absent from the worker, and no line of
//!   it shows in `seaport status` (text and JSON), `seaport apply`'s
//!   output or the coordinator's log;
//! - `seaport delete --all --prune` leaves every host as before.
//!
//! Needs what tests/tests/run.rs needs.

use seaport_lab::checks::{diff, snapshot, Phases};
use seaport_lab::testimage::{self, TestRuntime};
use seaport_lab::{runs, Host};

const CLUSTER: &str = "lab";
const CA: &str = "/etc/containerd/certs.d/sea.hub:5000/ca.crt";
const KEY: &str = "/var/lib/seaport/data/lab/registry.key";
const BUNDLED: &str = "sea.hub:5000/library/seaport-bundled:1.0";

fn clusterfile(image: &str, master: &str, worker: &str, registry: &str) -> String {
    testimage::registry_clusterfile(CLUSTER, image, master, worker, registry)
}

/// `cert:` giving `c` (PEM block scalars under `localRegistry`).
fn given(c: &seaport_shared::registry_cert::RegistryCert) -> String {
    let block = |name: &str, pem: &str| {
        let body: String = pem.lines().map(|l| format!("          {l}\n")).collect();
        format!("        {name}: |\n{body}")
    };
    format!(
        "      cert:\n{}{}{}",
        block("ca", &c.ca),
        block("certificate", &c.certificate),
        block("key", &c.key)
    )
}

/// `ctr images pull` of `image` through containerd's `certs.d` (no
/// `--plain-http`, no `--skip-verify`): the image is removed first, so the
/// registry must answer.
fn ctr_pull(h: &Host, image: &str) -> Result<(), String> {
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
        return Ok(());
    }
    let domain = image.split('/').next().unwrap_or_default();
    let hosts = h
        .exec(&[
            "cat",
            &format!("/etc/containerd/certs.d/{domain}/hosts.toml"),
        ])
        .unwrap();
    let debug = h
        .exec(&[
            "ctr",
            "--debug",
            "images",
            "pull",
            "--hosts-dir=/etc/containerd/certs.d",
            image,
        ])
        .unwrap();
    Err(format!(
        "{}{}\nhosts.toml:\n{}\nwith --debug:\n{}",
        out.stdout, out.stderr, hosts.stdout, debug.stderr
    ))
}

/// `curl` of `https://sea.hub:5000/v2/` with `extra` arguments: success and
/// what it said.
fn curl(h: &Host, extra: &[&str]) -> (bool, String) {
    let mut argv = vec!["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"];
    argv.extend(extra);
    argv.push("https://sea.hub:5000/v2/");
    let out = h.exec(&argv).unwrap();
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn insecure_false_serves_tls_that_every_host_trusts_and_nothing_else_does() {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image,
        root,
    } = testimage::prepare_with(TestRuntime::Containerd);
    phases.done("build binaries and the test image");
    let lab = seaport_lab::Lab::up(2).expect("bring up a lab of 2 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, n1) = (lab.host(0), lab.host(1));
    let before: Vec<String> = lab.hosts().iter().map(snapshot).collect();
    let (mip, wip) = (m0.ip().to_string(), n1.ip().to_string());
    let file = tmp.path().join("Clusterfile");

    // A certificate for another name: refused before any host changes.
    let other = seaport_shared::registry_cert::generate("other.hub", &[], &[]).unwrap();
    std::fs::write(&file, clusterfile(&image.name, &mip, &wip, &given(&other))).unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok, "a certificate for other.hub was accepted:\n{out}{err}");
    assert!(
        err.contains("spec.registry.localRegistry.cert.certificate")
            && err.contains("not valid for sea.hub"),
        "{out}{err}"
    );
    assert!(!format!("{out}{err}").contains("PRIVATE KEY"), "{out}{err}");
    for (i, h) in [m0, n1].into_iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: changed by a refused Clusterfile:\n{d}",
            h.name()
        );
    }
    phases.done("a certificate for another domain refused, hosts untouched");

    std::fs::write(
        &file,
        clusterfile(&image.name, &mip, &wip, "      insecure: false\n"),
    )
    .unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        ok,
        "seaport apply failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(out.contains("cluster lab: succeeded"), "{out}");
    let mut shown = format!("{out}{err}");
    phases.done("seaport apply with localRegistry.insecure: false");

    // The worker's registry backend is up by GET /v2/ over TLS.
    let want = format!("{mip}:5000");
    bins.wait_registry_backend_up(&root, &wip, &want).unwrap();

    // Another CA, to show it is not trusted.
    let stranger = seaport_shared::registry_cert::generate("sea.hub", &[], &[]).unwrap();
    for h in [m0, n1] {
        for image in [BUNDLED, "docker.io/library/seaport-bundled:1.0"] {
            ctr_pull(h, image)
                .unwrap_or_else(|e| panic!("{}: ctr pull {image} through certs.d: {e}", h.name()));
        }
        let (ok, said) = curl(h, &["--cacert", CA]);
        assert!(ok && said == "200", "{}: with the CA: {said}", h.name());
        let (ok, said) = curl(h, &[]);
        assert!(!ok, "{}: trusted without the CA: {said}", h.name());
        assert!(said.contains("certificate"), "{}: {said}", h.name());
        h.write_file("/tmp/stranger-ca.crt", stranger.ca.as_bytes(), 0o644)
            .unwrap();
        let (ok, said) = curl(h, &["--cacert", "/tmp/stranger-ca.crt"]);
        assert!(!ok, "{}: trusted with another CA: {said}", h.name());
        h.exec_ok(&["rm", "-f", "/tmp/stranger-ca.crt"]).unwrap();
        // Plain HTTP gets no registry answer (the registry speaks TLS).
        let out = h
            .exec(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://sea.hub:5000/v2/",
            ])
            .unwrap();
        assert_ne!(out.stdout.trim(), "200", "{}: plain HTTP served", h.name());
    }
    phases.done("pulls through the runtime's trust; curl only with the cluster's CA");

    // The key: 0600 on the registry host, nowhere else, never shown.
    let mode = m0.exec_ok(&["stat", "-c", "%a", KEY]).unwrap().stdout;
    assert_eq!(mode.trim(), "600");
    assert!(!n1.exec(&["test", "-e", KEY]).unwrap().success());
    let key = m0.exec_ok(&["cat", KEY]).unwrap().stdout;
    let secret_line = key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .expect("a line of the key")
        .to_string();
    for args in [vec!["status"], vec!["status", "--json"]] {
        let (_, out, err) = bins.seaport_out(&root, &args);
        shown.push_str(&out);
        shown.push_str(&err);
    }
    assert!(
        !shown.contains(&secret_line) && !shown.contains("PRIVATE KEY"),
        "the key in seaport's output:\n{shown}"
    );
    let log = std::fs::read_to_string(coordinator.log()).unwrap();
    assert!(
        !log.contains(&secret_line) && !log.contains("PRIVATE KEY"),
        "the key in the coordinator's log"
    );
    phases.done("the key 0600 on master0 only, in no output or log");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    for (i, h) in [m0, n1].into_iter().enumerate() {
        let d = diff(&before[i], &snapshot(h));
        assert!(
            d.is_empty(),
            "{}: /etc, /usr or units differ after delete:\n{d}",
            h.name()
        );
    }
    phases.done("delete --all --prune: every host as before");
    coordinator.stop().unwrap();
}
