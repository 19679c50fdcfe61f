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
//! Per run: wall time, bytes the machine sent into the lab bridge
//! (coordinator egress; for scp, what scp sent), agents' peak RSS (VmHWM),
//! and the load average while it ran. Prints every sample, min / median /
//! max per case, one JSON line per case, the N = max / N = min ratio with
//! every run it rests on, and the figures against the targets in
//! docs/benchmarks.md. Also prints the agents' idle RSS.
//!
//! With the machine's link shared, scp's time is N times one copy's, so its
//! runs are the long ones: scp copies a smaller image of the same shape
//! (`SEAPORT_BENCH_SCP_MIB`, default 128, 4 files of random bytes) and its
//! times are scaled to the image's size. That its time scales is checked in
//! the same run: at the smallest N, one scp of the full image beside the
//! small ones (`SEAPORT_BENCH_SCP_FULL=0` leaves it out), both printed.
//!
//! `cargo bench -p seaport-lab --bench distribution`; settings by environment:
//! `SEAPORT_BENCH_MIB` (image size, default 1024), `SEAPORT_BENCH_MBIT` (link
//! rate, default 100), `SEAPORT_BENCH_REPS` (default 3), `SEAPORT_BENCH_HOSTS`
//! (default `1,2,4,8`), `SEAPORT_BENCH_SCP=0` (Seaport only, for quick
//! iterations; the ratio against scp is then not printed),
//! `SEAPORT_BENCH_SCP_REPS` (scp repetitions, default `SEAPORT_BENCH_REPS`),
//! `SEAPORT_BENCH_SCP_MIB`, `SEAPORT_BENCH_SCP_FULL` (above),
//! `SEAPORT_BENCH_TRACE=1` (print the machine's egress every second and the
//! agents' notable log lines after each Seaport run). Needs root and the lab
//! (docs/lab.md), and the lab base's openssh-server, which the benchmark
//! enables.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use seaport_lab::seaport::{self, Binaries};
use seaport_lab::{runs, Host, Lab, Shape};
use seaport_shared::bench::{machine, stats, Load, LoadWatch};

const MIB: u64 = 1024 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    egress: u64,
    peak_rss_kib: u64,
    load: Load,
}

impl Sample {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "secs": self.secs,
            "egress_bytes": self.egress,
            "peak_rss_kib": self.peak_rss_kib,
            "load": self.load.json(),
        })
    }
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
    let load = LoadWatch::start();
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
    let load = load.stop();
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
        load,
    }
}

fn run_scp(bridge: &str, key: &Path, files: &[std::path::PathBuf], hosts: &[&Host]) -> Sample {
    for h in hosts {
        sh(h, "rm -rf /root/scp && mkdir -p /root/scp");
    }

    let load = LoadWatch::start();
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
    let load = load.stop();
    for h in hosts {
        sh(h, "rm -rf /root/scp");
    }
    Sample {
        secs,
        egress,
        peak_rss_kib: 0,
        load,
    }
}

