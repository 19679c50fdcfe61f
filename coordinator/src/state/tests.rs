//! The behaviour every backend of [`StateStore`] must show, run on redb and
//! on a real etcd (Debian's `etcd-server`, started on loopback for each
//! test), and what only a store shared by several coordinators can get
//! wrong: two coordinators racing for one token's last use, for serials,
//! for the audit log.
//! etcd comes from `local_etcd.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_shared::cluster::ClusterName;
use seaport_shared::pki::{self, JoinToken};

use super::etcd::{EtcdConfig, EtcdStore};
use super::leader::{self, Fence, LeaderInfo, Leadership};
use super::local_etcd::{free_port, LocalEtcd};
use super::{AdminRecord, Issued, RedbStore, StateError, StateStore};
use crate::operations::{AuditEntry, Cluster, ClusterStore};

fn issued(_node: &str, serial: u64) -> Result<Issued, StateError> {
    Ok(Issued {
        cert_pem: format!("cert {serial}"),
        expires: 1_000_000,
    })
}

impl LocalEtcd {
    fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            prefix: prefix.to_string(),
            ..EtcdConfig::new(vec![self.url.clone()])
        }
    }

    /// A new site's store, initialised.
    fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::init(&self.config(prefix), &self.site_key()).unwrap()
    }

    /// Another coordinator of a site.
    fn connect(&self, prefix: &str) -> Result<EtcdStore, StateError> {
        EtcdStore::connect(&self.config(prefix), &self.site_key())
    }
}

fn entry(what: &str) -> AuditEntry {
    AuditEntry {
        at: 1,
        who: "alice".into(),
        what: what.into(),
        result: "ok".into(),
    }
}

fn cluster_record(name: &str) -> Cluster {
    serde_json::from_value(serde_json::json!({
        "name": name, "image": "img:1",
        "manifest_digest": format!("sha256:{}", "a".repeat(64)),
        "generation": 1, "state": "running",
        "spec": {"image": "img:1", "hosts": [], "env": []},
        "stages": [], "stages_done": 0, "hosts": [], "join_data": null,
        "started_at": 1, "finished_at": null, "error": null
    }))
    .unwrap()
}

fn assignment(image: &str) -> super::Assignment {
    serde_json::from_value(serde_json::json!({
        "image": image,
        "manifest_digest": format!("sha256:{}", "b".repeat(64)),
        "blobs": [], "nodes": ["n1"], "created_at": 1
    }))
    .unwrap()
}

fn redb(dir: &Path) -> RedbStore {
    RedbStore::create(&dir.join("state.redb")).unwrap()
}

// ----- the behaviour of every backend -----

fn tokens_are_counted_and_expire(store: &dyn StateStore) {
    let token = JoinToken::generate();
    store.add_token(&token, 100, 60, 2, None).unwrap();
    store.check_token(&token, 110).unwrap();
    store.enroll(&token, "a", 110, &mut issued).unwrap();
    store.enroll(&token, "b", 110, &mut issued).unwrap();
    assert!(matches!(
        store.enroll(&token, "c", 110, &mut issued),
        Err(StateError::TokenUsedUp(_))
    ));
    let late = JoinToken::generate();
    store.add_token(&late, 100, 60, 5, None).unwrap();
    assert!(matches!(
        store.enroll(&late, "d", 160, &mut issued),
        Err(StateError::TokenExpired(_))
    ));
    let forged = JoinToken {
        id: late.id.clone(),
        secret: "aaaaaaaaaaaaaaaa".into(),
    };
    assert!(matches!(
        store.check_token(&forged, 110),
        Err(StateError::TokenInvalid)
    ));
    assert!(matches!(
        store.enroll(&forged, "d", 110, &mut issued),
        Err(StateError::TokenInvalid)
    ));
    // A failed signature leaves the token unspent and no node behind.
    let one = JoinToken::generate();
    store.add_token(&one, 100, 60, 1, None).unwrap();
    assert!(store
        .enroll(&one, "e", 110, &mut |_, _| Err(StateError::Issue(
            "boom".into()
        )))
        .is_err());
    assert_eq!(store.nodes().unwrap().len(), 2);
    store.enroll(&one, "e", 110, &mut issued).unwrap();
    assert_eq!(store.nodes().unwrap().len(), 3);
    // Long-expired tokens are pruned when a token is added.
    store
        .add_token(&JoinToken::generate(), 100 + 60 + 86_401, 60, 1, None)
        .unwrap();
    assert!(matches!(
        store.check_token(&late, 110),
        Err(StateError::TokenInvalid)
    ));
}

