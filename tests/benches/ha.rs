//! Several coordinators on etcd versus one on redb, with N simulated agents.
//!
//! `cargo bench -p seaport-lab --bench ha`
//!
//! Two cases, one after the other, each with N agents (real mTLS QUIC
//! sessions with heartbeats, from `sim`):
//!
//! - `redb`: one coordinator with its state in redb;
//! - `etcd`: 3 etcd members on loopback (Debian's `etcd-server`) and 3
//!   coordinators of one site on them; every agent is given all three
//!   addresses, so their sessions end up with the leader.
//!
//! For each case it prints every coordinator's CPU % of one core (every
//! window, all coordinators over the same windows, and min / median /
//! max) and peak RSS, and for `etcd` also etcd's
//! write rate (raft proposals committed per second on its leader member,
//! from `/metrics`) and the failover time: the leading coordinator is
//! killed with SIGKILL, the time until another logs that it leads (and
//! resumes the site's unfinished operations) and until all N agents are
//! online through it, for each of `SEAPORT_BENCH_KILLS` kills (the killed
//! coordinator is started again in between). The simulated site runs no
//! operation, so what a new leader resumes is none: the failover time is
//! the election and the agents' return. It prints the machine, every
//! sample and the load average during the run, and one JSON line per case.
//!
//! The run FAILS, naming the agents, if its own agents fell behind: after
//! every CPU window, and after the agents are back following each kill,
//! every agent must be listed online with a heartbeat no older than the
//! 3 s interval plus `SEAPORT_BENCH_HEARTBEAT_SLACK_MS` (default 2000;
//! the coordinator keeps heartbeat times in whole seconds); and all N must
//! be online within 180 s of each start and each kill.
//!
//! Environment: `SEAPORT_BENCH_AGENTS` (default 1000),
//! `SEAPORT_BENCH_WINDOW_SECS` (default 10), `SEAPORT_BENCH_RUNS` (CPU
//! windows, default 3), `SEAPORT_BENCH_KILLS` (default 3),
//! `SEAPORT_BENCH_LEASE_TTL` (default `10s`),
//! `SEAPORT_BENCH_HEARTBEAT_SLACK_MS`.

#[path = "../../coordinator/src/state/local_etcd.rs"]
#[allow(dead_code)]
mod local_etcd;
mod sim;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use seaport_shared::bench::{machine, LoadWatch};
use seaport_shared::wire::HEARTBEAT_INTERVAL;
use sim::{env_or, proc_status_kib, stats, wait_online, Coordinator};

const LEADING: &str = "leading the site's coordinators";

/// CPU of every running coordinator over the same `runs` windows, then
/// their peak RSS. After each window the agents are checked through
/// `root`/`addr`: the run fails if any fell behind.
#[allow(clippy::too_many_arguments)]
fn footprint(
    rt: &tokio::runtime::Runtime,
    coords: &[Coordinator],
    root: &Path,
    addr: &str,
    n: usize,
    window: Duration,
    runs: usize,
    slack: Duration,
) -> Vec<serde_json::Value> {
    let running: Vec<&Coordinator> = coords.iter().filter(|c| c.child.is_some()).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); running.len()];
    for _ in 0..runs {
        let pids: Vec<u32> = running.iter().map(|c| c.pid()).collect();
        for (i, pct) in sim::cpu_pct_all(&pids, window).into_iter().enumerate() {
            samples[i].push(pct);
        }
        rt.block_on(sim::assert_none_behind(root, addr, n, slack));
    }
    running
        .iter()
        .zip(samples)
        .map(|(c, cpu)| {
            let (min, med, max) = stats(cpu.clone());
            let peak = proc_status_kib(c.pid(), "VmHWM:") as f64 / 1024.0;
            let shown: Vec<String> = cpu.iter().map(|v| format!("{v:.1}")).collect();
            println!(
                "  coordinator {}: cpu% of one core {} (min/median/max {min:.1}/{med:.1}/{max:.1}), peak rss {peak:.1} MiB",
                c.addr,
                shown.join(", ")
            );
            serde_json::json!({
                "coordinator": c.addr,
                "cpu_pct_samples": cpu,
                "cpu_pct": {"min": min, "median": med, "max": max},
                "peak_rss_mib": peak,
            })
        })
        .collect()
}

