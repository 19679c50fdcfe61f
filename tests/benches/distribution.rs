//! Benchmark: deliver one image to N = 1, 2, 4, 8 lab hosts, Seaport
//! (`seaport distribute`) beside parallel `scp` of the same files from the
//! machine side to sshd in each host (sealer's method), in one run.
//!
//! Every link is shaped to the same rate with tc tbf: each host's link in
//! both directions, and the machine's own side (the lab bridge device, which
//! carries everything the machine sends to hosts but not host-to-host
//! traffic). So the coordinator, like scp, has one link of that rate to
//! share among the hosts, as a coordinator machine on the hosts' network
//! would. Before the cases, one scp alone and two in parallel check that the
//! machine side really is one shared link.
//!
//! Per case: wall time, bytes the machine sent into the lab bridge
//! (coordinator egress; for scp, what scp sent), agents' peak RSS (VmHWM).
//! Prints min / median / max per case, one JSON line per case, and the
//! ratios against the targets in docs/benchmarks.md. Also prints the agents' idle RSS.
//!
//! `cargo bench -p seaport-lab --bench distribution`; settings by environment:
//! `SEAPORT_BENCH_MIB` (image size, default 1024), `SEAPORT_BENCH_MBIT` (link
//! rate, default 100), `SEAPORT_BENCH_REPS` (default 3), `SEAPORT_BENCH_HOSTS`
//! (default `1,2,4,8`), `SEAPORT_BENCH_SCP=0` (Seaport only, for quick
//! iterations; the ratio against scp is then not printed),
//! `SEAPORT_BENCH_SCP_REPS` (scp repetitions, default `SEAPORT_BENCH_REPS`:
//! with the machine's link shared, scp's time is N times one copy's, and
//! its runs are the long ones),
//! `SEAPORT_BENCH_TRACE=1` (print the machine's egress every second and the
//! agents' notable log lines after each Seaport run). Needs root and the lab
//! (docs/lab.md), and the lab base's openssh-server, which the benchmark
//! enables.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use seaport_lab::seaport::{self, Binaries};
use seaport_lab::{runs, Host, Lab, Shape};

const MIB: u64 = 1024 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: f64,
    egress: u64,
    peak_rss_kib: u64,
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn sh(host: &Host, script: &str) -> String {
    let out = host.sh(script).expect("run in host");
    assert!(
        out.success(),
        "{}: `{script}` failed: {}",
        host.name(),
        out.stderr
    );
    out.stdout
}

/// Fresh agent: empty blob store, restarted (so VmHWM is this run's).
fn reset_agent(host: &Host) {
    sh(
        host,
        "systemctl stop seaport-agent && rm -rf /var/lib/seaport-agent/content && systemctl start seaport-agent",
    );
}

fn agent_peak_rss_kib(host: &Host) -> u64 {
    agent_status_kib(host, "VmHWM")
}

/// A `/proc/PID/status` field of the agent, in KiB.
fn agent_status_kib(host: &Host, field: &str) -> u64 {
    let out = sh(
        host,
        &format!(
            "pid=$(systemctl show -p MainPID --value seaport-agent); grep {field} /proc/$pid/status"
        ),
    );
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_online(bins: &Binaries, root: &Path, hosts: &[&Host]) {
    let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    seaport::wait_for_nodes(bins, root, "agents online", Duration::from_secs(90), |n| {
        names
            .iter()
            .all(|h| seaport::status_of(n, h) == Some("online"))
    })
    .expect("agents online");
}

fn run_seaport(bins: &Binaries, root: &Path, bridge: &str, image: &str, hosts: &[&Host]) -> Sample {
    let _ = Command::new(&bins.seaport)
        .arg("--root")
        .arg(root)
        .args(["distribute", "cancel", image])
        .output();
    for h in hosts {
        reset_agent(h);
    }
    wait_online(bins, root, hosts);
    // Let the agents' first syncs land.
    std::thread::sleep(Duration::from_secs(2));
    let names: Vec<&str> = hosts.iter().map(|h| h.name()).collect();
    let trace = env_u64("SEAPORT_BENCH_TRACE", 0) != 0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tracer = trace.then(|| {
        let (stop, bridge) = (stop.clone(), bridge.to_string());
        std::thread::spawn(move || {
            // Machine egress per second, in Mbit/s.
            let mut last = seaport::bridge_tx_bytes(&bridge);
            let mut rates = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let now = seaport::bridge_tx_bytes(&bridge);
                rates.push((now - last) * 8 / 1_000_000);
                last = now;
            }
            eprintln!("machine egress Mbit/s per second: {rates:?}");
        })
    });
    let before = seaport::bridge_tx_bytes(bridge);
    let start = Instant::now();
    seaport::distribute(bins, root, image, &names).expect("distribute");
    seaport::wait_for_distribution(
        bins,
        root,
        "every host complete",
        Duration::from_secs(3600),
        |s| {
            names
                .iter()
                .all(|n| seaport::node_progress(s, image, n).is_some_and(|p| p["complete"] == true))
        },
    )
    .expect("distribution finished");
    let secs = start.elapsed().as_secs_f64();
    let egress = seaport::bridge_tx_bytes(bridge) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = tracer {
        let _ = t.join();
        for h in hosts {
            let log = h
                .sh("journalctl -u seaport-agent -o short-precise --no-pager | grep -E 'complete|failed|refused|unreachable|WARN' | tail -n 30")
                .map(|o| o.stdout)
                .unwrap_or_default();
            eprintln!("{}:\n{log}", h.name());
        }
    }
    let peak_rss_kib = hosts
        .iter()
        .map(|h| agent_peak_rss_kib(h))
        .max()
        .unwrap_or(0);
    Sample {
        secs,
        egress,
        peak_rss_kib,
    }
}

