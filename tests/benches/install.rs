//! Benchmark: `seaport run` of the lab's test cluster image on 3 lab hosts
//! (master0 and two workers) and on 5 (three masters, joining one at a
//! time, and two workers), then the same `seaport run` again, which must
//! change nothing (a no-op re-apply <= 3 s).
//!
//! Each repetition installs on clean hosts (the previous install is deleted
//! with `--prune`): wall time of the install as the CLI sees it (layers to
//! every host included) and as the coordinator recorded it; then 3 no-op
//! reruns. Prints min / median / max and one JSON line per case.
//!
//! `cargo bench -p seaport-lab --bench install`; `SEAPORT_BENCH_REPS`
//! (default 3). Needs root and the lab (docs/lab.md) and Debian's
//! containerd, runc and docker-registry (the test image copies them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use seaport_lab::seaport::Binaries;
use seaport_lab::testimage;
use seaport_lab::{runs, Lab};

fn seaport(bins: &Binaries, root: &Path, args: &[&str]) -> String {
    let out = Command::new(&bins.seaport)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run seaport");
    assert!(
        out.status.success(),
        "seaport {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn report(case: &str, v: &[f64]) -> f64 {
    let (min, med, max) = stats(v);
    println!(
        "{case}: min/median/max {min:.2}/{med:.2}/{max:.2} s over {} runs",
        v.len()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "install", "case": case, "secs": {"min": min, "median": med, "max": max}, "runs": v.len()})
    );
    med
}

/// `reps` installs on clean hosts and 3 no-op reruns after each; returns
/// the no-op reruns' median.
fn measure(bins: &Binaries, root: &Path, run: &[&str], label: &str, reps: usize) -> f64 {
    let (mut install, mut recorded, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t = Instant::now();
        seaport(bins, root, run);
        install.push(t.elapsed().as_secs_f64());
        let status: serde_json::Value =
            serde_json::from_str(&seaport(bins, root, &["status", "--json"])).unwrap();
        let started = status[0]["started_at"].as_i64().unwrap();
        let finished = status[0]["finished_at"].as_i64().unwrap();
        recorded.push((finished - started) as f64);
        for _ in 0..3 {
            let t = Instant::now();
            seaport(bins, root, run);
            noop.push(t.elapsed().as_secs_f64());
        }
        if rep + 1 < reps {
            seaport(bins, root, &["delete", "--all", "--prune", "--yes"]);
        }
        eprintln!("{label}: repetition {} of {reps} done", rep + 1);
    }
    report(
        &format!("install on {label} (CLI wall time, fetch included)"),
        &install,
    );
    report(
        &format!("install on {label} as the coordinator recorded it (started to finished, 1 s resolution)"),
        &recorded,
    );
    report(&format!("no-op rerun on {label}"), &noop)
}

fn main() {
    let reps: usize = std::env::var("SEAPORT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bins = Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let tmp = tempfile::tempdir().unwrap();
    testimage::build_test_image(tmp.path(), &bins.seaport).expect("build the test image");
    let root = tmp.path().join("seaport-root");
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
        seaport(&bins, &root, &["delete", "--all", "--prune", "--yes"]);
    }
    for med in noop_medians {
        println!(
            "no-op rerun median {med:.2} s against the 3 s target: {}",
            if med <= 3.0 { "met" } else { "missed" }
        );
    }
    lab.down().expect("take the lab down");
}