/// `etcd_server_proposals_committed_total` of the member on `port`.
fn committed(port: u16) -> f64 {
    local_etcd::http_get(port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("etcd_server_proposals_committed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Writes committed per second over `window`, on the member that
/// committed most (the raft leader).
fn write_rate(metrics: &[u16], window: Duration) -> f64 {
    let before: Vec<f64> = metrics.iter().map(|p| committed(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    metrics
        .iter()
        .zip(before)
        .map(|(p, b)| (committed(*p) - b) / secs)
        .fold(0.0, f64::max)
}

/// Whether the coordinator's log says it leads now.
fn leads(log: &Path) -> bool {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    match (t.rfind(LEADING), t.rfind("no longer leading")) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    }
}

fn leading_count(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(LEADING)
        .count()
}

fn main() {
    let n: usize = env_or("SEAPORT_BENCH_AGENTS", 1000);
    let window = Duration::from_secs(env_or("SEAPORT_BENCH_WINDOW_SECS", 10));
    let runs: usize = env_or("SEAPORT_BENCH_RUNS", 3).max(1);
    let kills: usize = env_or("SEAPORT_BENCH_KILLS", 3).max(1);
    let ttl: String = env_or("SEAPORT_BENCH_LEASE_TTL", "10s".to_string());
    let slack = Duration::from_millis(env_or("SEAPORT_BENCH_HEARTBEAT_SLACK_MS", 2000));
    println!("{}", machine());
    println!("{n} agents; cpu windows {window:?} x {runs}; {kills} leader kills; lease ttl {ttl}");
    let load = LoadWatch::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // One coordinator on redb.
    {
        let root = tmp.path().join("redb");
        sim::init(&root, &[]);
        let coord = sim::serve(&root, "127.0.0.1:0", &[], None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = rt.block_on(async {
            let dir = tmp.path().join("redb-agents");
            let t =
                sim::start_agents(&root, &coord.addr, &coord.addr, &dir, (0, n), &stop_rx).await;
            wait_online(&root, &coord.addr, n, Duration::from_secs(180)).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            t
        });
        println!("redb, 1 coordinator, {n} agents:");
        let fp = footprint(
            &rt,
            std::slice::from_ref(&coord),
            &root,
            &coord.addr,
            n,
            window,
            runs,
            slack,
        );
        println!(
            "{}",
            serde_json::json!({"bench": "ha", "case": "redb", "agents": n, "coordinators": fp})
        );
        let _ = stop_tx.send(true);
        rt.block_on(async {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
        });
    }

    // Three coordinators on a three-member etcd.
    let etcd = local_etcd::LocalEtcdCluster::start(3);
    let endpoints = etcd.urls.join(",");
    let roots: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("c{i}"))).collect();
    let store = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints.as_str(),
        "--etcd-prefix",
        "/bench/",
    ];
    sim::init(&roots[0], &store);
    for root in &roots[1..] {
        std::fs::create_dir_all(root.join("coordinator")).unwrap();
        std::fs::copy(
            roots[0].join("coordinator/site.key"),
            root.join("coordinator/site.key"),
        )
        .unwrap();
        sim::init(root, &store);
    }
    let logs: Vec<PathBuf> = roots.iter().map(|r| r.with_extension("log")).collect();
    let serve_args = ["--lease-ttl", ttl.as_str()];
    let mut coords: Vec<Coordinator> = (0..3)
        .map(|i| sim::serve(&roots[i], "127.0.0.1:0", &serve_args, Some(&logs[i])))
        .collect();
    let all: Vec<String> = coords.iter().map(|c| c.addr.clone()).collect();
    let all = all.join(",");
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = rt.block_on(async {
        let dir = tmp.path().join("etcd-agents");
        let t = sim::start_agents(&roots[1], &all, &all, &dir, (0, n), &stop_rx).await;
        wait_online(&roots[1], &all, n, Duration::from_secs(180)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        t
    });
    println!("etcd, 3 coordinators, {n} agents:");
    let fp = footprint(&rt, &coords, &roots[1], &all, n, window, runs, slack);
    let rate = write_rate(&etcd.metrics, window);
    println!("  etcd: {rate:.1} writes committed per second");

    // Failover: kill the leader, time the next one taking over.
    let mut failovers = Vec::new();
    for _ in 0..kills {
        let before: Vec<usize> = logs.iter().map(|l| leading_count(l)).collect();
        let leader = (0..3)
            .find(|&i| coords[i].child.is_some() && leads(&logs[i]))
            .expect("a leader");
        let killed = Instant::now();
        coords[leader].kill();
        let (taken, online) = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(120);
            let taken = loop {
                let now: Vec<usize> = logs.iter().map(|l| leading_count(l)).collect();
                if (0..3).any(|i| i != leader && now[i] > before[i]) {
                    break killed.elapsed();
                }
                assert!(Instant::now() < deadline, "no coordinator took over");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let others: Vec<&str> = (0..3)
                .filter(|&i| i != leader)
                .map(|i| coords[i].addr.as_str())
                .collect();
            let others = others.join(",");
            wait_online(&roots[1], &others, n, Duration::from_secs(180)).await;
            (taken, killed.elapsed())
        });
        println!(
            "  leader {} killed: another leads after {:.2} s, all {n} agents online through it after {:.2} s",
            coords[leader].addr,
            taken.as_secs_f64(),
            online.as_secs_f64()
        );
        failovers.push((taken.as_secs_f64(), online.as_secs_f64()));
        // Back to three coordinators for the next kill.
        let addr = coords[leader].addr.clone();
        coords[leader] = sim::serve(&roots[leader], &addr, &serve_args, Some(&logs[leader]));
        rt.block_on(async {
            wait_online(&roots[1], &all, n, Duration::from_secs(180)).await;
            // Every agent heartbeating on schedule again before the next kill.
            tokio::time::sleep(HEARTBEAT_INTERVAL + slack).await;
            sim::assert_none_behind(&roots[1], &all, n, slack).await;
        });
    }
    let load = load.stop();
    println!("{load}");
    let (tmin, tmed, tmax) = stats(failovers.iter().map(|f| f.0).collect());
    let (omin, omed, omax) = stats(failovers.iter().map(|f| f.1).collect());
    println!(
        "  failover: leader after min/median/max {tmin:.2}/{tmed:.2}/{tmax:.2} s, all agents online after {omin:.2}/{omed:.2}/{omax:.2} s"
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "ha", "case": "etcd", "agents": n, "coordinators": fp,
            "etcd_writes_per_sec": rate,
            "lease_ttl": ttl,
            "failover_leader_secs": {"min": tmin, "median": tmed, "max": tmax},
            "failover_all_online_secs": {"min": omin, "median": omed, "max": omax},
            "failover_samples_secs": failovers
                .iter()
                .map(|f| serde_json::json!({"leader": f.0, "all_online": f.1}))
                .collect::<Vec<_>>(),
            "load": load.json(),
        })
    );
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
}
