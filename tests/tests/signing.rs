//! End to end on 3 lab hosts: signed cluster images.
//!
//! The test cluster image is signed with a key made by `seaport key
//! generate`. Two attacks are prepared in the coordinator's store, as
//! someone who can write to a registry or hand over an archive would make
//! them: the image's manifest changed after signing with the signature
//! image moved to the new digest, and a changed manifest with no signature.
//!
//! 1. The agents hold their own policy (`SEAPORT_AGENT_TRUSTED_KEYS`,
//!    `SEAPORT_AGENT_REQUIRE_SIGNED` in a drop-in) and the coordinator none,
//!    so it plans and sends both images: every host refuses each in its
//!    first apply step, naming the image, the key tried and the reason, and
//!    nothing is written (no rootfs, no journal).
//! 2. The coordinator runs with `--trusted-keys DIR --require-signed` and
//!    the agents' own policy is gone: the agents hold the key the
//!    coordinator gave them with their identity (`trust.json`, 0644); both
//!    attacks are refused when planned, nothing recorded; the signed image
//!    installs on the 3 hosts, and each agent reports the key it verified
//!    the signature with.
//!
//! Needs root, systemd-nspawn, debootstrap and Debian's containerd, runc,
//! docker-registry and openssl on the machine (see docs/lab.md).

use std::path::Path;

use seaport_lab::checks::Phases;
use seaport_lab::seaport::Binaries;
use seaport_lab::{lab, runs, testimage, Host};
use seaport_rootfs::oci::Manifest;
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::signing;
use seaport_rootfs::store::Store;

const PASSWORD: &str = "lab signing passphrase";
const DROP_IN: &str = "/etc/systemd/system/seaport-agent.service.d/signing.conf";
const HOST_KEYS: &str = "/etc/seaport/trusted-keys";

fn seaport_out(bins: &Binaries, root: &Path, args: &[&str]) -> (bool, String, String) {
    bins.seaport_env(root, args, &[("SEAPORT_KEY_PASSWORD", PASSWORD)])
}

fn seaport_ok(bins: &Binaries, root: &Path, args: &[&str]) -> String {
    let (ok, out, err) = seaport_out(bins, root, args);
    assert!(ok, "seaport {args:?}: {out}{err}");
    out
}

