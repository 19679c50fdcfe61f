//! End to end on 2 lab hosts: cluster images in the formats sealer and
//! registries publish.
//!
//! - The test image (tests/src/testimage.rs), pushed by skopeo to Debian's
//!   docker-registry on loopback as a Docker schema 2 manifest with gzip
//!   layers, is pulled with `seaport pull`, used as `FROM` with a RUN,
//!   saved, removed, loaded, and installed with `seaport run`: the RUN's file
//!   and the gzip base's files are on every host, containerd runs.
//! - The test image built for `linux/amd64,linux/arm64` (one OCI index)
//!   installs with every (amd64) host applying the amd64 manifest: each
//!   host's rootfs comes from it, and the arm64 manifest never reaches a
//!   host.
//! - An image with only arm64 is refused when the run is planned, naming
//!   every host and the platform the image has; nothing starts.
//!
//! Needs root, systemd-nspawn, debootstrap, skopeo and Debian's containerd,
//! runc and docker-registry on the machine (docs/lab.md).

use std::process::Command;

use seaport_lab::runs;
use seaport_lab::seaport::Binaries;
use seaport_lab::testimage::{self, LoopbackRegistry};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn docker_v2s2_gzip_and_multi_platform_images_install_on_lab_hosts() {
    testimage::require_machine();
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let test_image =
        testimage::build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    let root = tmp.path().join("seaport-root");

    // The test image as sealer publishes images: Docker schema 2, gzip.
    let (registry, addr) =
        LoopbackRegistry::start(&tmp.path().join("v2s2-registry")).expect("start docker-registry");
    let remote = format!("{addr}/sealerio/seaport-test:v1");
    testimage::push_docker_v2s2_gzip(
        &test_image.layout,
        "docker.io/library/seaport-test:v1",
        &tmp.path().join("v2s2"),
        &remote,
    )
    .expect("push the test image as docker v2s2 with gzip layers");
    let raw = skopeo_raw(&format!("docker://{remote}"));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    bins.seaport_ok(&root, &["pull", "--insecure", &remote]);
    let pulled = json(&bins.seaport_ok(&root, &["inspect", &remote]));
    assert_eq!(
        pulled["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        pulled["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // FROM the pulled image, with a RUN that reads its gzip layers.
    let ctx = tmp.path().join("derived-context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Kubefile"),
        format!(
            "FROM {remote}\nRUN test -x bin/kubeadm && echo \"derived from the v2s2 image\" > etc/v2s2-marker\n"
        ),
    )
    .unwrap();
    bins.seaport_ok(
        &root,
        &["build", "-t", "v2s2-derived:v1", ctx.to_str().unwrap()],
    );
    // Saved, removed and loaded back.
    let archive = tmp.path().join("v2s2-derived.tar");
    bins.seaport_ok(
        &root,
        &["save", "-o", archive.to_str().unwrap(), "v2s2-derived:v1"],
    );
    let before_rmi = json(&bins.seaport_ok(&root, &["inspect", "v2s2-derived:v1"]));
    bins.seaport_ok(&root, &["rmi", "v2s2-derived:v1"]);
    let (ok, _, _) = bins.seaport_out(&root, &["inspect", "v2s2-derived:v1"]);
    assert!(!ok, "the image is still there after rmi");
    bins.seaport_ok(&root, &["load", "-i", archive.to_str().unwrap()]);
    let derived = json(&bins.seaport_ok(&root, &["inspect", "v2s2-derived:v1"]));
    assert_eq!(derived["digest"], before_rmi["digest"]);
    let derived_digest = derived["digest"].as_str().unwrap().to_string();

    // The same image for two platforms, under one index.
    let multi = testimage::build_test_image_as(
        &tmp.path().join("multi"),
        &bins.seaport,
        &root,
        "seaport-multi:v1",
        Some("linux/amd64,linux/arm64"),
        testimage::TestRuntime::Containerd,
    )
    .expect("build the 2-platform test image");
    let shown = json(&bins.seaport_ok(&root, &["inspect", "seaport-multi:v1"]));
    assert_eq!(
        shown["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let amd64_manifest = shown["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let arm64_manifest = shown["manifests"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = json(&bins.seaport_ok(&root, &["images", "--json"]));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "seaport-multi:v1")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["platform"], "linux/amd64,linux/arm64");
    assert_eq!(row["digest"], multi.digest.to_string());

    // An image with only arm64.
    let arm_ctx = tmp.path().join("arm-context");
    std::fs::create_dir_all(arm_ctx.join("etc")).unwrap();
    std::fs::write(arm_ctx.join("etc/arm-only"), "arm64\n").unwrap();
    std::fs::write(arm_ctx.join("Kubefile"), "FROM scratch\nCOPY etc etc\n").unwrap();
    bins.seaport_ok(
        &root,
        &[
            "build",
            "--platform",
            "linux/arm64",
            "-t",
            "arm-only:v1",
            arm_ctx.to_str().unwrap(),
        ],
    );
    drop(registry);

    let lab = seaport_lab::Lab::up(2).expect("bring up a lab of 2 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    let (m0, n1) = (lab.host(0), lab.host(1));
    let (m0ip, n1ip) = (m0.ip().to_string(), n1.ip().to_string());

    // The image derived from the Docker v2s2 gzip image installs.
    let out = bins.seaport_ok(
        &root,
        &[
            "run",
            "v2s2-derived:v1",
            "-m",
            &m0ip,
            "-n",
            &n1ip,
            "--cluster",
            "v2s2",
        ],
    );
    assert!(out.contains("cluster v2s2: succeeded"), "{out}");
    for h in [m0, n1] {
        let rootfs = "/var/lib/seaport/data/v2s2/rootfs";
        let marker = h
            .exec_ok(&["cat", &format!("{rootfs}/etc/v2s2-marker")])
            .unwrap()
            .stdout;
        assert_eq!(marker, "derived from the v2s2 image\n", "{}", h.name());
        // A file of the gzip base: the kubeadm double ran from it.
        h.exec_ok(&["test", "-x", &format!("{rootfs}/bin/kubeadm")])
            .unwrap();
        let from = h
            .exec_ok(&["cat", "/var/lib/seaport/data/v2s2/rootfs.image"])
            .unwrap()
            .stdout;
        assert_eq!(from.trim(), derived_digest, "{}", h.name());
        let active = h
            .exec(&["systemctl", "is-active", "containerd.service"])
            .unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}", h.name());
    }
    let calls = m0
        .exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout;
    assert!(calls.starts_with("init --config"), "{calls}");
    bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);

    // The 2-platform image: every host applies the amd64 manifest.
    let out = bins.seaport_ok(
        &root,
        &[
            "run",
            "seaport-multi:v1",
            "-m",
            &m0ip,
            "-n",
            &n1ip,
            "--cluster",
            "multi",
        ],
    );
    assert!(out.contains("cluster multi: succeeded"), "{out}");
    let status = json(&bins.seaport_ok(&root, &["status", "--json"]));
    let c = status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "multi")
        .unwrap();
    assert_eq!(c["manifest_digest"], multi.digest.to_string());
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    for h in [m0, n1] {
        let from = h
            .exec_ok(&["cat", "/var/lib/seaport/data/multi/rootfs.image"])
            .unwrap()
            .stdout;
        assert_eq!(from.trim(), amd64_manifest, "{}", h.name());
        let content = "/var/lib/seaport-agent/content/sha256";
        h.exec_ok(&["test", "-f", &format!("{content}/{}", hex(&amd64_manifest))])
            .unwrap();
        h.exec_ok(&["test", "-f", &format!("{content}/{}", multi.digest.hex())])
            .unwrap();
        assert!(
            !h.exec(&["test", "-e", &format!("{content}/{}", hex(&arm64_manifest))])
                .unwrap()
                .success(),
            "{}: the arm64 manifest was sent to an amd64 host",
            h.name()
        );
        let active = h
            .exec(&["systemctl", "is-active", "containerd.service"])
            .unwrap();
        assert_eq!(active.stdout.trim(), "active", "{}", h.name());
    }

    // Only arm64: refused before anything starts, naming the hosts.
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            "arm-only:v1",
            "-m",
            &m0ip,
            "-n",
            &n1ip,
            "--cluster",
            "armonly",
        ],
    );
    assert!(
        !ok,
        "an arm64-only image was accepted for amd64 hosts: {out}"
    );
    assert!(
        err.contains(&format!("{m0ip} (linux/amd64)"))
            && err.contains(&format!("{n1ip} (linux/amd64)"))
            && err.contains("the image has: linux/arm64"),
        "{err}"
    );
    let status = json(&bins.seaport_ok(&root, &["status", "--json"]));
    assert!(
        !status
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cluster"] == "armonly"),
        "a refused run was recorded: {status}"
    );
    for h in [m0, n1] {
        assert!(
            !h.exec(&["test", "-e", "/var/lib/seaport/data/armonly"])
                .unwrap()
                .success(),
            "{}: the refused image reached the host",
            h.name()
        );
    }

    bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
    coordinator.stop().unwrap();
}
