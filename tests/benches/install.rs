//! Benchmark: `seaport run` of the lab's test cluster image on 3 lab hosts
//! (master0 and two workers) and on 5 (three masters, joining one at a
//! time, and two workers), then the same `seaport run` again, which must
//! change nothing (report the install; target: a no-op re-apply <= 1 s).
//!
//! Each repetition installs on clean hosts (the previous install is deleted
//! with `--prune`): wall time of the install as the CLI sees it (layers to
//! every host included) and as the coordinator recorded it; then 3 no-op
//! reruns. Prints the machine, the load average during the run, every
//! sample, min / median / max and one JSON line per case.
//!
//! `cargo bench -p seaport-lab --bench install`; `SEAPORT_BENCH_REPS`
//! (default 3). Needs root and the lab (docs/lab.md) and Debian's
//! containerd, runc and docker-registry (the test image copies them).

use std::path::Path;
use std::time::Instant;

use seaport_lab::seaport::Binaries;
use seaport_lab::testimage;
use seaport_lab::{runs, Lab};
use seaport_shared::bench;

fn report(case: &str, v: &[f64]) -> f64 {
    let st = bench::stats(v);
    let samples: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    println!(
        "{case}: {} s; min/median/max {:.2}/{:.2}/{:.2} s over {} runs",
        samples.join(", "),
        st.min,
        st.median,
        st.max,
        v.len()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "install", "case": case, "samples": v, "secs": {"min": st.min, "median": st.median, "max": st.max}, "runs": v.len()})
    );
    st.median
}

/// `reps` installs on clean hosts and 3 no-op reruns after each; returns
/// the no-op reruns' median.
fn measure(bins: &Binaries, root: &Path, run: &[&str], label: &str, reps: usize) -> f64 {
    let (mut install, mut recorded, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t = Instant::now();
        bins.seaport_ok(root, run);
        install.push(t.elapsed().as_secs_f64());
        let status = bins.seaport_json(root, &["status", "--json"]);
        let started = status[0]["started_at"].as_i64().unwrap();
        let finished = status[0]["finished_at"].as_i64().unwrap();
        recorded.push((finished - started) as f64);
        for _ in 0..3 {
            let t = Instant::now();
            bins.seaport_ok(root, run);
            noop.push(t.elapsed().as_secs_f64());
        }
        if rep + 1 < reps {
            bins.seaport_ok(root, &["delete", "--all", "--prune", "--yes"]);
        }
        eprintln!("{label}: repetition {} of {reps} done", rep + 1);
    }
    report(
        &format!("install on {label} (CLI wall time, fetch included)"),
        &install,
    );
    report(
        &format!(
            "install on {label} as the coordinator recorded it (started to finished, 1 s resolution)"
        ),
        &recorded,
    );
    report(&format!("no-op rerun on {label}"), &noop)
}

fn main() {
    let reps: usize = std::env::var("SEAPORT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("{}", bench::machine());
    let testimage::Prepared {
        bins,
        tmp: _tmp,
        root,
        ..
    } = testimage::prepare();
    let load = bench::LoadWatch::start();
    let lab = Lab::up(5).expect("bring up a lab of 5 hosts");
    let (_coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.ip().to_string()).collect();
    let mut noop_medians = Vec::new();
    for (label, masters, workers) in [
        (
            "3 hosts (1 master, 2 workers)",
            ips[0].clone(),
            ips[1..3].join(","),
        ),
        (
            "5 hosts (3 masters, 2 workers)",
            ips[..3].join(","),
            ips[3..].join(","),
        ),
    ] {
        let run = [
            "run",
            testimage::IMAGE_NAME,
            "-m",
            masters.as_str(),
            "-n",
            workers.as_str(),
        ];
        noop_medians.push(measure(&bins, &root, &run, label, reps));
        bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
    }
    for med in noop_medians {
        println!(
            "no-op rerun median {med:.2} s against the 1 s target: {}",
            if med <= 1.0 { "met" } else { "missed" }
        );
    }
    println!("{}", load.stop());
    lab.down().expect("take the lab down");
}