/// Stores a copy of `name`'s manifest with one more annotation under
/// `new_name`; returns the new digest. The layers are the same: only the
/// signature can tell the images apart.
fn changed_copy(
    store: &Store,
    name: &str,
    new_name: &str,
    mark: &str,
) -> seaport_shared::digest::Digest {
    let image = store.resolve(name).unwrap();
    let mut manifest: Manifest = image.manifest.clone();
    manifest
        .annotations
        .insert("io.seaport.test.changed".into(), mark.into());
    let digest = store
        .put_blob(&serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    store
        .set_name(&ImageRef::parse(new_name).unwrap(), &digest)
        .unwrap();
    digest
}

fn restart_agents(hosts: &[Host]) {
    for h in hosts {
        h.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
        h.exec_ok(&["systemctl", "restart", "seaport-agent.service"])
            .unwrap();
    }
}

fn nothing_written(h: &Host, cluster: &str) {
    for path in [
        format!("/var/lib/seaport/data/{cluster}"),
        format!("/var/lib/seaport-agent/journal/{cluster}"),
    ] {
        assert!(
            !h.exec(&["test", "-e", &path]).unwrap().success(),
            "{}: {path} exists after the image was refused",
            h.name()
        );
    }
}

fn cluster_status(bins: &Binaries, root: &Path, cluster: &str) -> serde_json::Value {
    let out = seaport_ok(bins, root, &["status", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == cluster)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn agents_refuse_changed_and_unsigned_images_and_a_signed_image_installs_under_require_signed() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let mut phases = Phases::start();
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let image =
        testimage::build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    let root = tmp.path().join("seaport-root");
    let keys = tmp.path().join("trusted-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let out = seaport_ok(
        &bins,
        &root,
        &["key", "generate", "-o", keys.join("site").to_str().unwrap()],
    );
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .to_string();
    // The private key has no business in the trusted keys directory.
    let private = tmp.path().join("site.key");
    std::fs::rename(keys.join("site.key"), &private).unwrap();
    let name = testimage::IMAGE_NAME;
    seaport_ok(
        &bins,
        &root,
        &["sign", "--key", private.to_str().unwrap(), name],
    );
    // The attacks, written into the store as an attacker with write access
    // to it (or to a registry or archive it loads from) would.
    let store = Store::open(&root).unwrap();
    let sigs = signing::stored(&store, &image.digest).unwrap().unwrap();
    let changed = changed_copy(&store, name, "seaport-test:changed", "1");
    signing::store(&store, &changed, &sigs).unwrap();
    let unsigned = changed_copy(&store, name, "seaport-test:unsigned", "2");
    phases.done("build, sign and tamper with the test image");

    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    let hosts = lab.hosts();
    let ips: Vec<String> = hosts.iter().map(|h| h.ip().to_string()).collect();
    let workers = format!("{},{}", ips[1], ips[2]);
    phases.done("lab up, agents enrolled (the coordinator without a policy)");

    // 1. The hosts' own policy; the coordinator checks nothing.
    let pem = std::fs::read(keys.join("site.pub")).unwrap();
    for h in hosts {
        h.exec_ok(&["mkdir", "-p", HOST_KEYS]).unwrap();
        h.write_file(&format!("{HOST_KEYS}/site.pub"), &pem, 0o644)
            .unwrap();
        h.exec_ok(&["mkdir", "-p", "/etc/systemd/system/seaport-agent.service.d"])
            .unwrap();
        h.write_file(
            DROP_IN,
            format!(
                "[Service]\nEnvironment=SEAPORT_AGENT_TRUSTED_KEYS={HOST_KEYS}\nEnvironment=SEAPORT_AGENT_REQUIRE_SIGNED=true\n"
            )
            .as_bytes(),
            0o644,
        )
        .unwrap();
    }
    restart_agents(hosts);
    for (image_name, digest, reason, cluster) in [
        (
            "seaport-test:changed",
            changed,
            "changed after it was signed",
            "changed",
        ),
        (
            "seaport-test:unsigned",
            unsigned,
            "no signature",
            "unsigned",
        ),
    ] {
        let (ok, out, err) = seaport_out(
            &bins,
            &root,
            &[
                "run",
                image_name,
                "-m",
                &ips[0],
                "-n",
                &workers,
                "--cluster",
                cluster,
            ],
        );
        assert!(!ok, "{image_name} installed: {out}{err}");
        let status = cluster_status(&bins, &root, cluster);
        assert_eq!(status["state"], "failed", "{status}");
        for (h, ip) in hosts.iter().zip(&ips) {
            let host = status["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["ip"] == ip.as_str())
                .unwrap();
            let error = host["error"].as_str().unwrap_or_default();
            for part in [image_name, &digest.to_string(), &fp, reason] {
                assert!(
                    error.contains(part),
                    "{}: {part:?} missing from the refusal: {error}",
                    h.name()
                );
            }
            nothing_written(h, cluster);
        }
    }
    phases.done("every host refused the changed and the unsigned image");

    // 2. The coordinator's policy, given to the agents with their identity.
    for h in hosts {
        h.exec_ok(&["rm", "-f", DROP_IN]).unwrap();
        h.exec_ok(&["rm", "-rf", HOST_KEYS]).unwrap();
    }
    coordinator
        .restart_with(&["--trusted-keys", keys.to_str().unwrap(), "--require-signed"])
        .expect("restart the coordinator with a policy");
    restart_agents(hosts);
    seaport_lab::wait::until(
        "every agent to hold the coordinator's policy",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(500),
        || {
            for h in hosts {
                let t = h
                    .exec(&["cat", "/var/lib/seaport-agent/identity/trust.json"])
                    .unwrap();
                if !(t.success() && t.stdout.contains("\"require_signed\": true")) {
                    return Err(format!("{}: {}{}", h.name(), t.stdout, t.stderr));
                }
            }
            Ok(())
        },
    )
    .unwrap();
    for h in hosts {
        let mode = h
            .exec_ok(&[
                "stat",
                "-c",
                "%a",
                "/var/lib/seaport-agent/identity/trust.json",
            ])
            .unwrap();
        assert_eq!(mode.stdout.trim(), "644", "{}", h.name());
    }
    for (image_name, reason) in [
        ("seaport-test:changed", "changed after it was signed"),
        ("seaport-test:unsigned", "no signature"),
    ] {
        let (ok, _, err) = seaport_out(
            &bins,
            &root,
            &[
                "run",
                image_name,
                "-m",
                &ips[0],
                "-n",
                &workers,
                "--cluster",
                "planned",
            ],
        );
        assert!(
            !ok && err.contains(image_name) && err.contains(&fp) && err.contains(reason),
            "{err}"
        );
    }
    assert_eq!(
        cluster_status(&bins, &root, "planned"),
        serde_json::Value::Null,
        "a refused run was recorded"
    );
    let out = seaport_ok(
        &bins,
        &root,
        &[
            "run",
            name,
            "-m",
            &ips[0],
            "-n",
            &workers,
            "--cluster",
            "signed",
        ],
    );
    let status = cluster_status(&bins, &root, "signed");
    assert_eq!(status["state"], "succeeded", "{out}\n{status}");
    for ip in &ips {
        let host = status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["ip"] == ip.as_str())
            .unwrap();
        let step = host["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "signature")
            .unwrap_or_else(|| panic!("{ip}: no signature step: {host}"));
        let summary = step["state"]["done"]["summary"]
            .as_str()
            .unwrap_or_default();
        assert!(summary.contains(&fp), "{ip}: {step}");
    }
    for h in hosts {
        assert!(h
            .exec(&["test", "-d", "/var/lib/seaport/data/signed/rootfs"])
            .unwrap()
            .success());
    }
    phases.done("the signed image installed under --require-signed");
    seaport_ok(&bins, &root, &["delete", "--all", "--prune", "--yes"]);
    drop(coordinator);
    lab.down().expect("take the lab down");
}