fn enrollment_binds_renews_and_revokes(store: &dyn StateStore) {
    let token = JoinToken::generate();
    store.add_token(&token, 100, 600, 5, None).unwrap();
    let (a, first) = store.enroll(&token, "web", 110, &mut issued).unwrap();
    let (b, _) = store.enroll(&token, "web", 110, &mut issued).unwrap();
    assert!(a.starts_with("web-") && pki::is_valid_node_id(&a), "{a}");
    assert_ne!(a, b, "one name asked twice is two nodes");
    assert!(matches!(
        store.enroll(&token, &a, 120, &mut issued),
        Err(StateError::NodeExists(_))
    ));
    let serial = store.node(&a).unwrap().unwrap().cert_serial;
    assert_eq!(first.cert_pem, format!("cert {serial}"));
    let renewed = store.renew(&a, &mut |s| issued("", s)).unwrap();
    let node = store.node(&a).unwrap().unwrap();
    assert_eq!(renewed.cert_pem, format!("cert {}", node.cert_serial));
    assert!(node.cert_serial > serial);
    store.check_node_cert(&a, serial).unwrap();
    assert_eq!(store.next_serial().unwrap(), node.cert_serial + 1);
    store.observe(&a, "::ffff:10.0.0.1", 111).unwrap();
    assert_eq!(
        store.node(&a).unwrap().unwrap().observed_ip.as_deref(),
        Some("10.0.0.1")
    );
    store.revoke(&a, 130).unwrap();
    assert!(matches!(
        store.check_node_cert(&a, node.cert_serial),
        Err(StateError::NodeRevoked(_))
    ));
    assert!(matches!(
        store.renew(&a, &mut |s| issued("", s)),
        Err(StateError::NodeRevoked(_))
    ));
    assert!(matches!(
        store.add_token(&JoinToken::generate(), 100, 60, 1, Some("ghost-00000000")),
        Err(StateError::NoSuchNode(_))
    ));
    let bound = JoinToken::generate();
    store.add_token(&bound, 100, 600, 1, Some(&a)).unwrap();
    let (again, _) = store.enroll(&bound, "anything", 140, &mut issued).unwrap();
    assert_eq!(again, a);
    let node = store.node(&a).unwrap().unwrap();
    assert!(!node.revoked);
    assert_eq!(node.observed_ip, None);
    assert!(matches!(
        store.check_node_cert(&a, serial),
        Err(StateError::StaleCertificate { .. })
    ));
    let (_, ips) = store
        .approve_ips(&a, &["::ffff:10.0.0.5".into(), "10.0.0.6".into()], true)
        .unwrap();
    assert_eq!(ips, ["10.0.0.5", "10.0.0.6"]);
    let (_, ips) = store.approve_ips(&a, &["10.0.0.5".into()], false).unwrap();
    assert_eq!(ips, ["10.0.0.6"]);
    store
        .update_nodes(&[(a.clone(), None, Some(150)), ("gone".into(), None, Some(1))])
        .unwrap();
    assert_eq!(store.node(&a).unwrap().unwrap().last_seen, Some(150));
}

