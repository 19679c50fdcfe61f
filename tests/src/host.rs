//! One lab host: its root (an overlay over the base, or a copy), the
//! systemd-nspawn process that boots it with real systemd, a supervisor
//! thread that boots it again when it reboots itself (nspawn exits with 133,
//! as `systemd-nspawn@.service` would restart it), and the operations a test
//! runs against it: exec, copy in, journal, link cut and shaping, reboot.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cgroups;
use crate::cmd::{self, CmdError, ExecOutput};
use crate::names::{self, PREFIX_LEN};
use crate::net::{self, NetError, Shape};
use crate::procs;
use crate::state::{HostRecord, RunRecord};

/// Exit status of systemd-nspawn when the container asked to reboot.
const NSPAWN_REBOOT_EXIT: i32 = 133;
/// PATH inside hosts for commands run with exec.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of host operations.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot prepare the root of host {host} at {path}: {source}")]
    Prepare {
        host: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host {host} is not running (its systemd-nspawn process is gone); see {console}")]
    NotRunning { host: String, console: PathBuf },
    #[error("host {host}: {what} did not happen within {timeout:?}; last seen: {last}")]
    Timeout {
        host: String,
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("host {host}: `{command}` failed with exit code {code}: {stderr}")]
    ExecFailed {
        host: String,
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("cannot read {path} to copy it into host {host}: {source}")]
    ReadLocal {
        host: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start systemd-nspawn for host {host}: {source}")]
    Spawn {
        host: String,
        source: std::io::Error,
    },
}

/// What a host gets besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// A NoCloud `user-data` document: cloud-init runs at first boot with it.
    /// Without it cloud-init is disabled on the host.
    pub cloud_init_user_data: Option<String>,
}

/// Where a host's files go, before it exists.
#[derive(Debug, Clone)]
pub struct HostLayout {
    /// Host name.
    pub name: String,
    /// Address on the bridge.
    pub ip: Ipv4Addr,
    /// The machine side of the bridge.
    pub gateway: Ipv4Addr,
    /// The host's directory.
    pub dir: PathBuf,
}

