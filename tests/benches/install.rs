//! Benchmark: `seaport run` of the lab's test cluster image (layers
//! included) on N lab hosts, beside the SSH path sealer takes, in one run.
//!
//! Cases (`SEAPORT_BENCH_CASES`, default `1+2,1+9,1+19,3+7`: masters +
//! workers): N = 3, 10 and 20 hosts with one master, and 3 masters with 7
//! workers at N = 10. For each case and repetition (`SEAPORT_BENCH_REPS`,
//! default 3), in alternating order:
//!
//! - Seaport: `seaport run IMAGE -m MASTERS -n WORKERS` on clean hosts (the
//!   previous install removed with `delete --all --prune`): wall time as
//!   the CLI sees it, the coordinator's CPU time during it; then 3 no-op
//!   reruns (target: <= 1 s each at every N).
//! - SSH path (sealer's, v0.9 `scpDistributor` and `SSHInfraDriver`): from
//!   the machine, for each top-level entry of the merged rootfs but
//!   `registry/`, `scp -r` to every host at once (sealer copies with an
//!   unbounded errgroup over hosts, entry after entry); `registry/` to
//!   master0; then over `ssh`: the registry name in every host's
//!   /etc/hosts, `scripts/init-registry.sh` on master0, and
//!   `scripts/init.sh` then `scripts/init-kube.sh` on every host at once
//!   (the hooks Seaport's agents run). Wall time, and CPU time of the scp
//!   and ssh processes on the machine. It runs on a second set of hosts
//!   (hosts with the same base, sshd started), cleaned between repetitions
//!   (`scripts/clean.sh` and the copied files removed). Not done on this
//!   side: kubeadm (a recording double in the test image), and sealer's
//!   md5 comparison of every file before copying it.
//!
//! The merged rootfs the SSH path copies is the one Seaport's agent
//! unpacked on master0 in the first install. Target: N = 20 within 2x of
//! N = 3 (Seaport's medians). Prints the machine, the load average during
//! each case, every sample, min / median / max and one JSON line per case.
//!
//! `cargo bench -p seaport-lab --bench install`. Needs root and the lab
//! (docs/lab.md), the lab base's openssh-server, and Debian's containerd,
//! runc and docker-registry (the test image copies them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use seaport_lab::host::Host;
use seaport_lab::testimage;
use seaport_lab::{runs, Lab};
use seaport_shared::bench;

const SSH_OPTS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
];
/// Where sealer keeps a cluster's rootfs on each host.
const SEALER_ROOTFS: &str = "/var/lib/sealer/data/bench/rootfs";

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn line(case: &str, what: &str, v: &[f64]) -> bench::Stats {
    let st = bench::stats(v);
    println!(
        "{case}: {what}: {} (min/median/max {:.2}/{:.2}/{:.2})",
        fmt(v),
        st.min,
        st.median,
        st.max
    );
    st
}

/// The SSH path's commands, with the key made for the run.
struct Ssh {
    key: PathBuf,
}

impl Ssh {
    fn scp(&self, local: &Path, host: &Host, remote: &str) -> Child {
        Command::new("scp")
            .args(SSH_OPTS)
            .arg("-i")
            .arg(&self.key)
            .args(["-q", "-r"])
            .arg(local)
            .arg(format!("root@{}:{remote}", host.ip()))
            .stdin(Stdio::null())
            .spawn()
            .expect("start scp")
    }

    fn ssh(&self, host: &Host, script: &str) -> Child {
        Command::new("ssh")
            .args(SSH_OPTS)
            .arg("-i")
            .arg(&self.key)
            .arg(format!("root@{}", host.ip()))
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start ssh")
    }

    /// Runs `children` to the end; each must succeed.
    fn all(what: &str, children: Vec<Child>) {
        for mut c in children {
            let st = c.wait().expect("wait for ssh/scp");
            assert!(st.success(), "{what} failed: {st}");
        }
    }