fn run_scp(bridge: &str, key: &Path, files: &[std::path::PathBuf], hosts: &[&Host]) -> Sample {
    for h in hosts {
        sh(h, "rm -rf /root/scp && mkdir -p /root/scp");
    }

    let before = seaport::bridge_tx_bytes(bridge);
    let start = Instant::now();
    let children: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut c = Command::new("scp");
            c.arg("-q")
                .arg("-i")
                .arg(key)
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                ])
                .args(files)
                .arg(format!("root@{}:/root/scp/", h.ip()));
            c.spawn().expect("start scp")
        })
        .collect();
    for mut c in children {
        let st = c.wait().expect("scp");
        assert!(st.success(), "scp failed: {st}");
    }
    let secs = start.elapsed().as_secs_f64();
    let egress = seaport::bridge_tx_bytes(bridge) - before;
    for h in hosts {
        sh(h, "rm -rf /root/scp");
    }
    Sample {
        secs,
        egress,
        peak_rss_kib: 0,
    }
}

/// One scp alone, then two in parallel, through the shaped machine side:
/// two should take about twice as long if the machine has one link.
fn check_machine_link(bridge: &str, key: &Path, dir: &Path, hosts: &[&Host], mbit: u64) {
    let file = dir.join("shaping.bin");
    // About 4 s at the link rate.
    let bytes = (mbit * 1_000_000 / 8 * 4).min(256 * MIB);
    let st = Command::new("head")
        .arg("-c")
        .arg(bytes.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(&file).expect("shaping file"))
        .status()
        .expect("head");
    assert!(st.success());
    let files = [file.clone()];
    let one = run_scp(bridge, key, &files, &hosts[..1]).secs;
    let two = run_scp(bridge, key, &files, &hosts[..2]).secs;
    let _ = std::fs::remove_file(&file);
    eprintln!(
        "machine link check: {} MiB by scp to 1 host {one:.1} s, to 2 hosts in parallel {two:.1} s ({:.2}x)",
        bytes / MIB,
        two / one
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "distribution_machine_link",
            "link_mbit": mbit,
            "bytes": bytes,
            "scp_one_secs": one,
            "scp_two_parallel_secs": two,
            "ratio": two / one,
        })
    );
    assert!(
        two / one > 1.6,
        "the machine side is not one shaped link: two parallel scp took {two:.1} s, one {one:.1} s"
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mib = env_u64("SEAPORT_BENCH_MIB", 1024);
    let mbit = env_u64("SEAPORT_BENCH_MBIT", 100);
    let reps = env_u64("SEAPORT_BENCH_REPS", 3).max(1) as usize;
    let with_scp = env_u64("SEAPORT_BENCH_SCP", 1) != 0;
    let scp_reps = env_u64("SEAPORT_BENCH_SCP_REPS", reps as u64).max(1) as usize;
    let ns: Vec<usize> = std::env::var("SEAPORT_BENCH_HOSTS")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let max_n = *ns.iter().max().expect("at least one host count");
    seaport_lab::lab::preflight().expect("the lab cannot run here");
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("coordinator");
    let lab = Lab::up(max_n).expect("lab up");
    let (coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll agents");

    // The image: 4 layers of random bytes (the same files scp copies).
    let image = "bench:v1";
    let ctx = tmp.path().join("ctx");
    let layer = mib * MIB / 4;
    seaport::build_random_image(&bins, &root, &ctx, image, &[layer; 4]).expect("build image");
    let files: Vec<_> = (0..4).map(|i| ctx.join(format!("layer{i}.bin"))).collect();
    let size = layer * 4;

    let key = tmp.path().join("id_ed25519");
    let pubkey = seaport_lab::cmd::ssh_client_key(&key).expect("ssh-keygen");
    for h in lab.hosts() {
        h.enable_sshd(&pubkey).expect("start sshd");
        h.shape_link(&Shape::mbit(mbit)).expect("shape link");
    }
    let bridge = lab.bridge();
    // The machine's side: what it sends into the bridge (the coordinator's
    // and scp's traffic to hosts) shares one link of the same rate.
    seaport_lab::net::shape(&bridge, &Shape::mbit(mbit), None).expect("shape the machine side");
    let all: Vec<&Host> = lab.hosts().iter().collect();
    if all.len() >= 2 {
        check_machine_link(&bridge, &key, tmp.path(), &all, mbit);
    }
    // Idle agents: enrolled, synced, nothing to fetch.
    std::thread::sleep(Duration::from_secs(5));
    let idle: Vec<u64> = all.iter().map(|h| agent_status_kib(h, "VmRSS")).collect();
    let idle_max = idle.iter().copied().max().unwrap_or(0);
    eprintln!("idle agent RSS: {idle:?} KiB");
    println!(
        "{}",
        serde_json::json!({"bench": "agent_idle_rss", "hosts": all.len(), "max_kib": idle_max, "kib": idle})
    );
    eprintln!(
        "image {} MiB, {} hosts max, links {mbit} Mbit/s, {reps} repetitions",
        size / MIB,
        max_n
    );

    let mut results = Vec::new();
    for &n in &ns {
        let hosts: Vec<&Host> = lab.hosts().iter().take(n).collect();
        let mut sp = Vec::new();
        let mut sc = Vec::new();
        for rep in 0..reps {
            let s = run_seaport(&bins, &root, &bridge, image, &hosts);
            eprintln!(
                "N={n} rep {rep}: seaport {:.1} s, egress {:.2}x, peak agent RSS {} KiB",
                s.secs,
                s.egress as f64 / size as f64,
                s.peak_rss_kib
            );
            sp.push(s);
            if !with_scp || rep >= scp_reps {
                continue;
            }
            let c = run_scp(&bridge, &key, &files, &hosts);
            eprintln!(
                "N={n} rep {rep}: scp {:.1} s, egress {:.2}x",
                c.secs,
                c.egress as f64 / size as f64
            );
            sc.push(c);
        }
        let (smin, smed, smax) = stats(&sp.iter().map(|s| s.secs).collect::<Vec<_>>());
        let scp_runs = sc.len();
        if sc.is_empty() {
            sc.push(Sample {
                secs: f64::NAN,
                ..Sample::default()
            });
        }
        let (cmin, cmed, cmax) = stats(&sc.iter().map(|s| s.secs).collect::<Vec<_>>());
        let egress = stats(&sp.iter().map(|s| s.egress as f64).collect::<Vec<_>>()).1;
        let scp_egress = stats(&sc.iter().map(|s| s.egress as f64).collect::<Vec<_>>()).1;
        let rss = sp.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0);
        println!(
            "N={n}: seaport min/median/max {smin:.1}/{smed:.1}/{smax:.1} s, scp {cmin:.1}/{cmed:.1}/{cmax:.1} s, scp/seaport {:.2}x; coordinator egress {:.2}x image (scp {:.2}x); agent peak RSS {:.1} MiB",
            cmed / smed,
            egress / size as f64,
            scp_egress / size as f64,
            rss as f64 / 1024.0
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "distribution",
                "hosts": n,
                "image_bytes": size,
                "link_mbit": mbit,
                "reps": reps,
                "scp_reps": scp_runs,
                "seaport_secs": {"min": smin, "median": smed, "max": smax},
                "scp_secs": {"min": cmin, "median": cmed, "max": cmax},
                "scp_over_seaport": cmed / smed,
                "coordinator_egress_bytes": egress as u64,
                "coordinator_egress_over_image": egress / size as f64,
                "scp_egress_bytes": scp_egress as u64,
                "agent_peak_rss_kib": rss,
            })
        );
        results.push((n, smed, egress / size as f64, cmed, rss));
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        println!(
            "targets: N={} time / N={} time = {:.2} (<= 1.5); egress at N={} = {:.2}x image (< 1.5); scp / seaport at N={} = {:.2} (>= 2); agent RSS max {:.1} MiB (< 64)",
            last.0,
            first.0,
            last.1 / first.1,
            last.0,
            last.2,
            last.0,
            last.3 / last.1,
            results.iter().map(|r| r.4).max().unwrap_or(0) as f64 / 1024.0
        );
    }
    drop(coordinator);
    lab.down().expect("lab down");
}
