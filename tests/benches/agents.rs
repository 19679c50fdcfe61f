//! Coordinator footprint with N agents running the real agent service.
//!
//! `cargo bench -p seaport-lab --bench agents`
//!
//! Starts `seaport coordinator serve` as a child process on loopback and
//! enrolls N simulated agents in this process, each with its own key,
//! certificate, state directory and QUIC endpoints, through the agent
//! library's `join` (what `seaport-agent join` calls). Each then runs
//! `seaport_agent::service::run`, what `seaport-agent run` calls: the
//! session (heartbeats every 3 s, certificate renewal), the distribution
//! service (a content sync with the coordinator every 3 s while idle, held
//! open by the coordinator up to 2.5 s) and the task server. Only the host
//! facts are made up (no sysinfo scan per heartbeat) and the peer server is
//! off (every agent shares one address). Node certificates are short-lived
//! (`SEAPORT_BENCH_CERT_TTL`, default 5 min: each agent renews about every
//! 3 min, where the default 30 days would never renew during a run).
//!
//! Once all N are online it samples the coordinator's CPU time over several
//! windows and its peak RSS (VmHWM, enrollment included), and prints
//! min / median / max of the CPU (% of one core), the peak RSS, the syncs
//! and renewals seen, this process's own CPU (the agents' side), the
//! machine and the load average, and one JSON line per N.
//!
//! The run FAILS (non-zero exit, naming the agents) if any agent fell
//! behind its heartbeat schedule (a gap between two heartbeats longer than
//! the 3 s interval plus `SEAPORT_BENCH_HEARTBEAT_SLACK_MS`, default 1000,
//! or none for that long at a check), is not online at the coordinator,
//! is past its renewal time without a renewed certificate, or logged a
//! warning (a lost session, a failed sync or renewal) during the measured
//! windows; or if the syncs fell below half the idle rate. Sessions start
//! in batches of 32 (the coordinator takes at most 64 handshakes at once
//! from one source address, and every simulated agent has the same one).
//! Targets (docs/benchmarks.md): N = 1000 under 25 % of one core and
//! 300 MiB; N = 5000 reported.
//!
//! Environment: `SEAPORT_BENCH_AGENTS` (default `100,1000,5000`),
//! `SEAPORT_BENCH_WINDOW_SECS` (default 15), `SEAPORT_BENCH_RUNS` (windows
//! per N, default 3), `SEAPORT_BENCH_CERT_TTL`,
//! `SEAPORT_BENCH_HEARTBEAT_SLACK_MS`, `SEAPORT_BENCH_COORDINATOR_LOG`
//! (file for the coordinator's log).

mod sim;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_agent::distribution::counters;
use seaport_agent::service;
use seaport_agent::{FactsSource, Identity};
use seaport_shared::bench;
use seaport_shared::wire::{HostFacts, NodeInfo, NodeStatus, HEARTBEAT_INTERVAL, OFFLINE_AFTER};
use tokio::sync::watch;

const TARGET_CPU_PCT: f64 = 25.0;
const TARGET_RSS_MIB: f64 = 300.0;
/// The agent asks again this long after a renewal request went unanswered
/// (agent/src/session.rs); a renewal later than its time plus this and a
/// heartbeat's slack has fallen behind.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// The idle sync period of the distribution service (agent/src/distribution/fetch.rs).
const SYNC_IDLE_EVERY: Duration = Duration::from_secs(3);
/// Agents whose sessions start together.
const START_BATCH: usize = 32;

