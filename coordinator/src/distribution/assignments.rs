//! [`Distribution`]: assignments, piece tables, the tracker, progress.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use seaport_shared::cluster::ImageDigest;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    BlobPlan, BlobProgress, DistributionError, DistributionStatus, ImageAssignment, ImageProgress,
    NamedNode, NodeProgress, PieceTable, SyncRequest, SyncResponse, PIECE_SIZE,
};

use super::tracker::{self, Tracker};
use crate::records::Assignment;
use crate::records::NodeRecord;
use crate::state::{StateError, StateStore};

/// Errors of distribution requests.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("image store: {0}")]
    Images(#[from] seaport_rootfs::store::StoreError),
    #[error("{0}")]
    Transfer(#[from] DistributionError),
    #[error("blob {digest} of image {image} is not in the coordinator's store ({path}): {source}")]
    MissingBlob {
        image: String,
        digest: Digest,
        path: String,
        source: std::io::Error,
    },
    #[error("no node matches {0:?} (give a node id, hostname or IP from `seaport nodes`)")]
    NoSuchNode(String),
    #[error("node {0} is revoked; it cannot be given images")]
    Revoked(String),
    #[error("no nodes given: pass --nodes NODE,...")]
    NoNodes,
    #[error("image {0} is not assigned to any node")]
    NotAssigned(String),
    #[error("image {image} has no manifest for node {node} ({platform}); it has: {available}")]
    NoPlatform {
        image: String,
        node: String,
        platform: String,
        available: String,
    },
    #[error("piece table cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
}

/// The coordinator's distribution state.
pub struct Distribution {
    state: Arc<dyn StateStore>,
    root: PathBuf,
    cache_dir: PathBuf,
    tables: Mutex<HashMap<Digest, Arc<PieceTable>>>,
    tracker: Mutex<Tracker>,
    served: AtomicU64,
    /// Bumped whenever assignments change: held syncs of idle agents wake.
    changes: tokio::sync::watch::Sender<u64>,
    /// The nodes' standing as of a store's standing version, so a content
    /// sync does not read every node record.
    standing: Mutex<Option<Arc<Standing>>>,
}

/// What content syncs tell peers about nodes: who is revoked, and the
/// lowest certificate serial each other node may present.
struct Standing {
    /// The store's [`StateStore::standing_version`] read before the nodes.
    version: Option<u64>,
    /// Current (not revoked) nodes and their lowest serial.
    current: HashMap<String, u64>,
    /// Revoked nodes, in the store's order.
    revoked: Vec<String>,
}

impl Distribution {
    /// `root` is the Seaport root (image store under `root/images`);
    /// assignments are kept in `state`.
    pub fn new(root: &Path, coordinator_dir: &Path, state: Arc<dyn StateStore>) -> Distribution {
        Distribution {
            state,
            root: root.to_path_buf(),
            cache_dir: coordinator_dir.join("pieces"),
            tables: Mutex::new(HashMap::new()),
            tracker: Mutex::new(Tracker::default()),
            served: AtomicU64::new(0),
            changes: tokio::sync::watch::channel(0).0,
            standing: Mutex::new(None),
        }
    }

    /// The nodes' standing: kept while the store's standing version stays
    /// the one read before it was built; read again from every node record
    /// when the version moved, or when the store has none.
    fn standing(&self) -> Result<Arc<Standing>, DistError> {
        let version = self.state.standing_version();
        let mut kept = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = kept
            .as_ref()
            .filter(|s| version.is_some() && s.version == version)
        {
            return Ok(s.clone());
        }
        let mut current = HashMap::new();
        let mut revoked = Vec::new();
        for r in self.state.nodes()? {
            if r.revoked {
                revoked.push(r.node_id);
            } else {
                current.insert(r.node_id, r.min_serial);
            }
        }
        let s = Arc::new(Standing {
            version,
            current,
            revoked,
        });
        *kept = Some(s.clone());
        Ok(s)
    }

    /// Notices assignment changes made after this call.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Piece bytes sent since the coordinator started.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("images/blobs/sha256").join(digest.hex())
    }

    /// The piece table of a blob of the store: memory, then the disk cache,
    /// else computed (hashing the blob once). Blocking.
    pub fn table(&self, image: &str, digest: &Digest) -> Result<Arc<PieceTable>, DistError> {
        if let Some(t) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(t.clone());
        }
        let cache = self.cache_dir.join(format!("{}.json", digest.hex()));
        let cached = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<PieceTable>(&b).ok())
            .filter(|t| t.digest == *digest && t.piece_size == PIECE_SIZE && t.check().is_ok());
        let table = match cached {
            Some(t) => t,
            None => {
                let path = self.blob_path(digest);
                let file = std::fs::File::open(&path).map_err(|source| DistError::MissingBlob {
                    image: image.to_string(),
                    digest: *digest,
                    path: path.display().to_string(),
                    source,
                })?;
                let t = PieceTable::compute(
                    *digest,
                    std::io::BufReader::with_capacity(1024 * 1024, file),
                    PIECE_SIZE,
                )?;
                let cache_err = |source| DistError::Cache {
                    path: cache.display().to_string(),
                    source,
                };
                std::fs::create_dir_all(&self.cache_dir).map_err(cache_err)?;
                seaport_shared::confined::write_atomic(
                    &cache,
                    &serde_json::to_vec(&t).expect("tables serialize"),
                    0o644,
                )
                .map_err(|e| DistError::Cache {
                    path: cache.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                t
            }
        };
        let table = Arc::new(table);
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*digest, table.clone());
        Ok(table)
    }

    /// What the image name `image` points at in the coordinator's store.
    pub fn resolve(&self, image: &str) -> Result<ImageDigest, DistError> {
        let store = seaport_rootfs::store::Store::open(&self.root)?;
        Ok(store.lookup(image)?.manifest.digest.into())
    }

    /// Assigns `image`, resolved to `digest`, to `nodes` (ids, hostnames
    /// or IPs), adding to the nodes it already has. Blocking: hashes new
    /// blobs.
    pub fn assign(
        &self,
        image: &str,
        digest: ImageDigest,
        nodes: &[String],
        now: i64,
    ) -> Result<Assignment, DistError> {
        let state = &*self.state;
        if nodes.is_empty() {
            return Err(DistError::NoNodes);
        }
        let records = state.nodes()?;
        let mut ids = Vec::new();
        for want in nodes {
            let rec = resolve_node(&records, want)?;
            if rec.revoked {
                return Err(DistError::Revoked(rec.node_id.clone()));
            }
            ids.push(rec.node_id.clone());
        }
        let store = seaport_rootfs::store::Store::open(&self.root)?;
        let stored = store.image(&digest.to_string())?;
        let mut existing: Vec<Assignment> = state.assignments()?;
        existing.retain(|a| a.image == image && a.manifest_digest == digest);
        let mut all: Vec<String> = existing.pop().map(|a| a.nodes).unwrap_or_default();
        for id in ids {
            if !all.contains(&id) {
                all.push(id);
            }
        }
        let (blobs, node_blobs) = if stored.is_index() {
            // Each node gets its own platform's manifest.
            let mut union: Vec<(Digest, u64)> = Vec::new();
            let mut per_node = BTreeMap::new();
            for id in &all {
                let Some(rec) = records.iter().find(|r| &r.node_id == id) else {
                    continue;
                };
                let blobs = if rec.arch.is_empty() {
                    // No architecture reported yet: every platform; its
                    // agent picks its own.
                    stored.blobs()
                } else {
                    let platform = seaport_rootfs::registry::platform::machine_platform(&rec.arch);
                    let m = stored
                        .for_platform(&platform)
                        .map_err(|_| DistError::NoPlatform {
                            image: image.to_string(),
                            node: format!("{} ({})", rec.hostname, rec.node_id),
                            platform: seaport_rootfs::registry::platform::platform_string(
                                &platform,
                            ),
                            available: stored.platforms().join(", "),
                        })?;
                    stored.blobs_for(m)
                };
                for b in &blobs {
                    if !union.contains(b) {
                        union.push(*b);
                    }
                }
                per_node.insert(id.clone(), blobs);
            }
            (union, per_node)
        } else {
            (stored.blobs(), BTreeMap::new())
        };
        for (d, _) in &blobs {
            self.table(image, d)?;
        }
        let a = Assignment {
            image: image.to_string(),
            manifest_digest: digest,
            blobs,
            nodes: all,
            created_at: now,
            node_blobs,
        };
        state.put_assignment(&a)?;
        self.changed();
        Ok(a)
    }

    /// Drops an image's assignment.
    pub fn cancel(&self, image: &str) -> Result<(), DistError> {
        if self.state.remove_assignment(image)? {
            self.changed();
            Ok(())
        } else {
            Err(DistError::NotAssigned(image.to_string()))
        }
    }

    /// Whether `digest` belongs to an image assigned to `node_id`.
    pub fn allowed(&self, node_id: &str, digest: &Digest) -> Result<bool, DistError> {
        Ok(self.state.assignments()?.iter().any(|a| {
            a.nodes.iter().any(|n| n == node_id)
                && a.blobs_of(node_id).iter().any(|(d, _)| d == digest)
        }))
    }

    /// Handles a node's sync. Blocking (state reads, maybe hashing).
    pub fn sync(
        &self,
        live: &dyn Fn(&str) -> bool,
        node_id: &str,
        peer_addr: Option<String>,
        req: SyncRequest,
    ) -> Result<SyncResponse, DistError> {
        let state = &*self.state;
        let now = Instant::now();
        let all: Vec<Assignment> = state.assignments()?;
        let assigned: Vec<Assignment> = all
            .iter()
            .filter(|a| a.nodes.iter().any(|n| n == node_id))
            .cloned()
            .collect();
        let mut tables: BTreeMap<Digest, Arc<PieceTable>> = BTreeMap::new();
        for a in &assigned {
            for (d, _) in a.blobs_of(node_id) {
                if !tables.contains_key(d) {
                    tables.insert(*d, self.table(&a.image, d)?);
                }
            }
        }
        let complete: HashSet<Digest> = req
            .blobs
            .iter()
            .filter(|b| b.complete)
            .map(|b| b.digest)
            .collect();
        // Only blobs of images assigned to this node are recorded: what a
        // node was not given is ignored, so its reports cannot grow the
        // tracker (peers are offered, and serve, assigned blobs only).
        let holdings: Vec<_> = req
            .blobs
            .into_iter()
            .filter(|b| {
                b.have.is_valid()
                    && tables
                        .get(&b.digest)
                        .is_some_and(|t| t.count() == b.have.len())
            })
            .map(|b| (b.digest, b.have))
            .collect();
        let bad = req
            .bad_peers
            .into_iter()
            .take(tracker::MAX_BAD_PEERS)
            .map(|b| (b.node_id, b.reason))
            .collect();
        let mut tracker = self.tracker();
        tracker.report(
            node_id,
            tracker::NodeReport {
                peer_addr,
                holdings,
                bad,
                received: req.received,
                served: req.served,
            },
            now,
        );
        let mut blobs = Vec::new();
        for (d, table) in &tables {
            if complete.contains(d) {
                continue;
            }
            let (seed, peers) = tracker.plan(node_id, d, table.count(), now, live);
            blobs.push(BlobPlan {
                table: (**table).clone(),
                seed,
                peers,
            });
        }
        drop(tracker);
        let standing = self.standing()?;
        let revoked = standing.revoked.clone();
        // The peers this node may serve: the nodes named with each image,
        // with the lowest certificate serial each may present.
        let named = |a: &Assignment| -> Vec<NamedNode> {
            a.nodes
                .iter()
                .filter_map(|id| {
                    standing.current.get(id).map(|&min_serial| NamedNode {
                        node_id: id.clone(),
                        min_serial,
                    })
                })
                .collect()
        };
        let mine: HashSet<Digest> = tables.keys().copied().collect();
        let sharing = all
            .iter()
            .filter(|a| !a.nodes.iter().any(|n| n == node_id))
            .filter_map(|a| {
                let shared: Vec<Digest> = a
                    .blobs
                    .iter()
                    .map(|(d, _)| *d)
                    .filter(|d| mine.contains(d))
                    .collect();
                (!shared.is_empty()).then(|| ImageAssignment {
                    image: a.image.clone(),
                    manifest_digest: a.manifest_digest.digest(),
                    blobs: shared,
                    nodes: named(a),
                })
            })
            .collect();
        Ok(SyncResponse {
            images: assigned
                .iter()
                .map(|a| ImageAssignment {
                    image: a.image.clone(),
                    manifest_digest: a.manifest_digest.digest(),
                    blobs: a.blobs_of(node_id).iter().map(|(d, _)| *d).collect(),
                    nodes: named(a),
                })
                .collect(),
            blobs,
            revoked,
            sharing,
        })
    }

    /// How much the tracker holds (bounded whatever nodes report).
    pub fn tracker_size(&self) -> tracker::TrackerSize {
        self.tracker().size()
    }

    /// Forgets a node's holdings (it was revoked).
    pub fn forget(&self, node_id: &str) {
        self.tracker().forget(node_id);
    }

    /// Progress of every assignment. Blocking (state reads).
    pub fn status(&self) -> Result<DistributionStatus, DistError> {
        let state = &*self.state;
        let now = Instant::now();
        let records: HashMap<String, NodeRecord> = state
            .nodes()?
            .into_iter()
            .map(|n| (n.node_id.clone(), n))
            .collect();
        let tracker = self.tracker();
        let mut images = Vec::new();
        let mut assigned = state.assignments()?;
        assigned.sort_by(|a, b| a.image.cmp(&b.image));
        for a in assigned {
            let total: u64 = a.blobs.iter().map(|(_, s)| *s).sum();
            let mut nodes = Vec::new();
            for id in &a.nodes {
                let mut blobs = Vec::new();
                for (d, size) in a.blobs_of(id) {
                    let done = match (tracker.holding(id, d), self.cached_table(d)) {
                        (Some(have), Some(t)) => (0..t.count())
                            .filter(|&i| have.get(i))
                            .map(|i| u64::from(t.range(i).1))
                            .sum(),
                        _ => 0,
                    };
                    blobs.push(BlobProgress {
                        digest: *d,
                        size: *size,
                        done_bytes: done,
                        complete: done == *size,
                    });
                }
                let done: u64 = blobs.iter().map(|b| b.done_bytes).sum();
                let total: u64 = blobs.iter().map(|b| b.size).sum();
                let (received, served_to_peers, from_coordinator) = tracker.counters(id);
                nodes.push(NodeProgress {
                    node_id: id.clone(),
                    hostname: records
                        .get(id)
                        .map(|r| r.hostname.clone())
                        .unwrap_or_default(),
                    active: tracker.is_active(id, now),
                    done_bytes: done,
                    total_bytes: total,
                    complete: done == total,
                    blobs,
                    bad_peers: tracker.corrupt_peers(id),
                    received,
                    served_to_peers,
                    from_coordinator,
                });
            }
            images.push(ImageProgress {
                image: a.image,
                manifest_digest: a.manifest_digest.digest(),
                total_bytes: total,
                nodes,
            });
        }
        Ok(DistributionStatus {
            served_bytes: self.served_bytes(),
            images,
        })
    }

    pub(crate) fn cached_table(&self, digest: &Digest) -> Option<Arc<PieceTable>> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Whether the coordinator may send these pieces to the node now, and
    /// if so records the bytes.
    pub(crate) fn may_send(&self, node_id: &str, table: &PieceTable, pieces: &[u32]) -> bool {
        let tracker = self.tracker();
        pieces
            .iter()
            .all(|&i| i < table.count() && tracker.may_send(node_id, &table.digest, i))
    }

    pub(crate) fn count_sent(&self, node_id: &str, bytes: u64) {
        self.served.fetch_add(bytes, Ordering::Relaxed);
        self.tracker().sent(node_id, bytes);
    }
}

