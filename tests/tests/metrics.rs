//! Metrics scraped by a real Prometheus (Debian's `prometheus`): the
//! coordinator serves `--metrics-listen`, Prometheus scrapes it every
//! second while `seaport run` installs the test image on 3 lab hosts, and
//! its query API then answers for the finished install, its stages and
//! steps, the nodes online, and the bytes moved: what the nodes fetched
//! (at least the image's layers on each host) was served by the
//! coordinator and the peers.
//!
//! Needs root, systemd-nspawn, debootstrap, Debian's containerd, runc,
//! docker-registry and prometheus, and curl (packaging/install-deps.sh).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use seaport_lab::checks::Phases;
use seaport_lab::{runs, testimage, wait};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus this test started, killed (by its pid) when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an instant PromQL query with one result; Err while it has
/// none.
fn query(port: u16, promql: &str) -> Result<f64, String> {
    let out = Command::new("curl")
        .args(["-sfG", &format!("http://127.0.0.1:{port}/api/v1/query")])
        .arg("--data-urlencode")
        .arg(format!("query={promql}"))
        .output()
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
    match results.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| body.clone()),
        _ => Err(format!("{promql}: {body}")),
    }
}

/// Waits until `promql` answers a value that `ok` accepts; returns it.
fn until(port: u16, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    wait::until(
        promql,
        Duration::from_secs(60),
        Duration::from_millis(500),
        || match query(port, promql) {
            Ok(v) if ok(v) => Ok(v),
            Ok(v) => Err(format!("{promql} = {v}")),
            Err(e) => Err(e),
        },
    )
    .unwrap()
}

#[test]
fn prometheus_scrapes_the_coordinator_during_an_install() {
    testimage::require_machine();
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "install Debian's prometheus (packaging/install-deps.sh)"
    );
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins, tmp, root, ..
    } = testimage::prepare();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let lab = seaport_lab::Lab::up(3).expect("bring up a lab of 3 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all_with(&lab, &bins, &root, &["--metrics-listen", &metrics])
            .expect("enroll the agents");
    phases.done("test image, lab up, agents enrolled");

    // Prometheus, scraping every second.
    let prom_port = free_port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: seaport\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    until(prom_port, "up{job=\"seaport\"}", |v| v == 1.0);
    until(prom_port, "seaport_nodes{state=\"online\"}", |v| v == 3.0);
    phases.done("prometheus scraping the coordinator");

    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let workers = format!("{},{}", n1.ip(), n2.ip());
    let m0ip = m0.ip().to_string();
    let (ok, out, err) = bins.seaport_out(
        &root,
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &m0ip,
            "-n",
            &workers,
            "--cluster",
            "metrics",
        ],
    );
    assert!(
        ok,
        "seaport run: {out}{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    phases.done("seaport run");

    // The finished operation.
    until(
        prom_port,
        "seaport_operations_total{kind=\"install\",result=\"succeeded\"}",
        |v| v == 1.0,
    );
    until(
        prom_port,
        "sum(seaport_stage_duration_seconds_count{stage=\"fetch\"})",
        |v| v == 1.0,
    );
    until(
        prom_port,
        "sum(seaport_step_duration_seconds_count{step=\"rootfs\"})",
        |v| v == 3.0,
    );
    // The bytes moved: every host fetched at least the image's layers, and
    // what they fetched was served by the coordinator and their peers.
    let (ok, inspect, err) = bins.seaport_out(&root, &["inspect", testimage::IMAGE_NAME]);
    assert!(ok, "inspect: {err}");
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let layers: f64 = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_f64().unwrap())
        .sum();
    assert!(layers > 0.0);
    let fetched = until(
        prom_port,
        "sum(seaport_node_fetched_peer_bytes_total) + sum(seaport_node_fetched_coordinator_bytes_total)",
        |v| v >= 3.0 * layers,
    );
    let served = until(
        prom_port,
        "seaport_coordinator_served_bytes_total + on() sum(seaport_node_served_bytes_total)",
        |v| v >= fetched,
    );
    let from_coordinator = query(prom_port, "seaport_coordinator_served_bytes_total").unwrap();
    assert!(from_coordinator > 0.0);
    eprintln!(
        "layers {layers} bytes; fetched by the nodes {fetched}; served {served} ({from_coordinator} by the coordinator)"
    );
    phases.done("prometheus answers for the install and the bytes moved");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "delete: {out}{err}");
    coordinator.stop().unwrap();
}