/// Waits (up to 20 s) until each of `agents` has sent a heartbeat.
fn wait_first_heartbeats(agents: &[Agent]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && agents
            .iter()
            .any(|a| a.beats.count.load(Ordering::Relaxed) == 0)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises this process's open-file limit (inherited by the coordinator):
/// every agent holds two UDP sockets and its store's files.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = 1 << 20;
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

fn now_ms(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// One agent's heartbeats as its session sends them: the session asks its
/// facts source once per heartbeat, just before writing it.
#[derive(Default)]
struct Beats {
    /// Milliseconds since the bench started of the latest heartbeat (0: none).
    last_ms: AtomicU64,
    /// The longest gap between two heartbeats seen, in milliseconds.
    max_gap_ms: AtomicU64,
    count: AtomicU64,
}

/// Fixed facts that record when each heartbeat is made.
struct Tracked {
    facts: HostFacts,
    beats: Arc<Beats>,
    base: Instant,
}

impl FactsSource for Tracked {
    fn facts(&mut self) -> HostFacts {
        let now = now_ms(self.base).max(1);
        let last = self.beats.last_ms.swap(now, Ordering::Relaxed);
        if last != 0 {
            self.beats
                .max_gap_ms
                .fetch_max(now.saturating_sub(last), Ordering::Relaxed);
        }
        self.beats.count.fetch_add(1, Ordering::Relaxed);
        self.facts.clone()
    }
}

/// Counts warnings and errors the agents log (a lost session, a failed
/// renewal, a store error) and prints the first few.
struct Problems {
    count: Arc<AtomicU64>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Problems {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let n = self.count.fetch_add(1, Ordering::Relaxed);
            if n < 20 || n % 200 == 0 {
                let mut text = String::new();
                event.record(&mut Text(&mut text));
                eprintln!(
                    "agent {} in {}: {text}",
                    event.metadata().level(),
                    event.metadata().target()
                );
            }
        }
    }
}

struct Text<'a>(&'a mut String);

impl tracing::field::Visit for Text<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

struct Agent {
    name: String,
    state_dir: PathBuf,
    node_id: String,
    beats: Arc<Beats>,
    /// Expiry of the certificate last seen, and how often it changed.
    cert_not_after: i64,
    renewals: u64,
}

/// What a check of every agent found wrong.
#[derive(Default)]
struct Behind {
    late: Vec<String>,
    offline: Vec<String>,
    renewal: Vec<String>,
}

impl Behind {
    fn is_empty(&self) -> bool {
        self.late.is_empty() && self.offline.is_empty() && self.renewal.is_empty()
    }

    fn describe(&self) -> String {
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(20).map(String::as_str).collect();
            format!(
                "{} ({}{})",
                v.len(),
                shown.join(", "),
                if v.len() > 20 { ", ..." } else { "" }
            )
        };
        format!(
            "behind their heartbeat schedule: {}; not online at the coordinator: {}; past their renewal time: {}",
            list(&self.late),
            list(&self.offline),
            list(&self.renewal)
        )
    }
}

/// Checks every agent: heartbeats on schedule, online at the coordinator
/// with a recent heartbeat, certificate renewed when due. Counts renewals.
fn check(agents: &mut [Agent], nodes: &[NodeInfo], base: Instant, slack: Duration) -> Behind {
    let mut behind = Behind::default();
    let limit = (HEARTBEAT_INTERVAL + slack).as_millis() as u64;
    let now = now_ms(base);
    let unix_now = time::OffsetDateTime::now_utc().unix_timestamp();
    let by_id: std::collections::HashMap<&str, &NodeInfo> =
        nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    for a in agents.iter_mut() {
        let last = a.beats.last_ms.load(Ordering::Relaxed);
        let gap = a.beats.max_gap_ms.load(Ordering::Relaxed);
        if last == 0 || gap > limit || now.saturating_sub(last) > limit {
            behind.late.push(format!(
                "{} (longest gap {gap} ms, last {} ms ago)",
                a.name,
                now.saturating_sub(last)
            ));
        }
        let online = by_id.get(a.node_id.as_str()).is_some_and(|n| {
            n.status == NodeStatus::Online
                && n.last_seen
                    .is_some_and(|s| unix_now - s <= OFFLINE_AFTER.as_secs() as i64)
        });
        if !online {
            behind.offline.push(a.name.clone());
        }
        match Identity::load(&a.state_dir) {
            Ok(id) => {
                if id.cert.not_after != a.cert_not_after {
                    a.renewals += 1;
                    a.cert_not_after = id.cert.not_after;
                }
                let overdue = unix_now - id.cert.renew_at();
                if overdue > (RENEW_RETRY + HEARTBEAT_INTERVAL + slack).as_secs() as i64 {
                    behind
                        .renewal
                        .push(format!("{} ({overdue} s overdue)", a.name));
                }
            }
            Err(e) => behind.renewal.push(format!("{} ({e})", a.name)),
        }
    }
    behind
}

