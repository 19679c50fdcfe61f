//! End to end: layer distribution to agents in lab hosts.
//!
//! - the coordinator is killed (SIGKILL) mid-transfer and started again: the
//!   agent finishes without starting over (less than 10% of the blob reaches
//!   the host twice, counted on the host's link);
//! - a peer whose pieces were corrupted on its disk after it verified them
//!   is detected, reported and not used again; the blob is fetched elsewhere;
//! - a host whose link is cut mid-rollout: the others finish, it finishes
//!   after the link comes back.
//!
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md).

use std::path::Path;
use std::time::Duration;

use seaport_lab::seaport::{self, Binaries};
use seaport_lab::{runs, Host, Lab, Shape};

const MIB: u64 = 1024 * 1024;
const PIECE: u64 = 4 * MIB;
const EVENTUALLY: Duration = Duration::from_secs(240);
const CONTENT: &str = "/var/lib/seaport-agent/content/sha256";

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn complete(status: &serde_json::Value, image: &str, host: &str) -> bool {
    seaport::node_progress(status, image, host).is_some_and(|n| n["complete"] == true)
}

fn done_fraction(status: &serde_json::Value, image: &str, host: &str) -> f64 {
    seaport::node_progress(status, image, host)
        .map(|n| u(&n["done_bytes"]) as f64 / u(&n["total_bytes"]).max(1) as f64)
        .unwrap_or(0.0)
}

/// The digests (hex) of the image's blobs, from a status.
fn blob_hexes(status: &serde_json::Value, image: &str, host: &str) -> Vec<(String, u64)> {
    seaport::node_progress(status, image, host).unwrap()["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let d = b["digest"].as_str().unwrap();
            (d.trim_start_matches("sha256:").to_string(), u(&b["size"]))
        })
        .collect()
}

/// Every blob of the image is in the host's blob store and hashes to its name.
fn assert_blobs_verified(host: &Host, blobs: &[(String, u64)]) {
    for (hex, _) in blobs {
        let out = host
            .exec(&["sha256sum", &format!("{CONTENT}/{hex}")])
            .unwrap();
        assert!(
            out.success() && out.stdout.starts_with(hex.as_str()),
            "{}: blob {hex} missing or corrupt: {}{}",
            host.name(),
            out.stdout,
            out.stderr
        );
    }
}

/// Bytes the host received on its link (what reached it, counted once
/// however often the sender retransmitted).
fn rx_bytes(host: &Host) -> u64 {
    let out = host
        .exec(&["cat", "/sys/class/net/host0/statistics/rx_bytes"])
        .unwrap();
    out.stdout.trim().parse().unwrap()
}

fn setup(hosts: usize) -> (Binaries, Lab, tempfile::TempDir) {
    if let Err(e) = seaport_lab::lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let lab = Lab::up(hosts).expect("bring up the lab");
    (bins, lab, tempfile::tempdir().unwrap())
}

fn build(bins: &Binaries, root: &Path, tmp: &Path, image: &str, layers: &[u64]) {
    seaport::build_random_image(bins, root, &tmp.join("ctx"), image, layers)
        .expect("build the test image");
}

