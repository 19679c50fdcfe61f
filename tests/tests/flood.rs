//! A compromised node flooding the coordinator's distribution tracker: a
//! real enrolled node (its own certificate, its own session) sends syncs
//! full of blobs it was never given, made-up bad peers and byte counters.
//! The tracker stays bounded and an honest neighbour keeps being served,
//! also across a restart of the coordinator in the middle of the flood.
//! Fails if the bounds are removed.

mod identity_support;
mod node_support;

use std::fs;
use std::time::Duration;

use node_support::{sync, Node, Running, Script};
use seaport::distribution::tracker::{MAX_BAD_PEERS, MAX_SOURCES};
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{BadPeer, BadPeerReason, Bitmap, BlobReport, SyncRequest};
use seaport_shared::wire::{AdminRequest, AdminResponse};

const ROUNDS: usize = 40;
const AT_ONCE: usize = 8;
const PER_SYNC: usize = 1000;

/// Resident memory of this process (the coordinator runs in it), in KiB.
fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn flood_request(round: usize, k: usize, neighbour: &str) -> SyncRequest {
    let mut have = Bitmap::new(64);
    have.set(3);
    let tag = |i: usize| format!("{round}-{k}-{i}");
    // One real name among made-up ones: reports about real peers count.
    let mut bad_peers = vec![BadPeer {
        node_id: neighbour.to_string(),
        digest: Digest::of(b"x"),
        reason: BadPeerReason::Unreachable,
    }];
    bad_peers.extend((0..PER_SYNC).map(|i| BadPeer {
        node_id: format!("made-up-{}", tag(i)),
        digest: Digest::of(tag(i).as_bytes()),
        reason: BadPeerReason::Corrupt,
    }));
    SyncRequest {
        peer_port: 7444,
        blobs: (0..PER_SYNC)
            .map(|i| BlobReport {
                digest: Digest::of(tag(i).as_bytes()),
                have: have.clone(),
                complete: false,
            })
            .collect(),
        bad_peers,
        received: (0..PER_SYNC)
            .map(|i| (format!("source-{}", tag(i)), 1))
            .collect(),
        served: 0,
    }
}

async fn complete(c: &Running, image: &str, node: &str) -> bool {
    match c.coord.admin(AdminRequest::DistributionStatus).await {
        Ok(AdminResponse::DistributionStatus(s)) => s
            .images
            .iter()
            .filter(|i| i.image == image)
            .flat_map(|i| &i.nodes)
            .any(|n| n.node_id == node && n.complete),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_syncs_cannot_grow_the_tracker_and_a_neighbour_keeps_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut c = Running::start(&root).await;
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("motd"), "hi\n").unwrap();
    fs::write(ctx.join("Kubefile"), "FROM scratch\nCOPY motd etc/\n").unwrap();
    let store = seaport_rootfs::store::Store::open(&root).unwrap();
    let mut opts = seaport_rootfs::build::BuildOptions::new(ctx.join("Kubefile"), &ctx, "flood:v1");
    opts.platform = "linux/amd64".into();
    seaport_rootfs::build::build(&store, &opts).unwrap();
    let image_blobs = 3; // manifest, config, one layer

    let script = Script {
        no_sync: true,
        ..Script::default()
    };
    let mut attacker = Node::start(&c.coord, dir.path(), "flooder", "127.0.0.2", script).await;
    let mut neighbour = Node::start(
        &c.coord,
        dir.path(),
        "neighbour",
        "127.0.0.3",
        Script::default(),
    )
    .await;
    // The attacker is given the image, so its syncs are answered at once.
    c.coord
        .admin(AdminRequest::Distribute {
            image: "flood:v1".into(),
            nodes: vec![attacker.node_id.clone()],
        })
        .await
        .unwrap();
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    for round in 0..ROUNDS {
        let mut set = tokio::task::JoinSet::new();
        for k in 0..AT_ONCE {
            let conn = attacker.conn.clone();
            let req = flood_request(round, k, &neighbour.node_id);
            set.spawn(async move { sync(&conn, req).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().expect("a flooding sync is still answered");
            sent += 1;
        }
        if round == ROUNDS / 2 {
            // Meanwhile, the neighbour is given the image; then the
            // coordinator restarts, both nodes reconnect, and the flood
            // goes on against the restarted coordinator.
            c.coord
                .admin(AdminRequest::Distribute {
                    image: "flood:v1".into(),
                    nodes: vec![neighbour.node_id.clone()],
                })
                .await
                .unwrap();
            c = c.restart().await;
            attacker.reconnect(&c.coord).await;
            neighbour.reconnect(&c.coord).await;
        }
    }
    let size = c.probe.tracker_size();
    let rss_after = rss_kib();
    eprintln!(
        "{sent} syncs of {PER_SYNC} made-up blobs, bad peers and sources each in {:.1} s; \
         tracker {size:?}; process RSS {rss_before} KiB -> {rss_after} KiB (+{} KiB)",
        started.elapsed().as_secs_f64(),
        rss_after.saturating_sub(rss_before)
    );
    assert!(size.nodes <= 2, "{size:?}");
    assert!(size.blobs <= image_blobs, "{size:?}");
    assert!(size.holdings <= 2 * image_blobs, "{size:?}");
    assert_eq!(size.bad_peers, 1, "{size:?}");
    assert!(size.bad_peers <= MAX_BAD_PEERS, "{size:?}");
    assert!(size.sources <= MAX_SOURCES, "{size:?}");

    // The honest neighbour got the image and is still heartbeating.
    identity_support::wait_until(Duration::from_secs(30), "the neighbour complete", || {
        complete(&c, "flood:v1", &neighbour.node_id)
    })
    .await;
    let seen = c.coord.node(&neighbour.node_id).await.unwrap().last_seen;
    identity_support::wait_until(
        Duration::from_secs(30),
        "a newer neighbour heartbeat",
        || async { c.coord.node(&neighbour.node_id).await.unwrap().last_seen > seen },
    )
    .await;
    drop((attacker, neighbour));
    c.stop().await;
}