fn admins_assignments_clusters_and_audit(store: &dyn StateStore) {
    for (serial, name) in [(7, "alice"), (8, "bob"), (12, "carol")] {
        store
            .add_admin(&AdminRecord {
                serial,
                name: name.into(),
                issued_at: 1,
                expires_at: 2,
                revoked_at: None,
                local: false,
            })
            .unwrap();
    }
    let serials: Vec<u64> = store.admins().unwrap().iter().map(|r| r.serial).collect();
    assert_eq!(serials, [7, 8, 12], "admins in serial order");
    assert!(matches!(
        store.check_admin(9),
        Err(StateError::UnknownAdmin(9))
    ));
    store
        .revoke_admin(store.resolve_admin("bob").unwrap().serial, 50)
        .unwrap();
    assert!(matches!(
        store.check_admin(8),
        Err(StateError::AdminRevoked { serial: 8, .. })
    ));
    assert_eq!(store.resolve_admin("8").unwrap().revoked_at, Some(50));

    let name = ClusterName::parse("prod").unwrap();
    assert!(store.cluster(&name).unwrap().is_none());
    let cluster = cluster_record("prod");
    store.save_cluster(&cluster).unwrap();
    assert_eq!(store.cluster(&name).unwrap().unwrap().name, name);
    assert_eq!(store.clusters().unwrap().len(), 1);
    assert!(store.remove_cluster(&name).unwrap());
    assert!(!store.remove_cluster(&name).unwrap());

    for i in 1..=5u64 {
        let seq = store.audit(&entry(&format!("entry {i}"))).unwrap();
        assert_eq!(seq, i);
    }
    let log = store.audit_log(3).unwrap();
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [3, 4, 5], "the last entries, oldest first");
    assert_eq!(log[2].1.what, "entry 5");
}

/// Content syncs keep a view of the nodes' standing while this number
/// holds still: it must move on every enrollment and revocation, and should
/// hold still on heartbeats, renewals and observed addresses.
fn standing_moves_only_with_standing(store: &dyn StateStore) {
    let version = || store.standing_version().expect("a standing version");
    let token = JoinToken::generate();
    store.add_token(&token, 100, 600, 2, None).unwrap();
    let before = version();
    let (a, _) = store.enroll(&token, "db", 110, &mut issued).unwrap();
    let enrolled = version();
    assert_ne!(enrolled, before, "an enrollment adds a node");
    store.renew(&a, &mut |s| issued("", s)).unwrap();
    store.observe(&a, "10.0.0.9", 111).unwrap();
    store.update_nodes(&[(a.clone(), None, Some(112))]).unwrap();
    assert_eq!(version(), enrolled, "nothing of the standing changed");
    store.revoke(&a, 120).unwrap();
    assert_ne!(version(), enrolled, "a revocation");
}

fn every_behaviour(store: &dyn StateStore) {
    tokens_are_counted_and_expire(store);
    standing_moves_only_with_standing(store);
    enrollment_binds_renews_and_revokes(store);
    admins_assignments_clusters_and_audit(store);
}

#[test]
fn redb_shows_every_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    every_behaviour(&redb(dir.path()));
}

#[test]
fn etcd_shows_every_behaviour() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    every_behaviour(&etcd.store("/site-a/"));
}

// ----- what only a shared store can get wrong -----

#[test]
fn etcd_standing_moves_when_another_coordinator_changes_it() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let one = etcd.store("/site-s/");
    let two = etcd.connect("/site-s/").unwrap();
    let token = JoinToken::generate();
    one.add_token(&token, 100, 600, 1, None).unwrap();
    let seen = one.standing_version().unwrap();
    let (node, _) = two.enroll(&token, "w", 110, &mut issued).unwrap();
    let enrolled = one.standing_version().unwrap();
    assert_ne!(enrolled, seen, "an enrollment through another coordinator");
    two.revoke(&node, 120).unwrap();
    assert_ne!(
        one.standing_version().unwrap(),
        enrolled,
        "a revocation through another coordinator"
    );
}

#[test]
fn etcd_keyspace_must_be_initialised_and_sites_are_apart() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let a = etcd.store("/a/");
    let b = etcd.store("/b/");
    let err = etcd.connect("/never/").unwrap_err();
    assert!(matches!(err, StateError::Missing(_)), "{err}");
    assert!(err.to_string().contains("coordinator init"), "{err}");
    let token = JoinToken::generate();
    a.add_token(&token, 100, 60, 1, None).unwrap();
    a.enroll(&token, "x", 110, &mut issued).unwrap();
    assert_eq!(a.nodes().unwrap().len(), 1);
    assert!(b.nodes().unwrap().is_empty());
    assert!(matches!(
        b.check_token(&token, 110),
        Err(StateError::TokenInvalid)
    ));
    // A second coordinator of site a sees the same state.
    let again = etcd.connect("/a/").unwrap();
    assert_eq!(again.nodes().unwrap().len(), 1);
    // Unreachable etcd: an error naming it, not a hang.
    let dead = EtcdConfig::new(vec![format!("http://127.0.0.1:{}", free_port())]);
    let err = EtcdStore::connect(&dead, &etcd.site_key()).unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