/// One scp alone, then two in parallel, through the shaped machine side:
/// two should take about twice as long if the machine has one link.
fn check_machine_link(bridge: &str, key: &Path, dir: &Path, hosts: &[&Host], mbit: u64) {
    let file = dir.join("shaping.bin");
    // About 4 s at the link rate.
    let bytes = (mbit * 1_000_000 / 8 * 4).min(256 * MIB);
    random_file(&file, bytes);
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

fn random_file(path: &Path, bytes: u64) {
    let st = Command::new("head")
        .arg("-c")
        .arg(bytes.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(path).expect("create a random file"))
        .status()
        .expect("head");
    assert!(st.success(), "head -c {bytes} /dev/urandom failed");
}

fn secs_of(v: &[Sample]) -> Vec<f64> {
    v.iter().map(|s| s.secs).collect()
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
    let scp_mib = env_u64("SEAPORT_BENCH_SCP_MIB", 128).clamp(4, mib);
    let scp_full = env_u64("SEAPORT_BENCH_SCP_FULL", 1) != 0 && scp_mib < mib;
    let ns: Vec<usize> = std::env::var("SEAPORT_BENCH_HOSTS")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let max_n = *ns.iter().max().expect("at least one host count");
    println!("{}", machine());
    let whole = LoadWatch::start();
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
    // scp's image: the same shape, smaller; its times are scaled by `scale`.
    let scp_dir = tmp.path().join("scp");
    std::fs::create_dir_all(&scp_dir).unwrap();
    let scp_layer = scp_mib * MIB / 4;
    let scp_files: Vec<_> = (0..4)
        .map(|i| {
            let f = scp_dir.join(format!("layer{i}.bin"));
            random_file(&f, scp_layer);
            f
        })
        .collect();
    let scp_size = scp_layer * 4;
    let scale = size as f64 / scp_size as f64;

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
    println!(
        "image {} MiB (scp: {} MiB, times scaled by {scale:.0}), {} hosts max, links {mbit} Mbit/s, {reps} repetitions (scp {scp_reps})",
        size / MIB,
        scp_size / MIB,
        max_n
    );

    struct Case {
        n: usize,
        seaport: Vec<Sample>,
        scp: Vec<Sample>,
    }
    let mut results: Vec<Case> = Vec::new();
    for (k, &n) in ns.iter().enumerate() {
        let hosts: Vec<&Host> = lab.hosts().iter().take(n).collect();
        let mut sp = Vec::new();
        let mut sc = Vec::new();
        let mut full = None;
        for rep in 0..reps {
            let s = run_seaport(&bins, &root, &bridge, image, &hosts);
            println!(
                "N={n} run {rep}: seaport {:.1} s, egress {:.3}x, peak agent RSS {:.1} MiB; {}",
                s.secs,
                s.egress as f64 / size as f64,
                s.peak_rss_kib as f64 / 1024.0,
                s.load
            );
            sp.push(s);
            if !with_scp || rep >= scp_reps {
                continue;
            }
            let c = run_scp(&bridge, &key, &scp_files, &hosts);
            println!(
                "N={n} run {rep}: scp of {} MiB {:.1} s (scaled to {} MiB: {:.1} s), egress {:.3}x; {}",
                scp_size / MIB,
                c.secs,
                size / MIB,
                c.secs * scale,
                c.egress as f64 / scp_size as f64,
                c.load
            );
            sc.push(c);
            if k == 0 && rep == 0 && scp_full {
                let f = run_scp(&bridge, &key, &files, &hosts);
                println!(
                    "N={n}: scp of the full {} MiB {:.1} s, egress {:.3}x; {}",
                    size / MIB,
                    f.secs,
                    f.egress as f64 / size as f64,
                    f.load
                );
                full = Some(f);
            }
        }
        let st = stats(&secs_of(&sp));
        let scp_scaled: Vec<f64> = sc.iter().map(|c| c.secs * scale).collect();
        let ct = (!scp_scaled.is_empty()).then(|| stats(&scp_scaled));
        let egress = stats(&sp.iter().map(|s| s.egress as f64).collect::<Vec<_>>()).median;
        let scp_egress = (!sc.is_empty())
            .then(|| stats(&sc.iter().map(|s| s.egress as f64).collect::<Vec<_>>()).median);
        let rss = sp.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0);
        println!(
            "N={n}: seaport runs {:?} s, min/median/max {:.1}/{:.1}/{:.1} s; coordinator egress {:.3}x image (median); agent peak RSS {:.1} MiB (max)",
            secs_of(&sp).iter().map(|s| (s * 10.0).round() / 10.0).collect::<Vec<_>>(),
            st.min,
            st.median,
            st.max,
            egress / size as f64,
            rss as f64 / 1024.0
        );
        if let (Some(ct), Some(scp_egress)) = (ct, scp_egress) {
            println!(
                "N={n}: scp runs (scaled) {:?} s, min/median/max {:.1}/{:.1}/{:.1} s, egress {:.3}x; scp / seaport (medians) {:.2}x",
                scp_scaled.iter().map(|s| (s * 10.0).round() / 10.0).collect::<Vec<_>>(),
                ct.min,
                ct.median,
                ct.max,
                scp_egress / scp_size as f64,
                ct.median / st.median
            );
        }
        if let Some(f) = &full {
            let small = stats(&secs_of(&sc)).median;
            println!(
                "N={n}: scp scaling check: the full {} MiB took {:.1} s, {:.2}x the {} MiB median {:.1} s (size ratio {scale:.2}); scaled small median {:.1} s is {:.3} of the full run",
                size / MIB,
                f.secs,
                f.secs / small,
                scp_size / MIB,
                small,
                small * scale,
                small * scale / f.secs
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "bench": "distribution",
                "hosts": n,
                "image_bytes": size,
                "link_mbit": mbit,
                "seaport": {
                    "samples": sp.iter().map(Sample::json).collect::<Vec<_>>(),
                    "secs": {"min": st.min, "median": st.median, "max": st.max},
                    "egress_over_image": egress / size as f64,
                    "peak_rss_kib": rss,
                },
                "scp": {
                    "image_bytes": scp_size,
                    "scale": scale,
                    "samples": sc.iter().map(Sample::json).collect::<Vec<_>>(),
                    "scaled_secs": ct.map(|c| serde_json::json!({"min": c.min, "median": c.median, "max": c.max})),
                    "egress_over_image": scp_egress.map(|e| e / scp_size as f64),
                    "full_image_sample": full.as_ref().map(Sample::json),
                },
                "scp_over_seaport": ct.map(|c| c.median / st.median),
            })
        );
        results.push(Case {
            n,
            seaport: sp,
            scp: sc,
        });
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        let a = stats(&secs_of(&first.seaport));
        let b = stats(&secs_of(&last.seaport));
        let per_run: Vec<String> = last
            .seaport
            .iter()
            .map(|s| format!("{:.3}", s.secs / a.median))
            .collect();
        println!(
            "N={} / N={} (medians) = {:.1} / {:.1} = {:.3}; every N={} run over the N={} median: [{}]; worst pair (slowest N={} / fastest N={}) {:.3}; N={} runs {:?} s, N={} runs {:?} s",
            last.n,
            first.n,
            b.median,
            a.median,
            b.median / a.median,
            last.n,
            first.n,
            per_run.join(", "),
            last.n,
            first.n,
            b.max / a.min,
            first.n,
            secs_of(&first.seaport),
            last.n,
            secs_of(&last.seaport),
        );
        let egress = stats(
            &last
                .seaport
                .iter()
                .map(|s| s.egress as f64 / size as f64)
                .collect::<Vec<_>>(),
        );
        let rss = results
            .iter()
            .flat_map(|c| c.seaport.iter().map(|s| s.peak_rss_kib))
            .max()
            .unwrap_or(0) as f64
            / 1024.0;
        let speedup = (!last.scp.is_empty()).then(|| {
            stats(&last.scp.iter().map(|c| c.secs * scale).collect::<Vec<_>>()).median / b.median
        });
        println!(
            "targets: N={} time / N={} time = {:.3} (<= 1.3); egress at N={} = {:.3}x image (median, max {:.3}; <= 1.15); scp / seaport at N={} = {} (>= 4); agent peak RSS max {rss:.1} MiB (< 64)",
            last.n,
            first.n,
            b.median / a.median,
            last.n,
            egress.median,
            egress.max,
            last.n,
            speedup.map_or("not measured".to_string(), |s| format!("{s:.2}")),
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "distribution_targets",
                "hosts": [first.n, last.n],
                "time_ratio_medians": b.median / a.median,
                "time_ratio_per_run": last.seaport.iter().map(|s| s.secs / a.median).collect::<Vec<_>>(),
                "egress_over_image": {"min": egress.min, "median": egress.median, "max": egress.max},
                "scp_over_seaport": speedup,
                "agent_peak_rss_mib": rss,
            })
        );
    }
    println!("whole run: {}", whole.stop());
    drop(coordinator);
    lab.down().expect("lab down");
}
