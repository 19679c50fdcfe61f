//! Metrics in Prometheus' text format (`seaport coordinator serve
//! --metrics-listen ADDR`, `GET /metrics`).
//!
//! Counters and histograms of this process live in [`global`]: operations
//! by kind and result, stage and step durations, bytes the coordinator
//! served, enrollment refusals by reason. Agents' own counters (bytes they
//! served to peers, fetched from peers and from the coordinator, pieces
//! fetched again after a bad hash) travel with their heartbeats and are
//! kept per node. Gauges read at scrape time (nodes by state, QUIC
//! connections) come from the daemon. README.md lists every name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use seaport_shared::wire::{BalancerFacts, NodeCounters};

/// Upper bounds of duration buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// One of a node's counters.
type NodeValue = fn(&NodeCounters) -> u64;

/// What the daemon knows at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Nodes by state (online, offline, expired, revoked).
    pub nodes: BTreeMap<String, u64>,
    pub quic_connections: u64,
    /// Node id to hostname, for the per-node series.
    pub hostnames: BTreeMap<String, String>,
}

/// This process's metrics.
#[derive(Default)]
pub struct Metrics {
    coordinator_served: AtomicU64,
    operations: Mutex<BTreeMap<(String, String), u64>>,
    stages: Mutex<BTreeMap<String, Histogram>>,
    steps: Mutex<BTreeMap<String, Histogram>>,
    enroll_refusals: Mutex<BTreeMap<String, u64>>,
    nodes: Mutex<BTreeMap<String, NodeCounters>>,
    balancers: Mutex<BTreeMap<String, BalancerFacts>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// An operation ended: `kind` (install, upgrade, ...) and `result`
    /// (succeeded, failed, deleted).
    pub fn operation_ended(&self, kind: &str, result: &str) {
        *lock(&self.operations)
            .entry((kind.to_string(), result.to_string()))
            .or_default() += 1;
    }