#[test]
fn etcd_lists_are_read_in_pages() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let store = etcd.store("/paged/").with_page(3);
    let token = JoinToken::generate();
    store.add_token(&token, 100, 600, 20, None).unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            store
                .enroll(&token, &format!("n{i}"), 110, &mut issued)
                .unwrap()
                .0,
        );
    }
    ids.sort();
    let listed: Vec<String> = store
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(listed, ids, "every node, once, in order, across pages");
    for i in 1..=8u64 {
        store.audit(&entry(&format!("e{i}"))).unwrap();
    }
    let seqs: Vec<u64> = store
        .audit_log(7)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6, 7, 8]);
    // Audit numbers past one page of digits still sort as numbers.
    assert_eq!(store.audit_log(100).unwrap().len(), 8);
}

/// Two coordinators on one etcd, several threads each, racing: every
/// token use, serial and audit number is handed out exactly once.
#[test]
fn etcd_coordinators_racing_never_share_a_serial_or_overspend_a_token() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let one = Arc::new(etcd.store("/race/"));
    let two = Arc::new(etcd.connect("/race/").unwrap());
    let token = JoinToken::generate();
    let uses = 6;
    one.add_token(&token, 100, 600, uses, None).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let token = token.clone();
            std::thread::spawn(move || {
                let mut serials = Vec::new();
                let mut enrolled = 0;
                for _ in 0..5 {
                    serials.push(store.next_serial().unwrap());
                    match store.enroll(&token, "h", 110, &mut issued) {
                        Ok((_, cert)) => {
                            enrolled += 1;
                            serials.push(cert.cert_pem[5..].parse::<u64>().unwrap());
                        }
                        Err(StateError::TokenUsedUp(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                    store.audit(&entry("race")).unwrap();
                }
                (serials, enrolled)
            })
        })
        .collect();
    let mut serials = Vec::new();
    let mut enrolled = 0;
    for t in threads {
        let (s, e) = t.join().unwrap();
        serials.extend(s);
        enrolled += e;
    }
    assert_eq!(enrolled, uses, "exactly the token's uses were spent");
    assert_eq!(one.nodes().unwrap().len(), uses as usize);
    serials.sort_unstable();
    let expected: Vec<u64> = (1..=serials.len() as u64).collect();
    assert_eq!(serials, expected, "every serial handed out once, none lost");
    let seqs: Vec<u64> = two
        .audit_log(1000)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<u64>>(),
        "one audit number each"
    );
}

/// Cluster records (with the cluster's join data) are sealed with the site
/// key in etcd; a coordinator with another key is refused before it reads
/// anything.
#[test]
fn etcd_secrets_are_sealed_and_another_site_key_is_refused() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let store = etcd.store("/sealed/");
    let mut cluster = cluster_record("prod");
    cluster.join_data = Some("kubeadm-join-secret-0123456789".into());
    store.save_cluster(&cluster).unwrap();
    let raw = store.raw("clusters/prod").unwrap();
    let secret = b"kubeadm-join-secret";
    assert!(
        !raw.windows(secret.len()).any(|w| w == secret),
        "join data in the clear"
    );
    assert!(
        !raw.windows(4).any(|w| w == b"prod"),
        "the record in the clear"
    );
    let back = etcd.connect("/sealed/").unwrap();
    assert_eq!(
        back.cluster(&ClusterName::parse("prod").unwrap())
            .unwrap()
            .unwrap()
            .join_data,
        cluster.join_data
    );
    assert_eq!(back.clusters().unwrap().len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    let err = EtcdStore::init(&etcd.config("/sealed/"), &other).unwrap_err();
    assert!(matches!(err, StateError::WrongSiteKey(_)), "{err}");
    let err = EtcdStore::connect(&etcd.config("/sealed/"), &other).unwrap_err();
    assert!(matches!(err, StateError::WrongSiteKey(_)), "{err}");
    let err = EtcdStore::connect(&etcd.config("/sealed/"), &dir.path().join("none")).unwrap_err();
    assert!(err.to_string().contains("site.key"), "{err}");
}

// ----- leadership -----

