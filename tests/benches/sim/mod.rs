//! What the coordinator benchmarks share: a coordinator process, simulated
//! agents (each its own key, certificate, QUIC endpoint and session, all in
//! the benchmark's process, using the agent library), and CPU and memory
//! from /proc. Each benchmark uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seaport::admin::AdminClient;
use seaport_agent::{HostIdentity, JoinOptions};
use seaport_shared::bench;
use seaport_shared::wire::{
    AdminRequest, AdminResponse, HostFacts, NodeInfo, NodeStatus, TokenGrant, HEARTBEAT_INTERVAL,
};
use tokio::sync::watch;

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) struct Coordinator {
    pub(crate) child: Option<Child>,
    pub(crate) addr: String,
}

impl Coordinator {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, no clean shutdown.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

/// The `seaport` binary of this workspace.
pub(crate) fn seaport_bin() -> PathBuf {
    seaport_lab::seaport::Binaries::build_for_tests()
        .expect("build seaport")
        .seaport
}

/// `seaport --root ROOT coordinator init ARGS`.
pub(crate) fn init(root: &Path, args: &[&str]) {
    let ok = Command::new(seaport_bin())
        .arg("--root")
        .arg(root)
        .args(["coordinator", "init"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run seaport coordinator init")
        .success();
    assert!(ok, "seaport coordinator init failed");
}

/// Starts `coordinator serve` on loopback with `args`, its log to `log`
/// (or nowhere), and waits until it listens.
// The child is waited for by `Coordinator`'s Drop, or here when it fails to start.
#[allow(clippy::zombie_processes)]
pub(crate) fn serve(root: &Path, listen: &str, args: &[&str], log: Option<&Path>) -> Coordinator {
    let mut child = Command::new(seaport_bin())
        .arg("--root")
        .arg(root)
        .args(["coordinator", "serve", "--listen", listen])
        .args(args)
        .stdout(Stdio::null())
        .stderr(match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("coordinator log file")),
            None => Stdio::null(),
        })
        .spawn()
        .expect("start seaport coordinator serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(info) = seaport::daemon::read_serve_info(root) {
            if info.pid == child.id() {
                return Coordinator {
                    child: Some(child),
                    addr: info.listen.to_string(),
                };
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coordinator did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One admin request with `root`'s admin identity to `addr` (one address
/// or several, comma-separated).
pub(crate) async fn admin(root: &Path, addr: &str, req: AdminRequest) -> AdminResponse {
    try_admin(root, addr, req).await.expect("admin request")
}

/// [`admin`], with its error.
async fn try_admin(root: &Path, addr: &str, req: AdminRequest) -> Result<AdminResponse, String> {
    let client = AdminClient::connect(root, addr)
        .await
        .map_err(|e| format!("admin connect: {e}"))?;
    let resp = client
        .request(&req)
        .await
        .map_err(|e| format!("admin request: {e}"));
    client.close().await;
    resp
}

/// The nodes as the coordinator (or the leader, through it) lists them.
pub(crate) async fn nodes(root: &Path, addr: &str) -> Vec<NodeInfo> {
    match admin(root, addr, AdminRequest::ListNodes).await {
        AdminResponse::Nodes(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

/// The nodes that fell behind, as the coordinator sees them: not listed
/// online, or no heartbeat for longer than the heartbeat interval plus
/// `slack` (the coordinator keeps the time of the last one in seconds).
/// Each as `hostname (why)`.
pub(crate) async fn behind(root: &Path, addr: &str, slack: Duration) -> Vec<String> {
    let list = nodes(root, addr).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let limit = (HEARTBEAT_INTERVAL + slack).as_secs() as i64;
    list.iter()
        .filter_map(|n| {
            let age = n.last_seen.map(|t| now - t);
            if n.status != NodeStatus::Online {
                Some(format!("{} ({:?})", n.hostname, n.status))
            } else if age.is_none_or(|a| a > limit) {
                Some(format!("{} (last heartbeat {age:?} s ago)", n.hostname))
            } else {
                None
            }
        })
        .collect()
}

/// Panics, naming them, if any of the `n` agents fell behind (see
/// [`behind`]) or fewer than `n` are listed.
pub(crate) async fn assert_none_behind(root: &Path, addr: &str, n: usize, slack: Duration) {
    let listed = nodes(root, addr).await.len();
    let late = behind(root, addr, slack).await;
    assert!(
        late.is_empty() && listed >= n,
        "the simulated agents fell behind: {} of {n} ({listed} listed): {}",
        late.len(),
        late.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
    );
}

/// Waits until `n` nodes are online (panics after `within`). A request
/// that fails (a coordinator just started, or one whose leader is being
/// elected) is asked again until then.
pub(crate) async fn wait_online(root: &Path, addr: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let up = match try_admin(root, addr, AdminRequest::ListNodes).await {
            Ok(AdminResponse::Nodes(list)) => Ok(list
                .iter()
                .filter(|n| n.status == NodeStatus::Online)
                .count()),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        };
        if up.as_ref().is_ok_and(|&up| up >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all {n} agents online after {within:?}: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// CPU % of one core of `pid` over each of `runs` windows.
pub(crate) fn cpu_pct(pid: u32, window: Duration, runs: usize) -> Vec<f64> {
    (0..runs).map(|_| cpu_pct_all(&[pid], window)[0]).collect()
}

/// CPU % of one core of each of `pids` over the same window.
pub(crate) fn cpu_pct_all(pids: &[u32], window: Duration) -> Vec<f64> {
    let t0 = Instant::now();
    let c0: Vec<Duration> = pids.iter().map(|p| bench::process_cpu(*p)).collect();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    pids.iter()
        .zip(c0)
        .map(|(p, c)| bench::process_cpu(*p).saturating_sub(c).as_secs_f64() / secs * 100.0)
        .collect()
}

/// Enrolls agents `from..to` (state under `dir`, host names `sim-I`,
/// all from 127.0.0.1) with a token made through `root`/`addr`, joining
/// `coordinators` (one address or a list): each agent's join options and
/// node id.
pub(crate) async fn join_agents(
    root: &Path,
    addr: &str,
    coordinators: &str,
    dir: &Path,
    (from, to): (usize, usize),
) -> Vec<(JoinOptions, String)> {
    let want = to.saturating_sub(from);
    if want == 0 {
        return Vec::new();
    }
    let grant: TokenGrant = match admin(
        root,
        addr,
        AdminRequest::CreateToken {
            ttl_secs: 3600,
            uses: (want * 2) as u32,
            node: None,
        },
    )
    .await
    {
        AdminResponse::Token(t) => t,
        other => panic!("unexpected {other:?}"),
    };
    // All from one address: the coordinator serves 4 enrollments per
    // source at once and queues 8 more.
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut joins = Vec::new();
    for i in from..to {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let opts = JoinOptions {
            coordinator: coordinators.to_string(),
            token: grant.token.clone(),
            ca_pin: grant.ca_pin.clone(),
            state_dir: dir.join(format!("agent-{i}")),
            host: HostIdentity {
                machine_id: format!("{i:032x}"),
                hostname: format!("sim-{i}"),
            },
            ips: vec!["127.0.0.1".parse().unwrap()],
        };
        joins.push(tokio::spawn(async move {
            // A loaded machine can drop a handshake; retry as an operator would.
            let mut r = seaport_agent::join(&opts).await;
            for _ in 0..3 {
                if r.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                r = seaport_agent::join(&opts).await;
            }
            drop(permit);
            r.map(|j| (opts, j.node_id))
        }));
    }
    let mut joined = Vec::new();
    for j in joins {
        joined.push(j.await.unwrap().expect("join"));
    }
    joined
}

/// What `seaport-agent run` is given for a simulated agent: its state
/// directory, no peer server.
pub(crate) fn run_settings(opts: &JoinOptions) -> seaport_agent::service::RunSettings {
    seaport_agent::service::RunSettings {
        state_dir: opts.state_dir.clone(),
        distribution: seaport_agent::distribution::DistributionOptions {
            peer_port: 0,
            ..Default::default()
        },
        data_root: opts.state_dir.join("data"),
        trust: Default::default(),
        balancer: None,
    }
}

/// Enrolls agents `from..to` as [`join_agents`] does and starts their
/// service until `stop` turns true.
pub(crate) async fn start_agents(
    root: &Path,
    addr: &str,
    coordinators: &str,
    dir: &Path,
    range: (usize, usize),
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let started = Instant::now();
    let joined = join_agents(root, addr, coordinators, dir, range).await;
    let mut tasks = Vec::new();
    for (opts, _) in &joined {
        let facts = HostFacts {
            hostname: opts.host.hostname.clone(),
            ips: vec!["127.0.0.1".into()],
            agent_version: "bench".into(),
            cpus: 2,
            ..Default::default()
        };
        // What `seaport-agent run` runs: session, content syncs, tasks.
        tasks.push(tokio::spawn(seaport_agent::service::run(
            run_settings(opts),
            facts,
            stop.clone(),
        )));
    }
    if !joined.is_empty() {
        println!(
            "enrolled {} agents in {:.1?}",
            joined.len(),
            started.elapsed()
        );
    }
    tasks
}