    /// The install as sealer does it over SSH; master0 is `hosts[0]`.
    fn install(&self, rootfs: &Path, hosts: &[&Host]) {
        let master0 = hosts[0];
        Ssh::all(
            "mkdir",
            hosts
                .iter()
                .map(|h| self.ssh(h, &format!("mkdir -p {SEALER_ROOTFS}")))
                .collect(),
        );
        let mut entries: Vec<PathBuf> = std::fs::read_dir(rootfs)
            .expect("read the merged rootfs")
            .map(|e| e.expect("rootfs entry").path())
            .collect();
        entries.sort();
        for e in entries.iter().filter(|e| !e.ends_with("registry")) {
            Ssh::all(
                "scp",
                hosts
                    .iter()
                    .map(|h| self.scp(e, h, &format!("{SEALER_ROOTFS}/")))
                    .collect(),
            );
        }
        let registry = rootfs.join("registry");
        if registry.is_dir() {
            Ssh::all(
                "scp registry",
                vec![self.scp(&registry, master0, &format!("{SEALER_ROOTFS}/"))],
            );
        }
        let hosts_line = format!("echo '{} sea.hub' >> /etc/hosts", master0.ip());
        Ssh::all(
            "hosts",
            hosts.iter().map(|h| self.ssh(h, &hosts_line)).collect(),
        );
        Ssh::all(
            "init-registry.sh",
            vec![self.ssh(
                master0,
                // The image ships the registry binary in cri/ (the lab
                // hosts have none installed), as sealer's images carry
                // their registry.
                &format!(
                    "cd {SEALER_ROOTFS}/scripts && PATH={SEALER_ROOTFS}/cri:$PATH bash init-registry.sh"
                ),
            )],
        );
        Ssh::all(
            "init.sh, init-kube.sh",
            hosts
                .iter()
                .map(|h| {
                    self.ssh(
                        h,
                        &format!("cd {SEALER_ROOTFS}/scripts && bash init.sh && bash init-kube.sh"),
                    )
                })
                .collect(),
        );
    }

    /// Undoes it (untimed).
    fn clean(&self, hosts: &[&Host]) {
        let script = format!(
            "bash {SEALER_ROOTFS}/scripts/clean.sh; rm -rf /var/lib/sealer /var/lib/registry /usr/bin/kubeadm /usr/bin/kubectl /usr/bin/kubelet; sed -i '/ sea.hub$/d' /etc/hosts"
        );
        Ssh::all(
            "clean",
            hosts.iter().map(|h| self.ssh(h, &script)).collect(),
        );
    }
}

struct Case {
    masters: usize,
    workers: usize,
}

impl Case {
    fn n(&self) -> usize {
        self.masters + self.workers
    }