fn coordinator(name: &str) -> LeaderInfo {
    LeaderInfo {
        id: name.into(),
        address: format!("{name}.example:7443"),
    }
}

/// Waits until `rx` shows what `want` accepts (panics after `within`).
fn wait_for(
    rx: &tokio::sync::watch::Receiver<Leadership>,
    within: Duration,
    want: impl Fn(&Leadership) -> bool,
) {
    let until = Instant::now() + within;
    while !want(&rx.borrow()) {
        assert!(Instant::now() < until, "still {:?}", *rx.borrow());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const TTL: Duration = Duration::from_secs(2);

/// One coordinator of a site leads; the others know who and where, and
/// their writes that drive operations are refused. When the leader stops,
/// another leads within the TTL and the old one can no longer write.
#[test]
fn etcd_one_coordinator_leads_and_the_others_follow() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let a = etcd.store("/lead/");
    let b = etcd.connect("/lead/").unwrap();
    let ea = a.elect(coordinator("a"), TTL).unwrap().unwrap();
    wait_for(&ea.leadership(), TTL * 3, |l| *l == Leadership::Leader);
    let eb = b.elect(coordinator("b"), TTL).unwrap().unwrap();
    wait_for(&eb.leadership(), TTL * 3, |l| {
        *l == Leadership::Follower {
            leader: Some(coordinator("a")),
        }
    });
    a.save_cluster(&cluster_record("web")).unwrap();
    let err = b.save_cluster(&cluster_record("db")).unwrap_err();
    assert!(err.to_string().contains("does not lead"), "{err}");
    assert!(b.put_assignment(&assignment("img:1")).is_err());
    // Reads and the other writes work on every coordinator.
    assert!(b
        .cluster(&ClusterName::parse("web").unwrap())
        .unwrap()
        .is_some());
    assert!(b
        .cluster(&ClusterName::parse("db").unwrap())
        .unwrap()
        .is_none());
    b.audit(&entry("from b")).unwrap();

    let took = Instant::now();
    drop(ea);
    wait_for(&eb.leadership(), TTL * 3, |l| *l == Leadership::Leader);
    assert!(took.elapsed() < TTL + leader::POLL + Duration::from_secs(1));
    b.save_cluster(&cluster_record("db")).unwrap();
    assert!(a.save_cluster(&cluster_record("web")).is_err());
}

/// The fence: a leader that was paused past its lease and wakes up still
/// believing it leads (its term in hand) has its writes refused by etcd,
/// while no one leads and after another coordinator took over.
#[test]
fn etcd_a_deposed_leader_cannot_write() {
    let Some(etcd) = LocalEtcd::start() else {
        return;
    };
    let a = etcd.store("/fence/");
    let b = etcd.connect("/fence/").unwrap();
    let ea = a.elect(coordinator("a"), TTL).unwrap().unwrap();
    wait_for(&ea.leadership(), TTL * 3, |l| *l == Leadership::Leader);
    let Fence::Leader(old_term) = a.fence() else {
        panic!("a leads without a term: {:?}", a.fence());
    };
    let mut web = cluster_record("web");
    a.save_cluster(&web).unwrap();

    // a's term ends (its lease is gone) ...
    drop(ea);
    let until = Instant::now() + TTL * 3;
    while a.fence() != Fence::Follower {
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // ... but it wakes up believing it still leads.
    a.set_fence(Fence::Leader(old_term));
    web.generation = 7;
    let err = a.save_cluster(&web).unwrap_err();
    assert!(err.to_string().contains("does not lead"), "{err}");

    let eb = b.elect(coordinator("b"), TTL).unwrap().unwrap();
    wait_for(&eb.leadership(), TTL * 3, |l| *l == Leadership::Leader);
    let mut theirs = cluster_record("web");
    theirs.generation = 2;
    b.save_cluster(&theirs).unwrap();
    // The deposed leader's late writes change nothing.
    web.generation = 9;
    assert!(a.save_cluster(&web).is_err());
    assert!(a.remove_cluster(&web.name).is_err());
    assert!(a.put_assignment(&assignment("img:1")).is_err());
    let stored = b.cluster(&web.name).unwrap().unwrap();
    assert_eq!(stored.generation, 2);
    assert!(b.assignments().unwrap().is_empty());
}