fn resolve_node<'a>(records: &'a [NodeRecord], want: &str) -> Result<&'a NodeRecord, DistError> {
    if let Some(r) = records.iter().find(|r| r.node_id == want) {
        return Ok(r);
    }
    let by: Vec<&NodeRecord> = records
        .iter()
        .filter(|r| {
            // An IP names a node only when it is bound to it by evidence.
            r.hostname == want
                || r.binding(want)
                    .is_some_and(seaport_shared::wire::IpBinding::is_evidence)
        })
        .collect();
    match by.as_slice() {
        [one] => Ok(one),
        _ => Err(DistError::NoSuchNode(want.to_string())),
    }
}

/// The sizes of pieces, for byte counts.
pub(crate) fn pieces_len(table: &PieceTable, pieces: &[u32]) -> u64 {
    pieces.iter().map(|&i| u64::from(table.range(i).1)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_rootfs::oci::{Descriptor, ImageConfig, Index, Manifest, Platform, RootFs};
    use seaport_rootfs::reference::ImageRef;
    use seaport_shared::wire::HostFacts;

    /// Stores a one-layer image for `arch`; returns its manifest descriptor
    /// as an index entry and its layer's digest.
    fn put_image(store: &seaport_rootfs::store::Store, arch: &str) -> (Descriptor, Digest) {
        let layer_bytes = format!("{arch} layer");
        let layer = store.put_blob(layer_bytes.as_bytes()).unwrap();
        let config = serde_json::to_vec(&ImageConfig {
            architecture: arch.into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer],
            },
            ..ImageConfig::default()
        })
        .unwrap();
        let desc = |media_type: &str, digest: Digest, size: usize| Descriptor {
            media_type: media_type.into(),
            digest,
            size: size as u64,
            annotations: Default::default(),
            platform: None,
        };
        let manifest = serde_json::to_vec(&Manifest {
            schema_version: 2,
            media_type: Some(seaport_rootfs::oci::MEDIA_TYPE_MANIFEST.into()),
            config: desc(
                seaport_rootfs::oci::MEDIA_TYPE_CONFIG,
                store.put_blob(&config).unwrap(),
                config.len(),
            ),
            layers: vec![desc(
                seaport_rootfs::oci::MEDIA_TYPE_LAYER_TAR,
                layer,
                layer_bytes.len(),
            )],
            annotations: Default::default(),
        })
        .unwrap();
        let mut entry = desc(
            seaport_rootfs::oci::MEDIA_TYPE_MANIFEST,
            store.put_blob(&manifest).unwrap(),
            manifest.len(),
        );
        entry.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        });
        (entry, layer)
    }

    fn name_index(store: &seaport_rootfs::store::Store, name: &str, entries: &[&Descriptor]) {
        let mut index = Index::new();
        index.manifests = entries.iter().map(|d| (*d).clone()).collect();
        let digest = store
            .put_blob(&serde_json::to_vec(&index).unwrap())
            .unwrap();
        store
            .set_name(&ImageRef::parse(name).unwrap(), &digest)
            .unwrap();
    }

    #[test]
    fn each_node_is_assigned_its_own_platform_of_a_multi_platform_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let images = seaport_rootfs::store::Store::open(&root).unwrap();
        let (amd, amd_layer) = put_image(&images, "amd64");
        let (arm, arm_layer) = put_image(&images, "arm64");
        name_index(&images, "multi:v1", &[&amd, &arm]);
        name_index(&images, "arm-only:v1", &[&arm]);

        let state =
            Arc::new(crate::state::RedbStore::create(&dir.path().join("state.redb")).unwrap());
        let token = seaport_shared::pki::JoinToken::generate();
        state.add_token(&token, 100, 600, 2, None).unwrap();
        let mut updates = Vec::new();
        let mut ids = Vec::new();
        for (label, arch) in [("amd", "x86_64"), ("arm", "aarch64")] {
            let (id, _) = state
                .enroll(&token, label, 110, &mut |_, _| {
                    Ok(crate::state::Issued {
                        cert_pem: String::new(),
                        expires: 1_000_000,
                    })
                })
                .unwrap();
            let facts = HostFacts {
                hostname: format!("host-{label}"),
                arch: arch.into(),
                ..HostFacts::default()
            };
            updates.push((id.clone(), Some(facts), Some(120)));
            ids.push(id);
        }
        let (amd_id, arm_id) = (ids[0].as_str(), ids[1].as_str());
        state.update_nodes(&updates).unwrap();

        let dist = Distribution::new(&root, &dir.path().join("coordinator"), state.clone());
        let multi = dist.resolve("multi:v1").unwrap();
        let a = dist
            .assign("multi:v1", multi, &[amd_id.into(), arm_id.into()], 130)
            .unwrap();
        let index_digest = images.lookup("multi:v1").unwrap().manifest.digest;
        assert_eq!(a.manifest_digest.digest(), index_digest);
        let has = |node: &str, d: &Digest| a.blobs_of(node).iter().any(|(b, _)| b == d);
        assert!(has(amd_id, &index_digest) && has(arm_id, &index_digest));
        assert!(has(amd_id, &amd.digest) && has(amd_id, &amd_layer));
        assert!(!has(amd_id, &arm_layer) && !has(amd_id, &arm.digest));
        assert!(has(arm_id, &arm_layer) && !has(arm_id, &amd_layer));
        // Only its own platform's blobs are served to a node.
        assert!(dist.allowed(amd_id, &amd_layer).unwrap());
        assert!(!dist.allowed(amd_id, &arm_layer).unwrap());
        assert!(dist.allowed(arm_id, &arm_layer).unwrap());
        // And only those are what its syncs tell it to fetch.
        let sync = dist
            .sync(
                &|_| true,
                amd_id,
                None,
                SyncRequest {
                    peer_port: 0,
                    blobs: vec![],
                    bad_peers: vec![],
                    received: vec![],
                    served: 0,
                },
            )
            .unwrap();
        let fetched: Vec<Digest> = sync.images[0].blobs.clone();
        assert!(fetched.contains(&amd_layer) && !fetched.contains(&arm_layer));
        let status = dist.status().unwrap();
        let amd_total = status.images[0]
            .nodes
            .iter()
            .find(|n| n.node_id == amd_id)
            .unwrap()
            .total_bytes;
        let own: u64 = a.blobs_of(amd_id).iter().map(|(_, s)| *s).sum();
        assert_eq!(amd_total, own);

        let arm_only = dist.resolve("arm-only:v1").unwrap();
        let err = dist
            .assign("arm-only:v1", arm_only, &[amd_id.into()], 140)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host-amd") && err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn a_revocation_and_a_rejoin_are_told_by_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let images = seaport_rootfs::store::Store::open(&root).unwrap();
        let (amd, _) = put_image(&images, "amd64");
        name_index(&images, "app:v1", &[&amd]);
        let state =
            Arc::new(crate::state::RedbStore::create(&dir.path().join("state.redb")).unwrap());
        fn issued(_: &str, _: u64) -> Result<crate::state::Issued, StateError> {
            Ok(crate::state::Issued {
                cert_pem: String::new(),
                expires: 1_000_000,
            })
        }
        let token = seaport_shared::pki::JoinToken::generate();
        state.add_token(&token, 100, 600, 2, None).unwrap();
        let mut ids = Vec::new();
        for label in ["a", "b"] {
            let (id, _) = state.enroll(&token, label, 110, &mut issued).unwrap();
            let facts = HostFacts {
                hostname: format!("host-{label}"),
                arch: "x86_64".into(),
                ..HostFacts::default()
            };
            state
                .update_nodes(&[(id.clone(), Some(facts), Some(120))])
                .unwrap();
            ids.push(id);
        }
        let (a, b) = (ids[0].clone(), ids[1].clone());
        let dist = Distribution::new(&root, &dir.path().join("coordinator"), state.clone());
        let app = dist.resolve("app:v1").unwrap();
        dist.assign("app:v1", app, &[a.clone(), b.clone()], 130)
            .unwrap();
        let sync = || {
            dist.sync(
                &|_| true,
                &a,
                None,
                SyncRequest {
                    peer_port: 0,
                    blobs: vec![],
                    bad_peers: vec![],
                    received: vec![],
                    served: 0,
                },
            )
            .unwrap()
        };
        let named = |r: &SyncResponse| -> Vec<(String, u64)> {
            r.images[0]
                .nodes
                .iter()
                .map(|n| (n.node_id.clone(), n.min_serial))
                .collect()
        };
        let first = sync();
        let b_serial = state.node(&b).unwrap().unwrap().min_serial;
        assert!(named(&first).contains(&(b.clone(), b_serial)));
        assert!(first.revoked.is_empty());
        // Heartbeats (facts, last seen) leave what syncs tell unchanged.
        state.update_nodes(&[(b.clone(), None, Some(140))]).unwrap();
        assert_eq!(named(&sync()), named(&first));

        state.revoke(&b, 150).unwrap();
        let after = sync();
        assert_eq!(after.revoked, vec![b.clone()]);
        assert!(
            named(&after).iter().all(|(id, _)| id != &b),
            "{:?}",
            named(&after)
        );

        // Back with a token made for it: named again, with its new serial.
        let rejoin = seaport_shared::pki::JoinToken::generate();
        state
            .add_token(&rejoin, 160, 600, 1, Some(b.as_str()))
            .unwrap();
        state.enroll(&rejoin, "b", 170, &mut issued).unwrap();
        let new_serial = state.node(&b).unwrap().unwrap().min_serial;
        assert!(new_serial > b_serial);
        let back = sync();
        assert!(back.revoked.is_empty(), "{:?}", back.revoked);
        assert!(named(&back).contains(&(b.clone(), new_serial)));
    }
}