impl HostLayout {
    /// The console log (nspawn's output: the boot messages).
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// Makes the host's root: an overlay over `base` (or a reflinked copy when
/// overlayfs is not possible), with its own name, address, machine id, and
/// cloud-init disabled unless asked for. Returns (root, is_overlay).
pub fn prepare_root(
    base: &Path,
    layout: &HostLayout,
    peers: &[(String, Ipv4Addr)],
    options: &HostOptions,
) -> Result<(PathBuf, bool), HostError> {
    let io = |path: &Path| {
        let host = layout.name.clone();
        let path = path.to_path_buf();
        move |source| HostError::Prepare { host, path, source }
    };
    let root = layout.dir.join("root");
    let upper = layout.dir.join("upper");
    let work = layout.dir.join("work");
    for d in [&root, &upper, &work] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        upper.display(),
        work.display()
    );
    let mut mount = cmd::command("mount", ["-t", "overlay", "overlay", "-o", &opts]);
    mount.arg(&root);
    let overlay = match cmd::run(&mut mount) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(host = %layout.name, error = %e, "overlayfs not possible; copying the base");
            let mut cp = cmd::command("cp", ["-a", "--reflink=auto"]);
            cp.arg(format!("{}/.", base.display())).arg(&root);
            cmd::run(&mut cp)?;
            false
        }
    };

    let write = |rel: &str, contents: &str| -> Result<(), HostError> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, contents).map_err(io(&path))
    };
    write("etc/hostname", &format!("{}\n", layout.name))?;
    let mut hosts = format!("127.0.0.1\tlocalhost\n{}\tlab-gateway\n", layout.gateway);
    for (name, ip) in peers {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    write("etc/hosts", &hosts)?;
    let id = names::random_bytes::<16>().map_err(|e| HostError::Prepare {
        host: layout.name.clone(),
        path: root.join("etc/machine-id"),
        source: std::io::Error::other(e.to_string()),
    })?;
    write("etc/machine-id", &format!("{}\n", hex::encode(id)))?;
    // The address comes from a oneshot unit: no DHCP, no default route, so a
    // host can reach the lab network and nothing else. It also turns on IPv4
    // forwarding, which Kubernetes needs and Seaport's preflight checks
    // (a host's own network namespace starts with it off).
    write(
        "etc/systemd/system/seaport-lab-net.service",
        &format!(
            "[Unit]\nDescription=Lab address on host0\nDefaultDependencies=no\n\
             Before=network.target network-online.target\nWants=network.target\n\
             After=sys-subsystem-net-devices-host0.device\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/sbin/ip link set host0 up\n\
             ExecStart=/sbin/ip addr replace {}/{PREFIX_LEN} dev host0\n\
             ExecStart=/bin/sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            layout.ip
        ),
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(io(&wants))?;
    let link = wants.join("seaport-lab-net.service");
    if !link.exists() {
        std::os::unix::fs::symlink("/etc/systemd/system/seaport-lab-net.service", &link)
            .map_err(io(&link))?;
    }
    match &options.cloud_init_user_data {
        None => write("etc/cloud/cloud-init.disabled", "")?,
        Some(user_data) => {
            write("var/lib/cloud/seed/nocloud/user-data", user_data)?;
            write(
                "var/lib/cloud/seed/nocloud/meta-data",
                &format!("instance-id: {0}\nlocal-hostname: {0}\n", layout.name),
            )?;
        }
    }
    Ok((root, overlay))
}

/// Shared between the lab and the supervisors: the run record, saved to the
/// run directory whenever a host's process changes.
#[derive(Debug)]
pub(crate) struct RunShared {
    pub(crate) run_dir: PathBuf,
    pub(crate) record: Mutex<RunRecord>,
}

impl RunShared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut RunRecord)) {
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rec);
        if let Err(e) = rec.save(&self.run_dir) {
            tracing::warn!(error = %e, "cannot save the lab run record");
        }
    }

    pub(crate) fn host(&self, index: usize) -> HostRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).hosts[index].clone()
    }
}