    /// A stage of an operation finished (or failed) after `took`.
    pub fn stage_took(&self, stage: &str, took: Duration) {
        lock(&self.stages)
            .entry(stage_kind(stage).to_string())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A host's step finished after `took`.
    pub fn step_took(&self, step: &str, took: Duration) {
        lock(&self.steps)
            .entry(step_kind(step).to_string())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The coordinator sent `bytes` of pieces to a node.
    pub fn coordinator_served(&self, bytes: u64) {
        self.coordinator_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An enrollment was refused, for `reason` (a short word).
    pub fn enroll_refused(&self, reason: &str) {
        *lock(&self.enroll_refusals)
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// A node's API balancer, from its heartbeat (none: it runs none).
    pub fn node_balancer(&self, node_id: &str, balancer: Option<BalancerFacts>) {
        let mut m = lock(&self.balancers);
        match balancer {
            Some(b) => {
                m.insert(node_id.to_string(), b);
            }
            None => {
                m.remove(node_id);
            }
        }
    }

    /// A node's counters, from its heartbeat.
    pub fn node_counters(&self, node_id: &str, counters: NodeCounters) {
        lock(&self.nodes).insert(node_id.to_string(), counters);
    }

    /// Drops a node's series (it was removed).
    pub fn forget_node(&self, node_id: &str) {
        lock(&self.nodes).remove(node_id);
    }

    /// Everything in Prometheus' text exposition format.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "seaport_nodes",
            "gauge",
            "Enrolled nodes by state.",
        );
        for state in ["online", "offline", "expired", "revoked"] {
            let n = g.nodes.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "seaport_nodes{{state=\"{state}\"}} {n}");
        }
        head(
            &mut out,
            "seaport_quic_connections",
            "gauge",
            "Open QUIC connections to the coordinator (agents and admin clients).",
        );
        let _ = writeln!(out, "seaport_quic_connections {}", g.quic_connections);
        head(
            &mut out,
            "seaport_operations_total",
            "counter",
            "Operations on clusters that ended, by kind and result.",
        );
        for ((kind, result), n) in lock(&self.operations).iter() {
            let _ = writeln!(
                out,
                "seaport_operations_total{{kind=\"{}\",result=\"{}\"}} {n}",
                esc(kind),
                esc(result)
            );
        }
        for (name, help, label, map) in [
            (
                "seaport_stage_duration_seconds",
                "How long stages of operations took, by kind of stage.",
                "stage",
                &self.stages,
            ),
            (
                "seaport_step_duration_seconds",
                "How long hosts' install steps took, by step.",
                "step",
                &self.steps,
            ),
        ] {
            head(&mut out, name, "histogram", help);
            for (key, h) in lock(map).iter() {
                let key = esc(key);
                for (b, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(out, "{name}_bucket{{{label}=\"{key}\",le=\"{b}\"}} {n}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{label}=\"{key}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{{{label}=\"{key}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{label}=\"{key}\"}} {}", h.count);
            }
        }
        head(
            &mut out,
            "seaport_coordinator_served_bytes_total",
            "counter",
            "Layer bytes the coordinator sent to nodes.",
        );
        let _ = writeln!(
            out,
            "seaport_coordinator_served_bytes_total {}",
            self.coordinator_served.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "seaport_enrollment_refusals_total",
            "counter",
            "Enrollments refused, by reason.",
        );
        for (reason, n) in lock(&self.enroll_refusals).iter() {
            let _ = writeln!(
                out,
                "seaport_enrollment_refusals_total{{reason=\"{}\"}} {n}",
                esc(reason)
            );
        }
        let nodes = lock(&self.nodes).clone();
        let series: [(&str, &str, NodeValue); 4] = [
            (
                "seaport_node_served_bytes_total",
                "Layer bytes a node served to its peers (from its heartbeats).",
                |c| c.served_bytes,
            ),
            (
                "seaport_node_fetched_peer_bytes_total",
                "Layer bytes a node fetched from peers.",
                |c| c.fetched_peer_bytes,
            ),
            (
                "seaport_node_fetched_coordinator_bytes_total",
                "Layer bytes a node fetched from the coordinator.",
                |c| c.fetched_coordinator_bytes,
            ),
            (
                "seaport_node_refetched_pieces_total",
                "Pieces a node fetched again after a bad hash.",
                |c| c.refetched_pieces,
            ),
        ];
        for (name, help, value) in series {
            head(&mut out, name, "counter", help);
            for (node, c) in &nodes {
                let host = g.hostnames.get(node).map_or("", String::as_str);
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",hostname=\"{}\"}} {}",
                    esc(node),
                    esc(host),
                    value(c)
                );
            }
        }
        let balancers = lock(&self.balancers).clone();
        type BackendValue = fn(&seaport_shared::wire::BackendFacts) -> u64;
        let series: [(&str, &str, &str, BackendValue); 3] = [
            (
                "seaport_node_api_backend_up",
                "gauge",
                "1 when a node's API balancer sends new connections to the backend (from its heartbeats).",
                |b| u64::from(b.healthy),
            ),
            (
                "seaport_node_api_backend_forwarded_total",
                "counter",
                "Connections a node's API balancer forwarded to the backend since its agent started.",
                |b| b.forwarded,
            ),
            (
                "seaport_node_api_backend_failed_dials_total",
                "counter",
                "Dials of a node's API balancer to the backend that failed since its agent started.",
                |b| b.failed_dials,
            ),
        ];
        for (name, kind, help, value) in series {
            head(&mut out, name, kind, help);
            for (node, bal) in &balancers {
                let host = g.hostnames.get(node).map_or("", String::as_str);
                let registry = bal
                    .registry_listen
                    .iter()
                    .flat_map(|l| bal.registry.iter().map(move |b| (l.as_str(), b)));
                let all = bal
                    .backends
                    .iter()
                    .map(|b| (bal.listen.as_str(), b))
                    .chain(registry);
                for (listen, b) in all {
                    let _ = writeln!(
                        out,
                        "{name}{{node=\"{}\",hostname=\"{}\",listen=\"{}\",backend=\"{}\"}} {}",
                        esc(node),
                        esc(host),
                        esc(listen),
                        esc(&b.addr),
                        value(b)
                    );
                }
            }
        }
        out
    }
}

/// A stage's kind: its name up to the first `:` or `@` (plugins carry
/// their name and phase after it), so the series stay few.
fn stage_kind(stage: &str) -> &str {
    stage.split([':', '@']).next().unwrap_or(stage)
}

/// A step's kind, the same way (`plugin:NAME@PreInit` is `plugin`).
fn step_kind(step: &str) -> &str {
    stage_kind(step)
}

/// A label value escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The answer to one HTTP request on the metrics listener: `GET /metrics`
/// is the text format, anything else a 404 or 405.
pub fn respond(request_line: &str, body: impl FnOnce() -> String) -> Vec<u8> {
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, text) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Serves `GET /metrics` on `listener` until the process ends; `gauges`
/// reads the daemon's state at each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gauges: std::sync::Arc<dyn Fn() -> Gauges + Send + Sync>,
) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let read = crate::bootstrap::read_head(&mut stream);
            let Ok(Some(head)) = tokio::time::timeout(Duration::from_secs(5), read).await else {
                return;
            };
            let head = String::from_utf8_lossy(&head).into_owned();
            let line = head.lines().next().unwrap_or("").to_string();
            let answer =
                tokio::task::spawn_blocking(move || respond(&line, || global().render(&gauges())))
                    .await
                    .unwrap_or_default();
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.operation_ended("install", "succeeded");
        m.operation_ended("install", "succeeded");
        m.stage_took("plugin:a@PreInit", Duration::from_millis(700));
        m.step_took("rootfs", Duration::from_secs(3));
        m.coordinator_served(4096);
        m.enroll_refused("token");
        m.node_counters(
            "h1-1",
            NodeCounters {
                served_bytes: 10,
                fetched_peer_bytes: 20,
                fetched_coordinator_bytes: 30,
                refetched_pieces: 1,
            },
        );
        let g = Gauges {
            nodes: [("online".to_string(), 2), ("offline".to_string(), 1)].into(),
            quic_connections: 3,
            hostnames: [("h1-1".to_string(), "h1".to_string())].into(),
        };
        let text = m.render(&g);
        for line in [
            "seaport_nodes{state=\"online\"} 2",
            "seaport_quic_connections 3",
            "seaport_operations_total{kind=\"install\",result=\"succeeded\"} 2",
            "seaport_stage_duration_seconds_bucket{stage=\"plugin\",le=\"0.5\"} 0",
            "seaport_stage_duration_seconds_bucket{stage=\"plugin\",le=\"1\"} 1",
            "seaport_step_duration_seconds_count{step=\"rootfs\"} 1",
            "seaport_step_duration_seconds_sum{step=\"rootfs\"} 3",
            "seaport_coordinator_served_bytes_total 4096",
            "seaport_enrollment_refusals_total{reason=\"token\"} 1",
            "seaport_node_served_bytes_total{node=\"h1-1\",hostname=\"h1\"} 10",
            "seaport_node_refetched_pieces_total{node=\"h1-1\",hostname=\"h1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        // Every sample line is NAME{...} VALUE or NAME VALUE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn a_nodes_api_balancer_is_rendered_per_backend_until_it_stops() {
        use seaport_shared::wire::BackendFacts;
        let m = Metrics::default();
        let backend = |addr: &str, healthy, forwarded, failed_dials| BackendFacts {
            addr: addr.into(),
            healthy,
            reason: None,
            forwarded,
            failed_dials,
        };
        m.node_balancer(
            "w1-1",
            Some(BalancerFacts {
                listen: "10.103.97.2:6443".into(),
                backends: vec![
                    backend("10.0.0.1:6443", false, 4, 2),
                    backend("10.0.0.2:6443", true, 7, 0),
                ],
                registry_listen: Some("10.103.97.2:5000".into()),
                registry: vec![backend("10.0.0.1:5000", true, 5, 0)],
            }),
        );
        let g = Gauges {
            hostnames: [("w1-1".to_string(), "w1".to_string())].into(),
            ..Gauges::default()
        };
        let text = m.render(&g);
        let l = "node=\"w1-1\",hostname=\"w1\",listen=\"10.103.97.2:6443\"";
        for line in [
            format!("seaport_node_api_backend_up{{{l},backend=\"10.0.0.1:6443\"}} 0"),
            format!("seaport_node_api_backend_up{{{l},backend=\"10.0.0.2:6443\"}} 1"),
            format!("seaport_node_api_backend_forwarded_total{{{l},backend=\"10.0.0.2:6443\"}} 7"),
            format!(
                "seaport_node_api_backend_failed_dials_total{{{l},backend=\"10.0.0.1:6443\"}} 2"
            ),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "{line} missing from:\n{text}"
            );
        }
        m.node_balancer("w1-1", None);
        assert!(!m.render(&g).contains("backend=\""));
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = String::from_utf8(respond("GET /metrics HTTP/1.1", || "x 1\n".into())).unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nx 1\n"),
            "{ok}"
        );
        let other = String::from_utf8(respond("GET / HTTP/1.1", String::new)).unwrap();
        assert!(other.starts_with("HTTP/1.1 404"));
        let post = String::from_utf8(respond("POST /metrics HTTP/1.1", String::new)).unwrap();
        assert!(post.starts_with("HTTP/1.1 405"));
    }
}
