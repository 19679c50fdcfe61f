//! A real coordinator in-process on a loopback port, and agents made with the
//! agent library, for the identity and transport tests.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use seaport::admin::AdminClient;
use seaport::daemon::{Daemon, ServeOptions};
use seaport_agent::{session, HostIdentity, JoinOptions, Joined};
use seaport_shared::wire::{AdminRequest, AdminResponse, HostFacts, NodeInfo, TokenGrant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A running coordinator.
pub(crate) struct Coordinator {
    pub root: PathBuf,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Coordinator {
    /// Initializes `root` (keeping an existing CA) and serves on `listen`.
    pub(crate) async fn start(
        root: &Path,
        listen: SocketAddr,
        node_cert_ttl: Duration,
    ) -> Coordinator {
        seaport::ca::init(root).expect("coordinator init");
        // After a restart in the same process, connection tasks of the
        // stopped coordinator may hold its socket for a few more seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let daemon = loop {
            match Daemon::bind(
                root,
                ServeOptions {
                    listen,
                    node_cert_ttl,
                    trust: Default::default(),
                    store: None,
                    advertise: None,
                    lease_ttl: seaport::state::leader::DEFAULT_TTL,
                },
            ) {
                Ok(d) => break d,
                Err(seaport::daemon::DaemonError::Bind { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("coordinator bind: {e}"),
            }
        };
        let addr = daemon.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            daemon
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("coordinator run");
        });
        Coordinator {
            root: root.to_path_buf(),
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) async fn start_loopback(root: &Path, node_cert_ttl: Duration) -> Coordinator {
        Coordinator::start(root, "127.0.0.1:0".parse().unwrap(), node_cert_ttl).await
    }

    /// A handle on a coordinator started elsewhere (admin calls only).
    pub(crate) fn attach(root: &Path, addr: SocketAddr) -> Coordinator {
        Coordinator {
            root: root.to_path_buf(),
            addr,
            stop: None,
            task: None,
        }
    }

    /// Stops it the way SIGTERM does, and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("coordinator task");
        }
    }

    pub(crate) async fn admin(
        &self,
        req: AdminRequest,
    ) -> Result<AdminResponse, seaport::admin::AdminError> {
        let client = AdminClient::connect(&self.root, &self.addr.to_string()).await?;
        let resp = client.request(&req).await;
        client.close().await;
        resp
    }

    pub(crate) async fn token(&self, ttl_secs: u64, uses: u32) -> TokenGrant {
        match self
            .admin(AdminRequest::CreateToken {
                ttl_secs,
                uses,
                node: None,
            })
            .await
            .expect("create token")
        {
            AdminResponse::Token(t) => t,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// A one-use token made for an existing node (`token create --node`).
    pub(crate) async fn token_for(&self, node: &str) -> TokenGrant {
        match self
            .admin(AdminRequest::CreateToken {
                ttl_secs: 600,
                uses: 1,
                node: Some(node.to_string()),
            })
            .await
            .expect("create a token for a node")
        {
            AdminResponse::Token(t) => t,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub(crate) async fn nodes(&self) -> Vec<NodeInfo> {
        match self
            .admin(AdminRequest::ListNodes)
            .await
            .expect("list nodes")
        {
            AdminResponse::Nodes(n) => n,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub(crate) async fn node(&self, node_id: &str) -> Option<NodeInfo> {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.node_id == node_id)
    }

    pub(crate) fn join_options(
        &self,
        grant: &TokenGrant,
        state_dir: &Path,
        host: &str,
    ) -> JoinOptions {
        JoinOptions {
            coordinator: self.addr.to_string(),
            token: grant.token.clone(),
            ca_pin: grant.ca_pin.clone(),
            state_dir: state_dir.to_path_buf(),
            host: host_identity(host),
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    /// Makes a token and joins one simulated host with it.
    pub(crate) async fn join(&self, state_dir: &Path, host: &str) -> Joined {
        self.join_host(state_dir, host_identity(host)).await
    }

    /// Makes a token and joins the given host identity with it.
    pub(crate) async fn join_host(&self, state_dir: &Path, host: HostIdentity) -> Joined {
        let grant = self.token(600, 1).await;
        let mut opts = self.join_options(&grant, state_dir, &host.hostname);
        opts.host = host;
        seaport_agent::join(&opts).await.expect("join")
    }
}

/// A host identity unique to a test host name.
pub(crate) fn host_identity(host: &str) -> HostIdentity {
    HostIdentity {
        machine_id: format!("{:032x}", rand_u128()),
        hostname: host.to_string(),
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (u128::from(a) << 64) | u128::from(b)
}

pub(crate) fn facts(host: &str) -> HostFacts {
    HostFacts {
        hostname: host.to_string(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_total: 1 << 30,
        ips: vec!["127.0.0.1".into()],
        agent_version: "test".into(),
        ..Default::default()
    }
}

/// A running agent service (the library loop the binary runs).
pub(crate) struct Agent {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Agent {
    pub(crate) fn spawn(state_dir: &Path, host: &str) -> Agent {
        let (tx, rx) = watch::channel(false);
        let dir = state_dir.to_path_buf();
        let f = facts(host);
        let task = tokio::spawn(async move { session::run(&dir, f, rx).await });
        Agent { stop: tx, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub(crate) async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client endpoint connected with `config`, or the connection error.
pub(crate) async fn connect(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let endpoint = seaport_shared::tls::client_endpoint(addr).expect("client endpoint");
    let conn = endpoint
        .connect_with(config, addr, seaport_shared::wire::COORDINATOR_SERVER_NAME)
        .expect("connect")
        .await?;
    Ok((endpoint, conn))
}

/// Waits for the peer to close `conn`; returns the close reason.
pub(crate) async fn closed_by_peer(
    conn: &quinn::Connection,
    limit: Duration,
) -> quinn::ConnectionError {
    tokio::time::timeout(limit, conn.closed())
        .await
        .expect("the coordinator should have closed the connection")
}

impl Coordinator {
    /// Stops it and starts it again on the same root and address (a
    /// restart in the middle of an attack).
    pub(crate) async fn restart(self, node_cert_ttl: Duration) -> Coordinator {
        let (root, addr) = (self.root.clone(), self.addr);
        self.stop().await;
        Coordinator::start(&root, addr, node_cert_ttl).await
    }

    /// One enrollment as a modified agent would send it: any CSR, any
    /// token, from any local address.
    pub(crate) async fn enroll_raw(
        &self,
        from: std::net::IpAddr,
        token: &str,
        csr_der: Vec<u8>,
    ) -> seaport_shared::wire::EnrollResponse {
        use seaport_shared::wire::{self, EnrollRequest, EnrollResponse, StreamKind};
        let pin = seaport_shared::pki::CaPin::of_cert(
            &seaport::ca::Ca::load(&self.root).unwrap().cert_der()[..],
        )
        .unwrap();
        let endpoint = quinn::Endpoint::client((from, 0).into()).unwrap();
        let conn = endpoint
            .connect_with(
                seaport_shared::tls::enroll_client(pin).unwrap(),
                self.addr,
                wire::COORDINATOR_SERVER_NAME,
            )
            .unwrap()
            .await
            .expect("enrollment connection");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        wire::client_handshake(&mut recv, &mut send, StreamKind::Enroll)
            .await
            .unwrap();
        seaport_shared::codec::write_msg(
            &mut send,
            &EnrollRequest {
                token: token.to_string(),
                csr_der,
            },
        )
        .await
        .unwrap();
        let _ = send.finish();
        let resp: Option<EnrollResponse> =
            seaport_shared::codec::read_msg(&mut recv, wire::ENROLL_FRAME_LIMIT)
                .await
                .unwrap();
        conn.close(0u32.into(), b"done");
        resp.expect("an answer to the enrollment")
    }

    /// The clusters the coordinator knows.
    pub(crate) async fn clusters(&self) -> Vec<seaport_shared::wire::ClusterView> {
        match self
            .admin(AdminRequest::Clusters)
            .await
            .expect("list clusters")
        {
            AdminResponse::Clusters(c) => c,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

/// A node session driven by hand from a chosen local address, reporting
/// whatever facts it is given (what a root user on an enrolled host can
/// make its agent say). It counts the task streams the coordinator opens
/// to it.
pub(crate) struct Impostor {
    stop: watch::Sender<bool>,
    task: JoinHandle<usize>,
}

impl Impostor {
    pub(crate) fn start(
        coordinator: SocketAddr,
        state_dir: &Path,
        from: std::net::IpAddr,
        facts: HostFacts,
    ) -> Impostor {
        use seaport_shared::wire::{self, AgentMessage, StreamKind};
        let identity = seaport_agent::Identity::load(state_dir).expect("impostor identity");
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tasks_seen = 0usize;
            let endpoint = quinn::Endpoint::client((from, 0).into()).unwrap();
            while !*rx.borrow() {
                let session = async {
                    let conn = endpoint
                        .connect_with(
                            identity.client_config().unwrap(),
                            coordinator,
                            wire::COORDINATOR_SERVER_NAME,
                        )
                        .ok()?
                        .await
                        .ok()?;
                    let (mut send, mut recv) = conn.open_bi().await.ok()?;
                    wire::client_handshake(&mut recv, &mut send, StreamKind::Control)
                        .await
                        .ok()?;
                    let mut tick = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                let hb = AgentMessage::Heartbeat {
                                    node_id: identity.node_id.clone(),
                                    facts: facts.clone(),
                                };
                                seaport_shared::codec::write_msg(&mut send, &hb).await.ok()?;
                                let _: Option<wire::CoordinatorMessage> =
                                    seaport_shared::codec::read_msg(
                                        &mut recv,
                                        wire::CONTROL_FRAME_LIMIT,
                                    )
                                    .await
                                    .ok()?;
                            }
                            s = conn.accept_bi() => {
                                s.ok()?;
                                tasks_seen += 1;
                            }
                            _ = rx.changed() => return Some(()),
                        }
                    }
                };
                let _ = session.await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            tasks_seen
        });
        Impostor { stop: tx, task }
    }

    /// Stops it; returns how many task streams it was sent.
    pub(crate) async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("impostor stops")
            .expect("impostor task")
    }
}

/// Builds a one-layer image named `name` into the store under `root`.
pub(crate) fn build_image(root: &Path, name: &str) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("etc")).unwrap();
    std::fs::write(ctx.path().join("etc/hello.conf"), "hello\n").unwrap();
    std::fs::write(ctx.path().join("Kubefile"), "FROM scratch\nCOPY etc etc\n").unwrap();
    let out = std::process::Command::new(seaport_bin())
        .arg("--root")
        .arg(root)
        .args(["build", "-f"])
        .arg(ctx.path().join("Kubefile"))
        .args(["-t", name])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seaport build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Clusterfile for `image` with one master and the given workers.
pub(crate) fn clusterfile(name: &str, image: &str, master: &str, nodes: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: sealer.cloud/v2\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  hosts:\n  - ips: [{master}]\n    roles: [master]\n"
    );
    if !nodes.is_empty() {
        text.push_str(&format!(
            "  - ips: [{}]\n    roles: [node]\n",
            nodes.join(", ")
        ));
    }
    text
}

/// The `seaport` binary, built once for these tests.
pub(crate) fn seaport_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        seaport_lab::seaport::Binaries::build_for_tests()
            .expect("build seaport")
            .seaport
    })
    .clone()
}
