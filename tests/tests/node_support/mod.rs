//! Nodes that speak the protocol by script: a real enrolled node (its own
//! key and certificate from the coordinator, its own QUIC connection from
//! its own loopback address) whose answers the test chooses, to play a
//! compromised host against a real coordinator in-process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seaport::daemon::{Daemon, Probe, ServeOptions};
use seaport_agent::{Identity, JoinOptions};
use seaport_shared::cluster::{Role, Step};
use seaport_shared::codec;
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{
    Bitmap, BlobReport, BlobRequest, BlobResponse, SyncRequest, SyncResponse, BLOB_FRAME_LIMIT,
};
use seaport_shared::wire::{
    self, AdminRequest, AdminResponse, AgentMessage, ClusterView, RunState, StreamKind, TaskEvent,
    TaskRequest, COORDINATOR_SERVER_NAME, TASK_FRAME_LIMIT,
};
use tokio::task::JoinHandle;

use crate::identity_support::{facts, host_identity, Coordinator};

/// A coordinator in-process, with a probe on its tables.
pub(crate) struct Running {
    pub coord: Coordinator,
    pub probe: Probe,
    root: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    pub(crate) async fn start(root: &Path) -> Running {
        seaport::ca::init(root).expect("coordinator init");
        Self::serve(root, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Stops the coordinator and starts it again on the same root and
    /// address, as a restart (or a crash and a restart) of the service
    /// does; sessions are lost and nodes must reconnect.
    pub(crate) async fn restart(self) -> Running {
        let (root, addr) = (self.root.clone(), self.coord.addr);
        self.stop().await;
        Self::serve(&root, addr).await
    }

    async fn serve(root: &Path, listen: SocketAddr) -> Running {
        // The old endpoint may hold the port for a moment after it stops.
        let mut tries = 0;
        let daemon = loop {
            match Daemon::bind(
                root,
                ServeOptions {
                    listen,
                    node_cert_ttl: Duration::from_secs(3600),
                    trust: Default::default(),
                    store: None,
                    advertise: None,
                    lease_ttl: seaport::state::leader::DEFAULT_TTL,
                },
            ) {
                Ok(d) => break d,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("coordinator bind on {listen}: {e}"),
            }
        };
        let probe = daemon.probe();
        let addr = daemon.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            daemon
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("coordinator run");
        });
        Running {
            coord: Coordinator::attach(root, addr),
            probe,
            root: root.to_path_buf(),
            stop: tx,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// The cluster's view, once its operation has ended.
    pub(crate) async fn wait_cluster(&self, name: &str, generation: u64) -> ClusterView {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(AdminResponse::Clusters(cs)) = self.coord.admin(AdminRequest::Clusters).await
            {
                if let Some(c) = cs.into_iter().find(|c| c.cluster == name) {
                    if c.generation >= generation && c.state.is_final() {
                        return c;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster {name} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How a scripted node answers.
#[derive(Clone, Default)]
pub(crate) struct Script {
    /// Join data (JSON) in the `Finished` of a master0 kubeadm task, and of
    /// every apply task after it (as a real first master reports it).
    pub init_join_data: Option<String>,
    /// Join data (JSON) in the `Finished` of every apply task it is given.
    pub forged_join_data: Option<String>,
    /// Files it answers when asked for `plugins/`.
    pub forged_plugins: Vec<(String, String)>,
    /// Sends no syncs of its own (the test sends them).
    pub no_sync: bool,
}

/// A scripted node with a live session.
pub(crate) struct Node {
    pub node_id: String,
    pub ip: IpAddr,
    pub hostname: String,
    /// Every task the coordinator sent it, in order.
    pub tasks: Arc<Mutex<Vec<TaskRequest>>>,
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    handles: Vec<JoinHandle<()>>,
    identity: Identity,
    script: Script,
}

/// One session of a scripted node: its connection and the tasks that
/// heartbeat, sync and answer on it.
struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    handles: Vec<JoinHandle<()>>,
}

impl Node {
    /// Enrolls `hostname` with a fresh token and opens its session from
    /// `ip` (a loopback address), heartbeating and syncing until dropped.
    pub(crate) async fn start(
        coord: &Coordinator,
        dir: &Path,
        hostname: &str,
        ip: &str,
        script: Script,
    ) -> Node {
        let ip: IpAddr = ip.parse().unwrap();
        let state = dir.join(hostname);
        let grant = coord.token(600, 1).await;
        let joined = seaport_agent::join(&JoinOptions {
            coordinator: coord.addr.to_string(),
            token: grant.token.clone(),
            ca_pin: grant.ca_pin.clone(),
            state_dir: state.clone(),
            host: host_identity(hostname),
            ips: vec![ip],
        })
        .await
        .expect("join");
        let identity = Identity::load(&state).unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let session = connect(
            coord,
            &identity,
            &joined.node_id,
            hostname,
            ip,
            &script,
            &tasks,
        )
        .await;
        Node {
            node_id: joined.node_id,
            ip,
            hostname: hostname.to_string(),
            tasks,
            endpoint: session.endpoint,
            conn: session.conn,
            handles: session.handles,
            identity,
            script,
        }
    }

    /// Opens a new session with the same identity and script (after the
    /// coordinator restarted), once the old one is gone.
    pub(crate) async fn reconnect(&mut self, coord: &Coordinator) {
        for h in self.handles.drain(..) {
            h.abort();
        }
        self.conn.close(0u32.into(), b"reconnecting");
        let session = connect(
            coord,
            &self.identity,
            &self.node_id,
            &self.hostname,
            self.ip,
            &self.script,
            &self.tasks,
        )
        .await;
        self.endpoint = session.endpoint;
        self.conn = session.conn;
        self.handles = session.handles;
    }

    /// The tasks received so far.
    pub(crate) fn tasks(&self) -> Vec<TaskRequest> {
        self.tasks.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
        self.conn.close(0u32.into(), b"test over");
    }
}

/// Opens `node_id`'s session from `ip`: heartbeats on the control stream,
/// syncs (unless the script sends its own), tasks answered by the script;
/// returns once the coordinator shows the node online from that address.
async fn connect(
    coord: &Coordinator,
    identity: &Identity,
    node_id: &str,
    hostname: &str,
    ip: IpAddr,
    script: &Script,
    tasks: &Arc<Mutex<Vec<TaskRequest>>>,
) -> Session {
    let script = script.clone();
    let endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    let conn = endpoint
        .connect_with(
            identity.client_config().unwrap(),
            coord.addr,
            COORDINATOR_SERVER_NAME,
        )
        .unwrap()
        .await
        .expect("session");
    let mut handles = Vec::new();
    // Heartbeats on the control stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
        .await
        .unwrap();
    let mut f = facts(hostname);
    f.ips = vec![ip.to_string()];
    let node_id = node_id.to_string();
    let hb_node = node_id.clone();
    handles.push(tokio::spawn(async move {
        loop {
            let msg = AgentMessage::Heartbeat {
                node_id: hb_node.clone(),
                facts: f.clone(),
            };
            if codec::write_msg(&mut send, &msg).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));
    handles.push(tokio::spawn(async move {
        while let Ok(Some(_)) =
            codec::read_msg::<_, wire::CoordinatorMessage>(&mut recv, wire::CONTROL_FRAME_LIMIT)
                .await
        {}
    }));
    // Syncs: whatever is assigned is reported complete at the next one.
    let sync_conn = conn.clone();
    let no_sync = script.no_sync;
    handles.push(tokio::spawn(async move {
        if no_sync {
            return;
        }
        let mut held: BTreeMap<Digest, Bitmap> = BTreeMap::new();
        loop {
            let req = SyncRequest {
                peer_port: 0,
                blobs: held
                    .iter()
                    .map(|(d, b)| BlobReport {
                        digest: *d,
                        have: b.clone(),
                        complete: true,
                    })
                    .collect(),
                bad_peers: vec![],
                received: vec![],
                served: 0,
            };
            if let Ok(resp) = sync(&sync_conn, req).await {
                for plan in resp.blobs {
                    held.insert(plan.table.digest, Bitmap::full(plan.table.count()));
                }
            }
            if sync_conn.close_reason().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }));
    // Tasks, answered by the script.
    let (task_conn, seen) = (conn.clone(), tasks.clone());
    handles.push(tokio::spawn(async move {
        let initialized = Arc::new(Mutex::new(false));
        while let Ok((send, recv)) = task_conn.accept_bi().await {
            let (seen, script, init) = (seen.clone(), script.clone(), initialized.clone());
            tokio::spawn(answer_task(send, recv, seen, script, init));
        }
    }));
    // Online, with its address known, before anything is planned on it.
    let want = ip.to_string();
    crate::identity_support::wait_until(Duration::from_secs(20), "the node online", || {
        let want = want.clone();
        let id = node_id.clone();
        async move {
            coord
                .node(&id)
                .await
                .is_some_and(|n| n.ips.contains(&want) && n.status == wire::NodeStatus::Online)
        }
    })
    .await;
    Session {
        endpoint,
        conn,
        handles,
    }
}

/// One sync on a `Blob` stream of `conn`.
pub(crate) async fn sync(
    conn: &quinn::Connection,
    req: SyncRequest,
) -> Result<SyncResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::client_handshake(&mut recv, &mut send, StreamKind::Blob)
        .await
        .map_err(|e| e.to_string())?;
    codec::write_msg(&mut send, &BlobRequest::Sync(req))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match codec::read_msg::<_, BlobResponse>(&mut recv, BLOB_FRAME_LIMIT).await {
        Ok(Some(BlobResponse::Sync(r))) => Ok(r),
        other => Err(format!("sync answered with {other:?}")),
    }
}

async fn answer_task(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    seen: Arc<Mutex<Vec<TaskRequest>>>,
    script: Script,
    initialized: Arc<Mutex<bool>>,
) {
    let Ok(hello) = wire::read_hello(&mut recv).await else {
        return;
    };
    if hello.check_version().is_err() || hello.kind != StreamKind::Task {
        return;
    }
    if wire::accept_hello(&mut send).await.is_err() {
        return;
    }
    let Ok(Some(req)) = codec::read_msg::<_, TaskRequest>(&mut recv, TASK_FRAME_LIMIT).await else {
        return;
    };
    seen.lock().unwrap().push(req.clone());
    let event = match &req {
        TaskRequest::Apply(t) => {
            let mut init = initialized.lock().unwrap();
            if t.role == Role::Master0 && t.steps.contains(&Step::Kubeadm) {
                *init = true;
            }
            let join_data = if script.forged_join_data.is_some() {
                script.forged_join_data.clone()
            } else if *init {
                script.init_join_data.clone()
            } else {
                None
            };
            TaskEvent::Finished {
                ok: true,
                error: None,
                join_data,
            }
        }
        TaskRequest::ReadFiles(t) => {
            let mut files: Vec<(String, Option<Vec<u8>>)> =
                t.paths.iter().map(|p| (p.clone(), None)).collect();
            if t.dirs.iter().any(|d| d.trim_end_matches('/') == "plugins") {
                files.extend(
                    script
                        .forged_plugins
                        .iter()
                        .map(|(p, text)| (p.clone(), Some(text.as_bytes().to_vec()))),
                );
            }
            TaskEvent::Files { files, error: None }
        }
        TaskRequest::WriteFiles(_) => TaskEvent::Written { error: None },
        TaskRequest::Shell(_) => TaskEvent::Finished {
            ok: true,
            error: None,
            join_data: None,
        },
        TaskRequest::Reset(_) => TaskEvent::ResetDone {
            had_install: true,
            actions: vec![],
            warnings: vec![],
            error: None,
        },
        TaskRequest::Drift(_) => TaskEvent::Drift {
            modified: vec![],
            missing: vec![],
            checked: 0,
            error: None,
        },
        TaskRequest::Preflight(_) => TaskEvent::Preflight {
            hostname: String::new(),
            checks: vec![],
        },
    };
    let _ = codec::write_msg(&mut send, &event).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}

/// Join data of the right shape, naming `api` as the API server.
pub(crate) fn join_data_json(master0: &str, api: &str, token: &str) -> String {
    serde_json::json!({
        "api_server_endpoint": format!("{api}:6443"),
        "master0_ip": master0,
        "token": token,
        "ca_cert_hashes": [format!("sha256:{}", "ab".repeat(32))],
        "certificate_key": "0f".repeat(32),
    })
    .to_string()
}

/// Whether a run state is final.
pub(crate) fn finished(state: RunState) -> bool {
    state.is_final()
}
