//! Coordinator footprint with N connected agents heartbeating.
//!
//! `cargo bench -p seaport-lab --bench agents`
//!
//! Starts `seaport coordinator serve` as a child process on loopback,
//! enrolls N simulated agents (each its own key, certificate, QUIC endpoint
//! and connection, all in this process, using the agent library), runs their
//! session loops (heartbeat every 3 s), waits until the coordinator lists all
//! N online, then samples the coordinator's CPU time and RSS from /proc over
//! several windows. Prints min / median / max of CPU % of one core, the peak
//! RSS (VmHWM), and one JSON line per N. Targets at N = 1000: < 25 % of one
//! core, < 300 MiB.
//!
//! Environment: `SEAPORT_BENCH_AGENTS` (default `100,1000`),
//! `SEAPORT_BENCH_WINDOW_SECS` (default 10), `SEAPORT_BENCH_RUNS` (default 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seaport::admin::AdminClient;
use seaport_agent::{session, HostIdentity, JoinOptions};
use seaport_shared::wire::{AdminRequest, AdminResponse, HostFacts, NodeStatus, TokenGrant};
use tokio::sync::watch;

const TARGET_CPU_PCT: f64 = 25.0;
const TARGET_RSS_MIB: f64 = 300.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Coordinator {
    child: Child,
    root: PathBuf,
    addr: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

// The child is waited for by `Coordinator`'s Drop, or here when it fails to start.
#[allow(clippy::zombie_processes)]
fn start_coordinator(root: &Path) -> Coordinator {
    let bin = seaport_lab::seaport::Binaries::build_for_tests()
        .expect("build seaport")
        .seaport;
    let bin = bin.as_path();
    let ok = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["coordinator", "init"])
        .stdout(Stdio::null())
        .status()
        .expect("run seaport coordinator init")
        .success();
    assert!(ok, "seaport coordinator init failed");
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("SEAPORT_BENCH_COORDINATOR_LOG") {
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
                    child,
                    root: root.to_path_buf(),
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

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn admin(coord: &Coordinator, req: AdminRequest) -> AdminResponse {
    let client = AdminClient::connect(&coord.root, &coord.addr)
        .await
        .expect("admin connect");
    let resp = client.request(&req).await.expect("admin request");
    client.close().await;
    resp
}

async fn online(coord: &Coordinator) -> usize {
    match admin(coord, AdminRequest::ListNodes).await {
        AdminResponse::Nodes(n) => n.iter().filter(|n| n.status == NodeStatus::Online).count(),
        other => panic!("unexpected {other:?}"),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let counts: Vec<usize> = std::env::var("SEAPORT_BENCH_AGENTS")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(env_or("SEAPORT_BENCH_WINDOW_SECS", 10));
    let runs: usize = env_or("SEAPORT_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let coord = start_coordinator(&tmp.path().join("root"));
    let pid = coord.child.id();
    let tck = clock_ticks();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut enrolled = 0usize;

    println!(
        "coordinator pid {pid} at {}; window {window:?} x {runs}",
        coord.addr
    );
    for &n in &counts {
        rt.block_on(async {
            // Enroll and start agents up to n.
            let want = n.saturating_sub(enrolled);
            if want > 0 {
                let grant: TokenGrant = match admin(
                    &coord,
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
                let started = Instant::now();
                // All from one address: the coordinator serves 4 enrollments
                // per source at once and queues 8 more.
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
                let mut joins = Vec::new();
                for i in enrolled..n {
                    let permit = sem.clone().acquire_owned().await.unwrap();
                    let opts = JoinOptions {
                        coordinator: coord.addr.clone(),
                        token: grant.token.clone(),
                        ca_pin: grant.ca_pin.clone(),
                        state_dir: tmp.path().join(format!("agent-{i}")),
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
                        r.map(|_| opts)
                    }));
                }
                for j in joins {
                    let opts = j.await.unwrap().expect("join");
                    let facts = HostFacts {
                        hostname: opts.host.hostname.clone(),
                        ips: vec!["127.0.0.1".into()],
                        agent_version: "bench".into(),
                        cpus: 2,
                        ..Default::default()
                    };
                    let rx = stop_rx.clone();
                    tasks.push(tokio::spawn(async move {
                        session::run(&opts.state_dir, facts, rx).await
                    }));
                }
                println!("enrolled {want} agents in {:.1?}", started.elapsed());
                enrolled = n;
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let up = online(&coord).await;
                if up >= n {
                    break;
                }
                assert!(Instant::now() < deadline, "only {up} of {n} agents online");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Let connection set-up settle before measuring steady state.
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        let mut cpu = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let c0 = proc_cpu_ticks(pid);
            std::thread::sleep(window);
            let c1 = proc_cpu_ticks(pid);
            let secs = t0.elapsed().as_secs_f64();
            cpu.push((c1 - c0) as f64 / tck / secs * 100.0);
        }
        let up = rt.block_on(online(&coord));
        let peak_mib = proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
        let rss_mib = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
        let (min, med, max) = stats(cpu);
        println!(
            "agents={n:5} online={up:5}  cpu% of one core min/median/max = {min:.1}/{med:.1}/{max:.1} (target < {TARGET_CPU_PCT})  rss {rss_mib:.1} MiB, peak {peak_mib:.1} MiB (target < {TARGET_RSS_MIB}); cpu/target = {:.2}, peak/target = {:.2}",
            med / TARGET_CPU_PCT,
            peak_mib / TARGET_RSS_MIB
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "coordinator_agents",
                "agents": n,
                "online": up,
                "window_secs": window.as_secs(),
                "runs": runs,
                "cpu_pct": {"min": min, "median": med, "max": max},
                "rss_mib": rss_mib,
                "peak_rss_mib": peak_mib,
                "target_cpu_pct": TARGET_CPU_PCT,
                "target_rss_mib": TARGET_RSS_MIB,
                "meets_target": max < TARGET_CPU_PCT && peak_mib < TARGET_RSS_MIB,
            })
        );
    }
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    drop(coord);
}
