//! End to end with several coordinators on a real etcd cluster: 3 etcd
//! members (Debian's `etcd-server`, on the machine's loopback), 3
//! coordinators of one site (on the lab's gateway, one port each, each
//! reaching etcd through proxies of its own that the test can cut, as a
//! network partition would) and agents on 3 lab hosts, each given all
//! three coordinators in another order.
//!
//! - The coordinators after the first get the site key from `coordinator
//!   add`. Enrollment goes through each coordinator (each host's list
//!   starts with another one), with a token made on a coordinator that
//!   does not lead; the CLI asking a follower is answered through the
//!   leader.
//! - (a) `seaport run` is followed by the CLI with all three addresses;
//!   the leader is killed with SIGKILL while node 2's kubeadm step runs;
//!   another coordinator takes over within the TTL, the install completes,
//!   no kubeadm call ran twice on any host, the audit log records one
//!   ending, and the CLI reconnected and kept streaming to the end.
//! - (b) One etcd member stopped: the leader keeps leading and the CLI
//!   keeps working through every coordinator.
//! - (c) The leader cut off from etcd but not from the agents stops
//!   leading within the TTL, another leads, and the agents come online
//!   through it.
//! - (d) Node certificates (60 s) renew through the coordinator that took
//!   over; `nodes remove` through the coordinator that was cut off, once it
//!   is back as a follower, revokes the node.
//!
//! Needs root, systemd-nspawn, debootstrap, etcd-server and the test
//! image's packages (docs/lab.md, docs/ha.md).

#[path = "../../coordinator/src/state/local_etcd.rs"]
mod local_etcd;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_lab::seaport::{self, status_of, Binaries, Coordinator, COORDINATOR_PORT};
use seaport_lab::{testimage, wait, Lab};

/// The leader's lease TTL here: short, so that failovers are quick, and
/// long enough for a loaded 2-core machine.
const TTL: Duration = Duration::from_secs(4);
const PREFIX: &str = "/ha-lab/";
const LEADING: &str = "leading the site's coordinators";
const STEPPED_DOWN: &str = "no longer leading";
const RENEWED: &str = "certificate renewed";

/// A TCP proxy to one etcd member that the test can cut: every connection
/// through it is closed and new ones are refused while cut.
struct Proxy {
    cut: Arc<AtomicBool>,
    url: String,
}

fn proxy(to: &str) -> Proxy {
    let target = to.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            if flag.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            for (from, to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let flag = flag.clone();
                std::thread::spawn(move || pipe(from, to, &flag));
            }
        }
    });
    Proxy { cut, url }
}

/// Copies `from` to `to` until either ends or the proxy is cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if cut.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn log_of(c: &Coordinator) -> String {
    std::fs::read_to_string(c.log()).unwrap_or_default()
}

/// Waits until one of `coords` (by index, among `among`) has logged `what`
/// more than `before[i]` times; returns its index.
fn wait_logged(coords: &[Coordinator], among: &[usize], what: &str, before: &[usize]) -> usize {
    wait::until(
        &format!("a coordinator to log {what:?}"),
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            among
                .iter()
                .copied()
                .find(|&i| log_of(&coords[i]).matches(what).count() > before[i])
                .ok_or("not yet")
        },
    )
    .unwrap()
}

fn counts(coords: &[Coordinator], what: &str) -> Vec<usize> {
    coords
        .iter()
        .map(|c| log_of(c).matches(what).count())
        .collect()
}

fn seaport_cmd(bins: &Binaries, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(&bins.seaport);
    c.arg("--root").arg(root).args(args).stdin(Stdio::null());
    c
}

