//! Benchmark: the node-local API balancer on lab hosts (two masters and a
//! worker, the test image with its API server stand-ins).
//!
//! - `failover`: master0's link is cut (nothing reaches it, as when it is
//!   powered off); the time until a request from the worker to
//!   `https://apiserver.cluster.local:6443/healthz` (through its balancer),
//!   asked every 100 ms, is steadily answered by the other master: the
//!   first of 10 requests in a row each answered by it within 500 ms (the
//!   first answer by it alone is printed too: it can be luck). Then the link
//!   comes back and master0 must be a healthy backend again before the next
//!   cut. `SEAPORT_BENCH_CUTS` cuts (default 3); every sample, min /
//!   median / max. Target: <= 10 s.
//! - `latency`: `GET /healthz` from the worker, each request a new
//!   connection (`curl`, TLS verified with the cluster CA, `time_total`
//!   as curl measures it, so process start-up is not counted), directly to
//!   the masters (alternating) and through the balancer's VIP, in
//!   alternating batches of 50 in one run; `SEAPORT_BENCH_REQUESTS` per
//!   side (default 500). Min / median / p99 / max per side and the
//!   median's and p99's difference (what the balancer adds per request).
//!
//! Prints the machine, the load average during the run and one JSON line
//! per case. `cargo bench -p seaport-lab --bench balancer`. Needs root, the
//! lab (docs/lab.md) and what the test image copies (Debian's containerd,
//! runc and docker-registry).

use std::time::{Duration, Instant};

use seaport_lab::seaport::Binaries;
use seaport_lab::testimage;
use seaport_lab::{runs, wait, Host, Lab};
use seaport_shared::bench;

