//! Benchmark: `seaport run` of the lab's test cluster image on 3 lab hosts
//! (master0 and two workers), then the same `seaport run` again, which must
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

use std::time::Instant;

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
    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    let (_coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.ip().to_string()).collect();
    let workers = format!("{},{}", ips[1], ips[2]);
    let run = [
        "run",
        testimage::IMAGE_NAME,
        "-m",
        ips[0].as_str(),
        "-n",
        workers.as_str(),
    ];
    let (mut install, mut recorded, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t = Instant::now();
        bins.seaport_ok(&root, &run);
        install.push(t.elapsed().as_secs_f64());
        let status = bins.seaport_json(&root, &["status", "--json"]);
        let started = status[0]["started_at"].as_i64().unwrap();
        let finished = status[0]["finished_at"].as_i64().unwrap();
        recorded.push((finished - started) as f64);
        for _ in 0..3 {
            let t = Instant::now();
            bins.seaport_ok(&root, &run);
            noop.push(t.elapsed().as_secs_f64());
        }
        if rep + 1 < reps {
            bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
        }
        eprintln!("repetition {} of {reps} done", rep + 1);
    }
    report(
        "install on 3 hosts (CLI wall time, fetch included)",
        &install,
    );
    report(
        "install as the coordinator recorded it (started to finished, 1 s resolution)",
        &recorded,
    );
    let med = report("no-op rerun", &noop);
    println!(
        "no-op rerun median {med:.2} s against the 1 s target: {}",
        if med <= 1.0 { "met" } else { "missed" }
    );
    println!("{}", load.stop());
    bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
    lab.down().expect("take the lab down");
}
