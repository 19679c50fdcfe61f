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

mod sim;

use std::time::Duration;

use tokio::sync::watch;

use sim::{cpu_pct, env_or, online, proc_status_kib, stats, wait_online};

const TARGET_CPU_PCT: f64 = 25.0;
const TARGET_RSS_MIB: f64 = 300.0;

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
    let root = tmp.path().join("root");
    sim::init(&root, &[]);
    let log = std::env::var_os("SEAPORT_BENCH_COORDINATOR_LOG").map(std::path::PathBuf::from);
    let coord = sim::serve(&root, "127.0.0.1:0", &[], log.as_deref());
    let pid = coord.pid();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut enrolled = 0usize;

    println!(
        "coordinator pid {pid} at {}; window {window:?} x {runs}",
        coord.addr
    );
    for &n in &counts {
        rt.block_on(async {
            tasks.extend(
                sim::start_agents(
                    &root,
                    &coord.addr,
                    &coord.addr,
                    tmp.path(),
                    (enrolled, n),
                    &stop_rx,
                )
                .await,
            );
            enrolled = enrolled.max(n);
            wait_online(&root, &coord.addr, n, Duration::from_secs(120)).await;
            // Let connection set-up settle before measuring steady state.
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        let cpu = cpu_pct(pid, window, runs);
        let up = rt.block_on(online(&root, &coord.addr));
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