fn main() {
    let counts: Vec<usize> = std::env::var("SEAPORT_BENCH_AGENTS")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(sim::env_or("SEAPORT_BENCH_WINDOW_SECS", 15));
    let runs: usize = sim::env_or("SEAPORT_BENCH_RUNS", 3).max(1);
    let cert_ttl: String = sim::env_or("SEAPORT_BENCH_CERT_TTL", "5m".to_string());
    let slack = Duration::from_millis(sim::env_or("SEAPORT_BENCH_HEARTBEAT_SLACK_MS", 1000));
    let problems = Arc::new(AtomicU64::new(0));
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Problems {
            count: problems.clone(),
        });
        tracing::subscriber::set_global_default(subscriber).expect("tracing subscriber");
    }
    let nofile = raise_nofile();
    println!("{}", bench::machine());
    let load = bench::LoadWatch::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    sim::init(&root, &[]);
    let log = std::env::var_os("SEAPORT_BENCH_COORDINATOR_LOG").map(PathBuf::from);
    let coord = sim::serve(
        &root,
        "127.0.0.1:0",
        &["--node-cert-ttl", &cert_ttl],
        log.as_deref(),
    );
    let pid = coord.pid();
    let own = std::process::id();
    let base = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    let mut failures = Vec::new();

    println!(
        "coordinator pid {pid} at {}; node certificates of {cert_ttl}; window {window:?} x {runs}; heartbeat slack {slack:?}; open files up to {nofile}",
        coord.addr
    );
    for &n in &counts {
        let enrolled = agents.len();
        let want = n.saturating_sub(enrolled);
        if want > 0 {
            let started = Instant::now();
            let joined = rt.block_on(sim::join_agents(
                &root,
                &coord.addr,
                &coord.addr,
                tmp.path(),
                (enrolled, n),
            ));
            let enroll_secs = started.elapsed().as_secs_f64();
            for (opts, node_id) in joined {
                let beats = Arc::new(Beats::default());
                let facts = Tracked {
                    facts: HostFacts {
                        hostname: opts.host.hostname.clone(),
                        os: "Debian GNU/Linux 12 (bookworm)".into(),
                        kernel: "6.1.0".into(),
                        arch: "x86_64".into(),
                        ips: vec!["127.0.0.1".into()],
                        agent_version: seaport_agent::facts::AGENT_VERSION.into(),
                        cpus: 2,
                        memory_total: 4 << 30,
                        ..Default::default()
                    },
                    beats: beats.clone(),
                    base,
                };
                let cert_not_after = Identity::load(&opts.state_dir)
                    .expect("identity after join")
                    .cert
                    .not_after;
                let rx = stop_rx.clone();
                tasks.push(rt.spawn(service::run(sim::run_settings(&opts), facts, rx)));
                // Sessions start in batches: the coordinator takes at most
                // 64 handshakes at once from one source address, and every
                // simulated agent has the same one.
                if agents.len() % START_BATCH == START_BATCH - 1 {
                    wait_first_heartbeats(&agents[agents.len() + 1 - START_BATCH..]);
                }
                agents.push(Agent {
                    name: opts.host.hostname.clone(),
                    state_dir: opts.state_dir,
                    node_id,
                    beats,
                    cert_not_after,
                    renewals: 0,
                });
            }
            println!("enrolled {want} agents in {enroll_secs:.1} s");
        }
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let up = sim::nodes(&root, &coord.addr)
                    .await
                    .iter()
                    .filter(|n| n.status == NodeStatus::Online)
                    .count();
                if up >= n {
                    break;
                }
                assert!(Instant::now() < deadline, "only {up} of {n} agents online");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Let connection set-up settle before measuring steady state.
            tokio::time::sleep(HEARTBEAT_INTERVAL * 2).await;
        });
        // Schedules are judged from here on: enrollment is not steady state.
        for a in &agents {
            a.beats.max_gap_ms.store(0, Ordering::Relaxed);
        }
        let renewals_before: u64 = agents.iter().map(|a| a.renewals).sum();
        let problems_before = problems.load(Ordering::Relaxed);
        let mut cpu = Vec::new();
        let mut own_cpu = Vec::new();
        let mut syncs = Vec::new();
        let mut beats = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let (c0, o0) = (bench::process_cpu(pid), bench::process_cpu(own));
            let s0 = counters::syncs();
            let b0: u64 = agents
                .iter()
                .map(|a| a.beats.count.load(Ordering::Relaxed))
                .sum();
            std::thread::sleep(window);
            let (c1, o1) = (bench::process_cpu(pid), bench::process_cpu(own));
            let s1 = counters::syncs();
            let b1: u64 = agents
                .iter()
                .map(|a| a.beats.count.load(Ordering::Relaxed))
                .sum();
            let secs = t0.elapsed().as_secs_f64();
            cpu.push(c1.saturating_sub(c0).as_secs_f64() / secs * 100.0);
            own_cpu.push(o1.saturating_sub(o0).as_secs_f64() / secs * 100.0);
            syncs.push((s1 - s0) as f64 / secs);
            beats.push((b1 - b0) as f64 / secs);
        }
        let listed = rt.block_on(sim::nodes(&root, &coord.addr));
        let behind = check(&mut agents, &listed, base, slack);
        let renewals = agents.iter().map(|a| a.renewals).sum::<u64>() - renewals_before;
        let renewed_agents = agents.iter().filter(|a| a.renewals > 0).count();
        let up = listed
            .iter()
            .filter(|n| n.status == NodeStatus::Online)
            .count();
        let peak_mib = sim::proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
        let rss_mib = sim::proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
        let agents_rss_mib = sim::proc_status_kib(std::process::id(), "VmRSS:") as f64 / 1024.0;
        let st = bench::stats(&cpu);
        let own = bench::stats(&own_cpu);
        let sync_rate = bench::stats(&syncs);
        let beat_rate = bench::stats(&beats);
        let max_gap = agents
            .iter()
            .map(|a| a.beats.max_gap_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let problems_now = problems.load(Ordering::Relaxed) - problems_before;
        let samples: Vec<String> = cpu.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "agents={n:5} online={up:5}  coordinator cpu % of one core: {} (min/median/max {:.1}/{:.1}/{:.1}; target < {TARGET_CPU_PCT}); rss {rss_mib:.1} MiB, peak {peak_mib:.1} MiB (target < {TARGET_RSS_MIB})",
            samples.join(", "),
            st.min,
            st.median,
            st.max
        );
        println!(
            "            heartbeats/s {:.0} (expected {:.0}), syncs/s {:.0} (idle rate {:.0}), longest heartbeat gap {max_gap} ms, renewals during the windows {renewals} ({renewed_agents} agents renewed since enrollment), warnings logged by agents {problems_now} (before the windows {problems_before}); agents' process cpu % {:.1} (median), rss {agents_rss_mib:.0} MiB",
            beat_rate.median,
            n as f64 / HEARTBEAT_INTERVAL.as_secs_f64(),
            sync_rate.median,
            n as f64 / SYNC_IDLE_EVERY.as_secs_f64(),
            own.median
        );
        let mut failed = Vec::new();
        if !behind.is_empty() {
            failed.push(behind.describe());
        }
        if sync_rate.min < n as f64 / SYNC_IDLE_EVERY.as_secs_f64() / 2.0 {
            failed.push(format!(
                "content syncs fell behind: {:.0}/s at the lowest, idle rate {:.0}/s",
                sync_rate.min,
                n as f64 / SYNC_IDLE_EVERY.as_secs_f64()
            ));
        }
        if problems_now > 0 {
            failed.push(format!(
                "agents logged {problems_now} warnings or errors during the windows"
            ));
        }
        println!(
            "{}",
            serde_json::json!({
                "bench": "coordinator_agents",
                "agents": n,
                "online": up,
                "window_secs": window.as_secs(),
                "runs": runs,
                "cpu_pct_samples": cpu,
                "cpu_pct": {"min": st.min, "median": st.median, "max": st.max},
                "rss_mib": rss_mib,
                "peak_rss_mib": peak_mib,
                "heartbeats_per_sec": beat_rate.median,
                "syncs_per_sec": sync_rate.median,
                "renewals": renewals,
                "max_heartbeat_gap_ms": max_gap,
                "agent_warnings": problems_now,
                "agent_warnings_before_windows": problems_before,
                "agents_process_cpu_pct": own.median,
                "cert_ttl": cert_ttl,
                "target_cpu_pct": TARGET_CPU_PCT,
                "target_rss_mib": TARGET_RSS_MIB,
                "meets_target": st.max < TARGET_CPU_PCT && peak_mib < TARGET_RSS_MIB,
                "failed": failed,
            })
        );
        if !failed.is_empty() {
            for f in &failed {
                eprintln!("FAILED at N = {n}: {f}");
            }
            failures.push(n);
            break;
        }
    }
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    drop(coord);
    println!("{}", load.stop());
    if !failures.is_empty() {
        eprintln!("the agents benchmark FAILED at N = {failures:?}");
        std::process::exit(1);
    }
}