/// Seconds each of `urls` took from `h`, one new connection per request.
fn timed_requests(h: &Host, urls: &[String]) -> Vec<f64> {
    let script = format!(
        "for u in {}; do curl -s -o /dev/null --max-time 5 --cacert /etc/kubernetes/pki/ca.crt -w '%{{http_code}} %{{time_total}}\\n' \"$u\"; done",
        urls.join(" ")
    );
    let out = h
        .exec_ok(&["sh", "-c", &script])
        .expect("the timed requests");
    let times: Vec<f64> = out
        .stdout
        .lines()
        .map(|l| {
            let (code, t) = l.split_once(' ').expect("code and time");
            assert_eq!(code, "200", "a request failed: {l}");
            t.trim().parse::<f64>().expect("a time")
        })
        .collect();
    assert_eq!(times.len(), urls.len(), "{}", out.stdout);
    times
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Whether the worker's balancer (in `seaport status --json`) has every
/// backend healthy or, with `m0_down`, master0 down and the rest up.
fn backends_are(
    bins: &Binaries,
    root: &std::path::Path,
    worker: &str,
    m0: &str,
    m0_up: bool,
) -> Result<(), String> {
    let (_, out, err) = bins.seaport_out(root, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {err}"))?;
    let host = s[0]["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["ip"] == worker))
        .cloned()
        .unwrap_or_default();
    let b = &host["balancer"]["backends"];
    let ok = b.as_array().is_some_and(|a| {
        a.len() == 2
            && a.iter().all(|x| {
                let is_m0 = x["addr"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&format!("{m0}:"));
                x["healthy"] == (!is_m0 || m0_up)
            })
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{b}"))
    }
}

fn main() {
    let cuts: usize = std::env::var("SEAPORT_BENCH_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let requests: usize = std::env::var("SEAPORT_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
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
    let (m0, m1, w) = (lab.host(0), lab.host(1), lab.host(2));
    let (m0ip, m1ip, wip) = (m0.ip().to_string(), m1.ip().to_string(), w.ip().to_string());
    let masters = format!("{m0ip},{m1ip}");
    bins.seaport_ok(
        &root,
        &["run", testimage::IMAGE_NAME, "-m", &masters, "-n", &wip],
    );
    let settle = |m0_up: bool| {
        wait::until(
            "the worker's balancer to see the masters",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || backends_are(&bins, &root, &wip, &m0ip, m0_up),
        )
        .expect("the balancer settles");
    };
    settle(true);

    // Latency: direct and through the balancer, alternating batches.
    let batch = 50;
    let direct_urls: Vec<String> = (0..batch)
        .map(|i| {
            let ip = if i % 2 == 0 { &m0ip } else { &m1ip };
            format!("https://{ip}:6443/healthz")
        })
        .collect();
    let balancer_urls: Vec<String> =
        vec!["https://apiserver.cluster.local:6443/healthz".to_string(); batch];
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    while direct.len() < requests {
        direct.extend(timed_requests(w, &direct_urls));
        through.extend(timed_requests(w, &balancer_urls));
    }
    let ms = |v: &[f64]| v.iter().map(|x| x * 1000.0).collect::<Vec<f64>>();
    let (direct, through) = (ms(&direct), ms(&through));
    let mut sides = Vec::new();
    for (side, v) in [("direct", &direct), ("balancer", &through)] {
        let st = bench::stats(v);
        let p99 = quantile(v, 0.99);
        println!(
            "latency {side}: {} requests, min/median/p99/max {:.3}/{:.3}/{:.3}/{:.3} ms",
            v.len(),
            st.min,
            st.median,
            p99,
            st.max
        );
        let samples: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        println!("latency {side} samples (ms): {}", samples.join(" "));
        sides.push(serde_json::json!({"side": side, "requests": v.len(), "ms": {"min": st.min, "median": st.median, "p99": p99, "max": st.max}, "samples": v}));
    }
    let added_median = bench::stats(&through).median - bench::stats(&direct).median;
    let added_p99 = quantile(&through, 0.99) - quantile(&direct, 0.99);
    println!("balancer adds {added_median:.3} ms at the median, {added_p99:.3} ms at p99");
    println!(
        "{}",
        serde_json::json!({"bench": "balancer", "case": "latency", "sides": sides, "added_ms": {"median": added_median, "p99": added_p99}})
    );

    // Failover: master0 cut off, asked every 100 ms. A single answer by
    // the other master can be luck (the next request may still go to
    // master0 and wait): failover is over at the first of STEADY requests
    // in a row each answered by another master within STEADY_MS.
    const STEADY: usize = 10;
    const STEADY_MS: u128 = 500;
    let mut samples = Vec::new();
    let mut first_answers = Vec::new();
    for i in 0..cuts {
        m0.cut_link().expect("cut master0's link");
        let cut = Instant::now();
        let mut first: Option<Duration> = None;
        let mut streak: Vec<Duration> = Vec::new();
        while streak.len() < STEADY {
            let asked = cut.elapsed();
            let t = Instant::now();
            match testimage::apiserver_healthz(w) {
                Ok(n) if n != m0.name() && t.elapsed().as_millis() <= STEADY_MS => {
                    first.get_or_insert(asked);
                    streak.push(asked);
                }
                Ok(n) if n != m0.name() => {
                    first.get_or_insert(asked);
                    streak.clear();
                }
                _ => streak.clear(),
            }
            assert!(
                cut.elapsed() < Duration::from_secs(60),
                "requests not steadily answered by another master within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = streak[0].as_secs_f64();
        let first = first.expect("answered").as_secs_f64();
        println!(
            "failover {}: {secs:.3} s (first answer by another master after {first:.3} s)",
            i + 1
        );
        samples.push(secs);
        first_answers.push(first);
        settle(false);
        m0.restore_link().expect("restore master0's link");
        settle(true);
    }
    let st = bench::stats(&samples);
    let list: Vec<String> = samples.iter().map(|x| format!("{x:.3}")).collect();
    println!(
        "failover: {} s; min/median/max {:.3}/{:.3}/{:.3} s over {} cuts; target <= 10 s: {}",
        list.join(", "),
        st.min,
        st.median,
        st.max,
        samples.len(),
        if st.median <= 10.0 { "met" } else { "missed" }
    );
    println!(
        "{}",
        serde_json::json!({"bench": "balancer", "case": "failover", "samples": samples, "first_answer_samples": first_answers, "steady_requests": STEADY, "steady_ms": STEADY_MS, "secs": {"min": st.min, "median": st.median, "max": st.max}, "cuts": samples.len()})
    );
    bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
    println!("{}", load.stop());
    lab.down().expect("take the lab down");
}