#[test]
fn coordinator_killed_mid_transfer_agent_resumes_without_starting_over() {
    let (bins, lab, tmp) = setup(1);
    let root = tmp.path().join("coordinator");
    let (mut coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll");
    let image = "resume:v1";
    build(&bins, &root, tmp.path(), image, &[256 * MIB]);
    let h = lab.host(0);
    // Slow enough that the kill lands mid-transfer (about 25 s in all).
    h.shape_link(&Shape::mbit(80)).unwrap();
    let before = rx_bytes(h);
    seaport::distribute(&bins, &root, image, &[h.name()]).unwrap();
    seaport::wait_for_distribution(
        &bins,
        &root,
        "a third of the blob fetched",
        EVENTUALLY,
        |s| done_fraction(s, image, h.name()) >= 0.33,
    )
    .expect("transfer under way");

    coordinator.kill();
    std::thread::sleep(Duration::from_secs(1));
    coordinator.restart().expect("start the coordinator again");

    let status = seaport::wait_for_distribution(
        &bins,
        &root,
        "the agent finishes after the restart",
        EVENTUALLY,
        |s| complete(s, image, h.name()),
    )
    .expect("agent finished after the coordinator restart");
    let sent = rx_bytes(h) - before;
    let blobs = blob_hexes(&status, image, h.name());
    let total: u64 = blobs.iter().map(|b| b.1).sum();
    assert_blobs_verified(h, &blobs);
    let resent = sent.saturating_sub(total) as f64 / total as f64;
    eprintln!(
        "image {total} bytes, {sent} bytes on the wire to the host ({:.1}% more)",
        resent * 100.0
    );
    assert!(
        resent < 0.10,
        "{:.1}% of the image crossed the wire twice ({sent} bytes for {total})",
        resent * 100.0
    );
    drop(coordinator);
    lab.down().unwrap();
}

#[test]
fn corrupt_pieces_from_a_peer_are_refetched_and_the_peer_dropped() {
    let (bins, lab, tmp) = setup(2);
    let root = tmp.path().join("coordinator");
    let (coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll");
    let image = "corrupt:v1";
    let layer = 64 * MIB;
    build(&bins, &root, tmp.path(), image, &[layer]);
    let (h1, h2) = (lab.host(0), lab.host(1));

    // h1 gets the image first.
    seaport::distribute(&bins, &root, image, &[h1.name()]).unwrap();
    let status = seaport::wait_for_distribution(&bins, &root, "h1 complete", EVENTUALLY, |s| {
        complete(s, image, h1.name())
    })
    .expect("h1 fetched the image");
    let blobs = blob_hexes(&status, image, h1.name());
    let (layer_hex, _) = blobs.iter().max_by_key(|b| b.1).unwrap().clone();

    // Corrupt one byte of every piece of the layer on h1's disk, after it
    // verified them.
    let mut script = String::new();
    for i in 0..layer / PIECE {
        script.push_str(&format!(
            "printf 'X' | dd of={CONTENT}/{layer_hex} bs=1 seek={} conv=notrunc status=none\n",
            i * PIECE + 12345
        ));
    }
    h1.sh(&script).unwrap();
    let bad = h1
        .exec(&["sha256sum", &format!("{CONTENT}/{layer_hex}")])
        .unwrap();
    assert!(
        !bad.stdout.starts_with(&layer_hex),
        "the corruption did not change the blob"
    );

    // h2 fetches: h1 is offered as a peer, its pieces fail verification, h2
    // drops it and the coordinator sends them instead.
    seaport::distribute(&bins, &root, image, &[h2.name()]).unwrap();
    seaport::wait_for_distribution(&bins, &root, "h2 complete", EVENTUALLY, |s| {
        complete(s, image, h2.name())
    })
    .expect("h2 fetched the image despite the corrupt peer");
    assert_blobs_verified(h2, &blobs);

    // Let both report their counters once more.
    std::thread::sleep(Duration::from_secs(4));
    let status = seaport::distribution_status(&bins, &root).unwrap();
    let p1 = seaport::node_progress(&status, image, h1.name()).unwrap();
    let p2 = seaport::node_progress(&status, image, h2.name()).unwrap();
    let h1_id = p1["node_id"].as_str().unwrap();
    assert!(
        p2["bad_peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == h1_id),
        "h2 did not report h1 as corrupt: {p2}"
    );
    // h1 served at most the pieces in flight when the first one failed
    // (two per peer) plus the small manifest and config.
    let served = u(&p1["served_to_peers"]);
    assert!(
        served <= 2 * PIECE + MIB,
        "h1 kept being used after it sent a corrupt piece: it served {served} bytes"
    );
    assert!(
        u(&p2["from_coordinator"]) >= layer - 2 * PIECE,
        "the corrupt pieces were not fetched from the coordinator: {p2}"
    );
    drop(coordinator);
    lab.down().unwrap();
}

#[test]
fn a_cut_host_finishes_after_its_link_returns_while_others_finish() {
    let (bins, lab, tmp) = setup(3);
    let root = tmp.path().join("coordinator");
    let (coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll");
    let image = "cut:v1";
    build(&bins, &root, tmp.path(), image, &[128 * MIB]);
    for h in lab.hosts() {
        h.shape_link(&Shape::mbit(100)).unwrap();
    }
    let names: Vec<&str> = lab.hosts().iter().map(|h| h.name()).collect();
    seaport::distribute(&bins, &root, image, &names).unwrap();
    let cut = lab.host(2);
    seaport::wait_for_distribution(&bins, &root, "h3 under way", EVENTUALLY, |s| {
        done_fraction(s, image, cut.name()) >= 0.15
    })
    .expect("h3 started fetching");
    cut.cut_link().unwrap();

    let status = seaport::wait_for_distribution(
        &bins,
        &root,
        "the hosts with a link finish",
        EVENTUALLY,
        |s| complete(s, image, names[0]) && complete(s, image, names[1]),
    )
    .expect("the other hosts finish while h3 is cut off");
    assert!(
        !complete(&status, image, cut.name()),
        "h3 finished with its link cut?"
    );
    let blobs = blob_hexes(&status, image, names[0]);
    assert_blobs_verified(lab.host(0), &blobs);
    assert_blobs_verified(lab.host(1), &blobs);

    cut.restore_link().unwrap();
    seaport::wait_for_distribution(&bins, &root, "h3 finishes after restore", EVENTUALLY, |s| {
        complete(s, image, cut.name())
    })
    .expect("h3 finishes once its link is back");
    assert_blobs_verified(cut, &blobs);
    drop(coordinator);
    lab.down().unwrap();
}