fn kubeadm_calls(h: &seaport_lab::Host) -> Vec<String> {
    h.exec_ok(&["cat", "/var/lib/kubeadm-double/calls.log"])
        .unwrap()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn three_coordinators_on_etcd_fail_over_without_running_a_step_twice() {
    let testimage::Prepared {
        bins,
        tmp,
        image: _,
        root: first,
    } = testimage::prepare();
    // The coordinators' logs show enrollments (info) and leadership.
    std::env::set_var("RUST_LOG", "info");
    let mut etcd = local_etcd::LocalEtcdCluster::start(3);
    let lab = Lab::up(3).expect("bring up a lab of 3 hosts");
    let roots: Vec<PathBuf> = vec![first, tmp.path().join("b"), tmp.path().join("c")];
    let proxies: Vec<Vec<Proxy>> = roots
        .iter()
        .map(|_| etcd.urls.iter().map(|u| proxy(u)).collect())
        .collect();
    let init = |i: usize| {
        let endpoints: Vec<&str> = proxies[i].iter().map(|p| p.url.as_str()).collect();
        let endpoints = endpoints.join(",");
        bins.seaport_ok(
            &roots[i],
            &[
                "coordinator",
                "init",
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--etcd-prefix",
                PREFIX,
            ],
        );
    };
    init(0);
    let archive = tmp.path().join("image.tar");
    bins.seaport_ok(
        &roots[0],
        &[
            "save",
            "-o",
            archive.to_str().unwrap(),
            testimage::IMAGE_NAME,
        ],
    );
    // `coordinator add` prints the site key the others need.
    let add = bins.seaport_ok(&roots[0], &["coordinator", "add"]);
    let key = add
        .lines()
        .skip_while(|l| !l.contains("ROOT/coordinator/site.key"))
        .skip(1)
        .find(|l| !l.trim().is_empty())
        .expect("the site key in `coordinator add`")
        .trim()
        .to_string();
    for (i, root) in roots.iter().enumerate().skip(1) {
        let dir = root.join("coordinator");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("site.key"), format!("{key}\n")).unwrap();
        std::fs::set_permissions(dir.join("site.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        init(i);
        // Every coordinator holds the images it may install (docs/ha.md).
        bins.seaport_ok(root, &["load", "-i", archive.to_str().unwrap()]);
    }
    let gw = lab.gateway();
    let addrs: Vec<String> = (0..3u16)
        .map(|i| format!("{gw}:{}", COORDINATOR_PORT + i))
        .collect();
    let all = addrs.join(",");
    let ttl = format!("{}s", TTL.as_secs());
    let serve = |i: usize| {
        Coordinator::start_with(
            &bins,
            &roots[i],
            &addrs[i],
            &["--lease-ttl", &ttl, "--node-cert-ttl", "60s"],
        )
        .expect("start a coordinator")
    };
    let mut coords = vec![serve(0)];
    wait_logged(&coords, &[0], LEADING, &[0]);
    coords.push(serve(1));
    coords.push(serve(2));

    // Enrollment through each coordinator, with a token from a follower.
    let token = seaport::create_token(&bins, &roots[1], "1h", 3).expect("token on a follower");
    for (i, h) in lab.hosts().iter().enumerate() {
        let list: Vec<&str> = (0..3).map(|k| addrs[(i + k) % 3].as_str()).collect();
        seaport::install_agent(h, &bins, &list.join(","), &token).expect("install the agent");
    }
    for (i, c) in coords.iter().enumerate() {
        assert!(
            log_of(c).contains("node enrolled"),
            "no enrollment through coordinator {i}: {}",
            log_of(c)
        );
    }
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name().to_string()).collect();
    let online = |root: &Path, why: &str| {
        seaport::wait_for_nodes(&bins, root, why, Duration::from_secs(120), |n| {
            names.iter().all(|h| status_of(n, h) == Some("online"))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    // Asked on a follower, answered by the leader (which has the sessions).
    online(&roots[2], "every agent online, asked on a follower");

    // (a) The leader killed in the middle of `seaport run`.
    let (m0, n1, n2) = (lab.host(0), lab.host(1), lab.host(2));
    let (m0ip, n1ip, n2ip) = (
        m0.ip().to_string(),
        n1.ip().to_string(),
        n2.ip().to_string(),
    );
    let workers = format!("{n1ip},{n2ip}");
    n2.exec_ok(&["touch", "/run/kubeadm-double.hold"]).unwrap();
    let (out_log, err_log) = (tmp.path().join("run.out"), tmp.path().join("run.err"));
    let mut run = seaport_cmd(
        &bins,
        &roots[1],
        &[
            "run",
            testimage::IMAGE_NAME,
            "-m",
            &m0ip,
            "-n",
            &workers,
            "--cluster",
            "lab",
            "-e",
            "pod_cidr=10.77.0.0/16",
            "--coordinator",
            &all,
        ],
    )
    .env("RUST_LOG", "warn")
    .stdout(std::fs::File::create(&out_log).unwrap())
    .stderr(std::fs::File::create(&err_log).unwrap())
    .spawn()
    .unwrap();
    wait::until(
        "node 2's kubeadm step to hold",
        Duration::from_secs(300),
        Duration::from_millis(300),
        || {
            if n2
                .exec(&["test", "-e", "/run/kubeadm-double.waiting"])
                .unwrap()
                .success()
            {
                Ok(())
            } else {
                Err(std::fs::read_to_string(&err_log).unwrap_or_default())
            }
        },
    )
    .unwrap();
    let leading = counts(&coords, LEADING);
    let killed = Instant::now();
    coords[0].kill();
    let new = wait_logged(&coords, &[1, 2], LEADING, &leading);
    let took = killed.elapsed();
    eprintln!("coordinator {new} leads {took:?} after the leader was killed");
    assert!(
        took < TTL + Duration::from_secs(3),
        "failover took {took:?}"
    );
    n2.exec_ok(&["rm", "-f", "/run/kubeadm-double.hold"])
        .unwrap();
    let exit = wait::until(
        "seaport run to finish",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || match run.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err(std::fs::read_to_string(&err_log).unwrap_or_default()),
        },
    );
    let exit = exit.unwrap_or_else(|e| {
        let _ = run.kill();
        panic!("{e}\nnew leader's log: {}", log_of(&coords[new]))
    });
    let (out, err) = (
        std::fs::read_to_string(&out_log).unwrap(),
        std::fs::read_to_string(&err_log).unwrap(),
    );
    assert!(
        exit.success() && out.contains("cluster lab: succeeded"),
        "seaport run:\n{out}\n{err}\nnew leader's log: {}",
        log_of(&coords[new])
    );
    assert!(
        err.contains("reconnecting"),
        "the CLI did not reconnect: {err}"
    );
    // No step ran twice: one kubeadm call per host.
    let init_calls = kubeadm_calls(m0);
    assert!(
        init_calls.len() == 1 && init_calls[0].starts_with("init --config"),
        "master0: {init_calls:?}"
    );
    for h in [n1, n2] {
        let calls = kubeadm_calls(h);
        assert!(
            calls.len() == 1 && calls[0].starts_with("join --config"),
            "{}: {calls:?}",
            h.name()
        );
    }
    let audit = bins.seaport_json(&roots[2], &["audit", "--json"]);
    let endings: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"].as_str().unwrap_or("").contains("succeeded"))
        .collect();
    assert_eq!(endings.len(), 1, "one ending in the audit log: {audit}");

    // (b) One etcd member stopped: the leader keeps leading and every
    // coordinator still answers.
    let stepped = counts(&coords, STEPPED_DOWN);
    etcd.stop_member(0);
    std::thread::sleep(TTL * 2);
    assert_eq!(
        counts(&coords, STEPPED_DOWN),
        stepped,
        "a coordinator stepped down with one etcd member stopped: {}",
        log_of(&coords[new])
    );
    for i in [1, 2] {
        online(&roots[i], "every agent online with one etcd member stopped");
    }
    // The member back before the partition below, which is about the
    // leader alone.
    etcd.start_member(0);

    // (c) The leader cut off from etcd, not from the agents: it stops
    // leading within the TTL, and the other leads with the agents.
    let other = if new == 1 { 2 } else { 1 };
    let leading = counts(&coords, LEADING);
    let renewed = counts(&coords, RENEWED);
    let cut = Instant::now();
    for p in &proxies[new] {
        p.cut.store(true, Ordering::SeqCst);
    }
    wait_logged(&coords, &[new], STEPPED_DOWN, &stepped);
    let stopped = cut.elapsed();
    eprintln!("the cut-off leader stopped leading after {stopped:?}");
    assert!(stopped <= TTL + Duration::from_secs(1), "{stopped:?}");
    wait_logged(&coords, &[other], LEADING, &leading);
    online(&roots[other], "every agent online through the new leader");
    // Node certificates (60 s here) renew through the new leader too.
    wait_logged(&coords, &[other], RENEWED, &renewed);
    for p in &proxies[new] {
        p.cut.store(false, Ordering::SeqCst);
    }

    // (d) nodes remove through the coordinator that was cut off, now a
    // follower again: the leader revokes the node.
    let gone = &names[2];
    wait::until(
        "nodes remove through the old leader",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let (ok, _, err) = bins.seaport_out(
                &roots[new],
                &["nodes", "remove", gone, "--coordinator", &addrs[new]],
            );
            if ok {
                Ok(())
            } else {
                Err(err)
            }
        },
    )
    .unwrap();
    let nodes = seaport::wait_for_nodes(
        &bins,
        &roots[other],
        "the removed node revoked",
        Duration::from_secs(30),
        |n| status_of(n, gone) == Some("revoked"),
    )
    .unwrap();
    assert_eq!(status_of(&nodes, &names[0]), Some("online"));
    for c in coords.iter_mut() {
        let _ = c.stop();
    }
}