    fn name(&self) -> String {
        format!(
            "N={} ({} master{}, {} workers)",
            self.n(),
            self.masters,
            if self.masters == 1 { "" } else { "s" },
            self.workers
        )
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let reps: usize = std::env::var("SEAPORT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let cases: Vec<Case> = std::env::var("SEAPORT_BENCH_CASES")
        .unwrap_or_else(|_| "1+2,1+9,1+19,3+7".into())
        .split(',')
        .filter_map(|c| {
            let (m, w) = c.trim().split_once('+')?;
            Some(Case {
                masters: m.parse().ok()?,
                workers: w.parse().ok()?,
            })
        })
        .collect();
    let with_ssh = !matches!(std::env::var("SEAPORT_BENCH_SSH").as_deref(), Ok("0"));
    let max_n = cases.iter().map(Case::n).max().expect("at least one case");
    println!("{}", bench::machine());
    let testimage::Prepared {
        bins, tmp, root, ..
    } = testimage::prepare();
    let whole = bench::LoadWatch::start();
    let lab_hosts = if with_ssh { 2 * max_n } else { max_n };
    let started = Instant::now();
    // Tens of hosts booting at once on a small machine take longer than
    // the default 120 s to settle.
    let lab = Lab::builder()
        .hosts(lab_hosts)
        .boot_timeout(std::time::Duration::from_secs(900))
        .up()
        .expect("bring up the lab");
    let (coordinator, _) = runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    println!(
        "{lab_hosts} lab hosts up and enrolled in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let coordinator_pid = coordinator.pid().expect("coordinator pid");
    let seaport_hosts: Vec<&Host> = lab.hosts().iter().take(max_n).collect();
    let ssh_hosts: Vec<&Host> = lab.hosts().iter().skip(max_n).collect();
    let ssh = Ssh {
        key: tmp.path().join("id_ed25519"),
    };
    if with_ssh {
        let pubkey = seaport_lab::cmd::ssh_client_key(&ssh.key).expect("ssh-keygen");
        for h in &ssh_hosts {
            h.enable_sshd(&pubkey).expect("start sshd");
        }
    }
    let merged = tmp.path().join("merged-rootfs");
    let mut medians = Vec::new();

    for (ci, case) in cases.iter().enumerate() {
        let n = case.n();
        let name = case.name();
        let load = bench::LoadWatch::start();
        let ips: Vec<String> = seaport_hosts[..n]
            .iter()
            .map(|h| h.ip().to_string())
            .collect();
        let masters = ips[..case.masters].join(",");
        let workers = ips[case.masters..].join(",");
        let mut run = vec!["run", testimage::IMAGE_NAME, "-m", masters.as_str()];
        if !workers.is_empty() {
            run.extend(["-n", workers.as_str()]);
        }
        let (mut secs, mut cpu, mut noop) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ssh_secs, mut ssh_cpu) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let seaport_first = (ci + rep) % 2 == 0;
            for side in [seaport_first, !seaport_first] {
                if side {
                    let c0 = bench::process_cpu(coordinator_pid).as_secs_f64();
                    let t = Instant::now();
                    bins.seaport_ok(&root, &run);
                    secs.push(t.elapsed().as_secs_f64());
                    cpu.push(bench::process_cpu(coordinator_pid).as_secs_f64() - c0);
                    println!(
                        "{name} rep {}: seaport {:.2} s, coordinator CPU {:.2} s",
                        rep + 1,
                        secs[secs.len() - 1],
                        cpu[cpu.len() - 1]
                    );
                    if !merged.exists() {
                        let data = seaport_hosts[0]
                            .record()
                            .dir
                            .join("root/var/lib/seaport/data");
                        let cluster = std::fs::read_dir(&data)
                            .expect("the cluster data on master0")
                            .map(|e| e.expect("entry").path())
                            .find(|p| p.join("rootfs").is_dir())
                            .expect("a rootfs on master0");
                        let st = Command::new("cp")
                            .arg("-a")
                            .arg(cluster.join("rootfs"))
                            .arg(&merged)
                            .status()
                            .expect("cp");
                        assert!(st.success(), "copying the merged rootfs failed");
                    }
                    for _ in 0..3 {
                        let t = Instant::now();
                        bins.seaport_ok(&root, &run);
                        noop.push(t.elapsed().as_secs_f64());
                    }
                    bins.seaport_ok(&root, &["delete", "--all", "--prune", "--yes"]);
                } else if with_ssh && merged.exists() {
                    let hosts = &ssh_hosts[..n];
                    let c0 = bench::cpu_time();
                    let t = Instant::now();
                    ssh.install(&merged, hosts);
                    ssh_secs.push(t.elapsed().as_secs_f64());
                    ssh_cpu.push((bench::cpu_time() - c0).as_secs_f64());
                    println!(
                        "{name} rep {}: ssh path {:.2} s, machine-side CPU {:.2} s",
                        rep + 1,
                        ssh_secs[ssh_secs.len() - 1],
                        ssh_cpu[ssh_cpu.len() - 1]
                    );
                    ssh.clean(hosts);
                }
            }
        }
        let load = load.stop();
        let st = line(&name, "seaport run (s)", &secs);
        let cst = line(&name, "coordinator CPU during it (s)", &cpu);
        let nst = line(&name, "no-op rerun (s)", &noop);
        let (sst, scst) = if ssh_secs.is_empty() {
            (None, None)
        } else {
            (
                Some(line(&name, "ssh path (s)", &ssh_secs)),
                Some(line(&name, "ssh path machine-side CPU (s)", &ssh_cpu)),
            )
        };
        if let Some(s) = sst {
            println!(
                "{name}: seaport / ssh path (medians) = {:.2}",
                st.median / s.median
            );
        }
        println!(
            "{name}: no-op rerun max {:.2} s against the 1 s target: {}",
            nst.max,
            if nst.max <= 1.0 { "met" } else { "missed" }
        );
        println!("{name}: {load}");
        let j = |s: Option<bench::Stats>| {
            s.map(|s| serde_json::json!({"min": s.min, "median": s.median, "max": s.max}))
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "install",
                "case": name,
                "hosts": n,
                "masters": case.masters,
                "workers": case.workers,
                "seaport_secs_samples": secs,
                "seaport_secs": j(Some(st)),
                "coordinator_cpu_secs_samples": cpu,
                "coordinator_cpu_secs": j(Some(cst)),
                "noop_secs_samples": noop,
                "noop_secs": j(Some(nst)),
                "ssh_secs_samples": ssh_secs,
                "ssh_secs": j(sst),
                "ssh_machine_cpu_secs_samples": ssh_cpu,
                "ssh_machine_cpu_secs": j(scst),
                "seaport_over_ssh": sst.map(|s| st.median / s.median),
                "load": load.json(),
            })
        );
        medians.push((case.masters, n, st.median, sst.map(|s| s.median)));
    }
    let one_master = |n: usize| medians.iter().find(|m| m.0 == 1 && m.1 == n);
    if let (Some(a), Some(b)) = (one_master(3), one_master(20)) {
        let r = b.2 / a.2;
        println!(
            "seaport N=20 / N=3 (medians) = {r:.2} against the 2x target: {}",
            if r <= 2.0 { "met" } else { "missed" }
        );
        if let (Some(sa), Some(sb)) = (a.3, b.3) {
            println!("ssh path N=20 / N=3 (medians) = {:.2}", sb / sa);
        }
        println!(
            "{}",
            serde_json::json!({"bench": "install", "case": "scaling", "seaport_n20_over_n3": r, "ssh_n20_over_n3": a.3.zip(b.3).map(|(sa, sb)| sb / sa)})
        );
    }
    println!("whole run: {}", whole.stop());
    drop(coordinator);
    lab.down().expect("take the lab down");
}