/// A running lab host. Obtained from `Lab::host`.
#[derive(Debug)]
pub struct Host {
    index: usize,
    name: String,
    ip: Ipv4Addr,
    bridge: String,
    shared: Arc<RunShared>,
    stopping: Arc<AtomicBool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Host {
    pub(crate) fn start(
        index: usize,
        bridge: &str,
        shared: Arc<RunShared>,
    ) -> Result<Host, HostError> {
        let rec = shared.host(index);
        let stopping = Arc::new(AtomicBool::new(false));
        let first = spawn_nspawn(&rec, bridge)?;
        shared.update(|r| {
            r.hosts[index].nspawn_pid = Some(first.id());
            r.hosts[index].boots += 1;
        });
        let supervisor = {
            let shared = shared.clone();
            let stopping = stopping.clone();
            let bridge = bridge.to_string();
            std::thread::Builder::new()
                .name(format!("lab-{}", rec.name))
                .spawn(move || supervise(index, first, &bridge, &shared, &stopping))
                .map_err(|source| HostError::Spawn {
                    host: rec.name.clone(),
                    source,
                })?
        };
        Ok(Host {
            index,
            name: rec.name,
            ip: rec.ip,
            bridge: bridge.to_string(),
            shared,
            stopping,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// The host name (also its hostname inside).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the lab bridge.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's record: directories, current nspawn pid, boot count.
    pub fn record(&self) -> HostRecord {
        self.shared.host(self.index)
    }

    /// How many times the host has booted (1 after `up`).
    pub fn boots(&self) -> u32 {
        self.record().boots
    }

    /// The console log: what systemd printed while booting.
    pub fn console_log(&self) -> PathBuf {
        self.record().dir.join("console.log")
    }

    /// The pid of the host's init (systemd), as seen on the machine.
    pub fn leader(&self) -> Result<u32, HostError> {
        leader_of(&self.record()).ok_or_else(|| self.not_running())
    }

    fn not_running(&self) -> HostError {
        HostError::NotRunning {
            host: self.name.clone(),
            console: self.console_log(),
        }
    }

    /// True while the host's systemd runs.
    pub fn is_running(&self) -> bool {
        leader_of(&self.record()).is_some()
    }

    /// Runs `argv` in the host (all its namespaces) and returns what it did.
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, HostError> {
        exec_in(self.leader()?, argv, None)
    }

    /// Runs `argv` in the host and fails unless it exits with 0.
    pub fn exec_ok<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, HostError> {
        let out = self.exec(argv)?;
        if out.success() {
            Ok(out)
        } else {
            Err(HostError::ExecFailed {
                host: self.name.clone(),
                command: argv
                    .iter()
                    .map(|a| a.as_ref())
                    .collect::<Vec<_>>()
                    .join(" "),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// Runs a shell script in the host with `sh -c`.
    pub fn sh(&self, script: &str) -> Result<ExecOutput, HostError> {
        self.exec(&["sh", "-c", script])
    }

    /// Writes `contents` to `dest` inside the host with `mode` (octal, e.g.
    /// 0o755), creating parent directories; atomic (temp file, rename).
    pub fn write_file(&self, dest: &str, contents: &[u8], mode: u32) -> Result<(), HostError> {
        let script = "set -e; mkdir -p \"$(dirname \"$1\")\"; t=\"$1.seaport-lab-tmp\"; \
                      cat > \"$t\"; chmod \"$2\" \"$t\"; sync \"$t\" 2>/dev/null || true; mv -f \"$t\" \"$1\"";
        let mode = format!("{mode:o}");
        let argv = ["sh", "-c", script, "sh", dest, &mode];
        let out = exec_in(self.leader()?, &argv, Some(contents))?;
        if out.success() {
            Ok(())
        } else {
            Err(HostError::ExecFailed {
                host: self.name.clone(),
                command: format!("write {dest}"),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// Starts sshd in the host with `pubkey` (an OpenSSH public key line)
    /// as root's only authorized key: the way in of peers that install over
    /// SSH (sealer's method), measured beside Seaport in the benchmarks.
    /// The lab base ships openssh-server disabled and without host keys.
    pub fn enable_sshd(&self, pubkey: &str) -> Result<(), HostError> {
        self.write_file("/root/.ssh/authorized_keys", pubkey.as_bytes(), 0o600)?;
        let out = self.sh(
            "chmod 700 /root/.ssh && ssh-keygen -A >/dev/null && mkdir -p /run/sshd \
             && systemctl enable ssh.service >/dev/null 2>&1; systemctl restart ssh.service",
        )?;
        if out.success() {
            return Ok(());
        }
        let journal = self
            .sh("journalctl -u ssh.service -n 30 --no-pager")
            .map_or_else(|e| e.to_string(), |o| o.stdout);
        Err(HostError::ExecFailed {
            host: self.name.clone(),
            command: "start sshd".into(),
            code: out.code,
            stderr: format!("{}\n{journal}", out.stderr.trim()),
        })
    }

    /// Copies the machine file `local` to `dest` inside the host.
    pub fn copy_in(&self, local: &Path, dest: &str, mode: u32) -> Result<(), HostError> {
        let bytes = std::fs::read(local).map_err(|source| HostError::ReadLocal {
            host: self.name.clone(),
            path: local.to_path_buf(),
            source,
        })?;
        self.write_file(dest, &bytes, mode)
    }

    /// The host's journal (all of it, or one unit's), oldest first.
    pub fn journal(&self, unit: Option<&str>) -> Result<String, HostError> {
        let mut argv = vec!["journalctl", "--no-pager", "-q", "-o", "short-precise"];
        if let Some(u) = unit {
            argv.extend(["-u", u]);
        }
        Ok(self.exec_ok(&argv)?.stdout)
    }

    /// Waits until systemd in the host has finished starting up and returns
    /// its state (`running`, or `degraded` when a unit failed).
    pub fn wait_ready(&self, timeout: Duration) -> Result<String, HostError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no systemd yet");
        loop {
            if let Some(leader) = leader_of(&self.record()) {
                match exec_in(leader, &["systemctl", "is-system-running"], None) {
                    Ok(out) => {
                        let state = out.stdout.trim().to_string();
                        if state == "running" || state == "degraded" {
                            return Ok(state);
                        }
                        last = format!("{state} {}", out.stderr.trim());
                    }
                    Err(e) => last = e.to_string(),
                }
            } else if self.has_stopped() {
                return Err(self.not_running());
            }
            if Instant::now() >= deadline {
                return Err(HostError::Timeout {
                    host: self.name.clone(),
                    what: "systemd settling (systemctl is-system-running)".into(),
                    timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn has_stopped(&self) -> bool {
        self.supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|h| h.is_finished())
    }

    /// Reboots the host with `systemctl reboot` and waits until it has booted
    /// again and settled. Its disk (the overlay) survives, as on a real host.
    pub fn reboot(&self, timeout: Duration) -> Result<String, HostError> {
        let before = self.boots();
        // The command may be cut off by the reboot itself: its result says
        // nothing; the boot count does.
        let _ = self.exec(&["systemctl", "reboot"]);
        let deadline = Instant::now() + timeout;
        while self.boots() <= before || !self.is_running() {
            if self.has_stopped() {
                return Err(self.not_running());
            }
            if Instant::now() >= deadline {
                return Err(HostError::Timeout {
                    host: self.name.clone(),
                    what: "reboot".into(),
                    timeout,
                    last: format!("boots {} (was {before})", self.boots()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ready(deadline.saturating_duration_since(Instant::now()))
    }

    /// The machine-side end of the host's link (the veth nspawn put on the
    /// bridge), found by the peer index of `host0`.
    pub fn machine_veth(&self) -> Result<String, HostError> {
        let out = self.exec_ok(&["cat", "/sys/class/net/host0/iflink"])?;
        let index: u32 = out
            .stdout
            .trim()
            .parse()
            .map_err(|_| HostError::ExecFailed {
                host: self.name.clone(),
                command: "cat /sys/class/net/host0/iflink".into(),
                code: 0,
                stderr: format!("unexpected output {:?}", out.stdout),
            })?;
        Ok(net::name_of_index(index)?)
    }

    /// Cuts the host's link: the machine-side veth goes down, the host sees
    /// no carrier, nothing reaches it or leaves it.
    pub fn cut_link(&self) -> Result<(), HostError> {
        Ok(net::set_link(&self.machine_veth()?, false)?)
    }

    /// Restores a cut link.
    pub fn restore_link(&self) -> Result<(), HostError> {
        Ok(net::set_link(&self.machine_veth()?, true)?)
    }

    /// Shapes the host's link in both directions to `shape` (tc tbf on the
    /// machine-side veth and on host0 inside).
    pub fn shape_link(&self, shape: &Shape) -> Result<(), HostError> {
        net::shape(&self.machine_veth()?, shape, None)?;
        net::shape("host0", shape, Some(self.leader()?))?;
        Ok(())
    }

    /// Removes shaping from both ends of the host's link.
    pub fn unshape_link(&self) -> Result<(), HostError> {
        net::unshape(&self.machine_veth()?, None)?;
        net::unshape("host0", Some(self.leader()?))?;
        Ok(())
    }

    /// Asks the host to shut down (nspawn forwards SIGTERM as a poweroff
    /// request), without waiting.
    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(pid) = self.record().nspawn_pid {
            procs::signal(pid, Signal::SIGTERM);
        }
    }

    /// Waits for the host to be down; kills it after `grace`.
    pub(crate) fn finish_stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let handle = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(handle) = handle else { return };
        let deadline = Instant::now() + grace;
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !handle.is_finished() {
            let rec = self.record();
            if let Some(leader) = leader_of(&rec) {
                procs::signal(leader, Signal::SIGKILL);
            }
            if let Some(pid) = rec.nspawn_pid {
                procs::signal(pid, Signal::SIGKILL);
            }
        }
        let _ = handle.join();
        for g in cgroups::host_cgroups(&self.name) {
            cgroups::remove(&g);
        }
    }

    /// The bridge this host is attached to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

/// The leader of the host in `rec`, if its nspawn process is ours and alive.
pub fn leader_of(rec: &HostRecord) -> Option<u32> {
    let pid = rec.nspawn_pid?;
    if !procs::is_ours(pid, &["systemd-nspawn", &procs::path_text(&rec.root)]) {
        return None;
    }
    procs::container_leader(pid)
}

/// Runs `argv` inside the container whose init is `leader`.
pub fn exec_in<S: AsRef<str>>(
    leader: u32,
    argv: &[S],
    input: Option<&[u8]>,
) -> Result<ExecOutput, HostError> {
    let mut c = Command::new("nsenter");
    c.env_clear()
        .env("PATH", HOST_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("SYSTEMD_PAGER", "")
        .args(["-t", &leader.to_string(), "-a", "--"])
        .args(argv.iter().map(|a| a.as_ref()));
    Ok(cmd::output(&mut c, input)?)
}

fn spawn_nspawn(rec: &HostRecord, bridge: &str) -> Result<Child, HostError> {
    let console = rec.dir.join("console.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
        .map_err(|source| HostError::Prepare {
            host: rec.name.clone(),
            path: console.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| HostError::Prepare {
        host: rec.name.clone(),
        path: console.clone(),
        source,
    })?;
    // Start nspawn in a cgroup of the host's own (see cgroups.rs): a shell
    // moves itself there, then becomes systemd-nspawn.
    let groups = cgroups::host_cgroups(&rec.name);
    for g in &groups {
        std::fs::create_dir_all(g).map_err(|source| HostError::Prepare {
            host: rec.name.clone(),
            path: g.clone(),
            source,
        })?;
    }
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(
            "n=$1; shift; while [ \"$n\" -gt 0 ]; do \
               echo $$ > \"$1/cgroup.procs\" || echo \"seaport-lab: cannot enter cgroup $1\" >&2; \
               shift; n=$((n - 1)); done; exec systemd-nspawn \"$@\"",
        )
        .arg("sh")
        .arg(groups.len().to_string())
        .args(&groups)
        .arg("-D")
        .arg(&rec.root)
        .args(["-M", &rec.name])
        // No systemd on the machine: do not register with machined and do
        // not ask for a scope unit.
        .args(["--register=no", "--keep-unit", "--boot"])
        .arg(format!("--network-bridge={bridge}"))
        .args(["--console=read-only", "--link-journal=no"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Keep terminal signals (Ctrl-C on a test) away from the hosts: the
        // lab stops them itself.
        .process_group(0);
    c.spawn().map_err(|source| HostError::Spawn {
        host: rec.name.clone(),
        source,
    })
}

fn supervise(index: usize, first: Child, bridge: &str, shared: &RunShared, stopping: &AtomicBool) {
    let mut child = first;
    loop {
        let status = child.wait();
        shared.update(|r| r.hosts[index].nspawn_pid = None);
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match status {
            Ok(s) if s.code() == Some(NSPAWN_REBOOT_EXIT) => {
                let rec = shared.host(index);
                match spawn_nspawn(&rec, bridge) {
                    Ok(next) => {
                        shared.update(|r| {
                            r.hosts[index].nspawn_pid = Some(next.id());
                            r.hosts[index].boots += 1;
                        });
                        child = next;
                    }
                    Err(e) => {
                        tracing::warn!(host = %rec.name, error = %e, "cannot boot the host again");
                        return;
                    }
                }
            }
            Ok(s) => {
                tracing::info!(host = %shared.host(index).name, status = %s, "host stopped");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for systemd-nspawn");
                return;
            }
        }
    }
}
