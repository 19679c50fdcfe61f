//! The lab itself: `Lab::up(n)` or `Lab::builder()` brings up a bridge and N
//! booted hosts and returns a guard that tears everything down when dropped,
//! also while a test panics. Each lab holds one slot of 198.18.0.0/24 (a
//! /26 block: its own gateway and host addresses) by a machine-wide flock
//! for the guard's lifetime, so labs of different processes (a demo lab
//! kept by `seaport-lab up` and the test suite, say) run side by side. One
//! process runs one lab at a time: tests of one binary take turns.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::base::{self, BaseError, BaseSpec};
use crate::cleanup::{self, CleanupError};
use crate::cmd;
use crate::host::{self, Host, HostError, HostLayout, HostOptions, RunShared};
use crate::lock::{self, LockError, LockGuard};
use crate::mounts::{self, MountError};
use crate::names::{LabPaths, NameError, RunId, Slot, MAX_HOSTS, SLOTS};
use crate::net::{self, NetError};
use crate::state::{HostRecord, RunRecord, StateError};

/// Programs the lab runs on the machine, and the Debian package of each.
pub const REQUIRED_PROGRAMS: &[(&str, &str)] = &[
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    ("chroot", "coreutils"),
];

/// Errors of bringing a lab up or down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab needs root (it creates bridges, mounts and containers); \
         run the lab tests and seaport-lab as root"
    )]
    NotRoot,
    #[error("the lab needs `{program}`, which is not installed: apt-get install {package}")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
    },
    #[error("a lab has 1 to {MAX_HOSTS} hosts, not {0}")]
    HostCount(usize),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host {host} has no lab address: seaport-lab-net.service is not active:\n{status}")]
    HostNetwork { host: String, status: String },
    #[error("no host {0} in this lab")]
    NoSuchHost(String),
    #[error("tearing the lab down left things behind: {0}")]
    Teardown(String),
    #[error(
        "gave up after {waited:?} waiting for a free slot of 198.18.0.0/24 \
         (all {SLOTS} are held{holders}); end a lab with `seaport-lab down`"
    )]
    NoSlot { waited: Duration, holders: String },
}

/// Fails with a message saying what to do unless the lab can run here:
/// root, and the programs it needs.
pub fn preflight() -> Result<(), LabError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(LabError::NotRoot);
    }
    for (program, package) in REQUIRED_PROGRAMS {
        if !cmd::on_path(program) {
            return Err(LabError::MissingProgram { program, package });
        }
    }
    Ok(())
}

/// inotify instances one booted host takes (systemd, journald, udev and
/// the services each hold a few), with room to spare.
const INOTIFY_PER_HOST: u64 = 16;
const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

/// Every host's systemd runs as the machine's root, so all of them share
/// root's inotify instances (Debian's default is 128): past about 20 hosts
/// systemd inside the next ones fails to start. Raises the limit to what
/// the 4 slots' largest labs need, never lowers it; a failure to raise is
/// logged and the boot goes on (it then fails naming the host).
fn raise_inotify_instances(hosts: usize) {
    let want = INOTIFY_PER_HOST * (hosts as u64) * (SLOTS as u64) + 128;
    let now: u64 = std::fs::read_to_string(INOTIFY_INSTANCES)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if now < want {
        if let Err(e) = std::fs::write(INOTIFY_INSTANCES, want.to_string()) {
            eprintln!("seaport-lab: could not raise {INOTIFY_INSTANCES} from {now} to {want}: {e}");
        }
    }
}

/// Who holds the slots, for the waiting message: the live runs.
fn lab_holders(paths: &LabPaths) -> String {
    let live: Vec<String> = crate::state::run_dirs(paths)
        .into_iter()
        .filter_map(|(_, d)| RunRecord::load(&d).ok())
        .filter(|r| crate::procs::alive(r.owner_pid))
        .map(|r| format!("{} in slot {} (pid {})", r.id, r.slot, r.owner_pid))
        .collect();
    if live.is_empty() {
        String::new()
    } else {
        format!(
            " by lab {}; `seaport-lab down` ends a lab started with `seaport-lab up`",
            live.join(", ")
        )
    }
}

/// This process's turn to run a lab: one at a time per process, so the
/// tests of one binary take turns instead of loading the machine at once.
#[derive(Debug)]
struct ProcessTurn;

static TURN_TAKEN: Mutex<bool> = Mutex::new(false);
static TURN_FREED: Condvar = Condvar::new();

impl ProcessTurn {
    fn take() -> ProcessTurn {
        let mut taken = TURN_TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        while *taken {
            taken = TURN_FREED.wait(taken).unwrap_or_else(|p| p.into_inner());
        }
        *taken = true;
        ProcessTurn
    }
}

impl Drop for ProcessTurn {
    fn drop(&mut self) {
        *TURN_TAKEN.lock().unwrap_or_else(|p| p.into_inner()) = false;
        TURN_FREED.notify_one();
    }
}

/// Takes the first free slot, or waits (saying at once for whom) until one
/// frees, giving up after `timeout`.
fn take_slot(paths: &LabPaths, timeout: Duration) -> Result<(Slot, LockGuard), LabError> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        for slot in Slot::all() {
            if let Some(guard) = lock::try_exclusive(&paths.slot_lock(slot))? {
                return Ok((slot, guard));
            }
        }
        if !announced {
            eprintln!(
                "seaport-lab: waiting for a free slot: all {SLOTS} slots of 198.18.0.0/24 \
                 are held{}",
                lab_holders(paths)
            );
            announced = true;
        }
        if started.elapsed() >= timeout {
            return Err(LabError::NoSlot {
                waited: timeout,
                holders: lab_holders(paths),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Makes the hosts' cloud-init user-data once the lab's gateway is known.
#[derive(Clone)]
struct UserDataFor(Arc<dyn Fn(Ipv4Addr) -> String + Send + Sync>);

impl std::fmt::Debug for UserDataFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserDataFor(..)")
    }
}

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    hosts: usize,
    base: BaseSpec,
    paths: LabPaths,
    options: HostOptions,
    user_data_for: Option<UserDataFor>,
    boot_timeout: Duration,
    lock_timeout: Duration,
    run_id: Option<RunId>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            hosts: 1,
            base: BaseSpec::default(),
            paths: LabPaths::from_env(),
            options: HostOptions::default(),
            user_data_for: None,
            boot_timeout: Duration::from_secs(120),
            lock_timeout: Duration::from_secs(30 * 60),
            run_id: None,
        }
    }
}

impl LabBuilder {
    /// Number of hosts (default 1).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Run cloud-init at first boot on every host with this NoCloud
    /// user-data (cloud-init is disabled otherwise).
    pub fn cloud_init_user_data(mut self, user_data: impl Into<String>) -> Self {
        self.options.cloud_init_user_data = Some(user_data.into());
        self
    }

    /// Like [`LabBuilder::cloud_init_user_data`], made by `f` from the
    /// lab's gateway address (known once the lab has its slot), for
    /// user-data that names a coordinator listening there.
    pub fn cloud_init_user_data_for(
        mut self,
        f: impl Fn(Ipv4Addr) -> String + Send + Sync + 'static,
    ) -> Self {
        self.user_data_for = Some(UserDataFor(Arc::new(f)));
        self
    }

    /// Another base package list.
    pub fn base(mut self, spec: BaseSpec) -> Self {
        self.base = spec;
        self
    }

    /// Other cache and run directories.
    pub fn paths(mut self, paths: LabPaths) -> Self {
        self.paths = paths;
        self
    }

    /// How long hosts may take to boot and settle (default 120 s).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// How long to wait for a free slot when every slot is held (default
    /// 30 min).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Use this run id instead of a random one.
    pub fn run_id(mut self, id: RunId) -> Self {
        self.run_id = Some(id);
        self
    }

    /// Builds the base if needed, waits for this process's turn and a free
    /// slot, removes leftovers of killed runs, then creates the bridge and
    /// boots the hosts.
    pub fn up(self) -> Result<Lab, LabError> {
        preflight()?;
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(LabError::HostCount(self.hosts));
        }
        raise_inotify_instances(self.hosts);
        let base_dir = base::ensure(&self.base, &self.paths.cache)?;
        let turn = ProcessTurn::take();
        let paths = self.paths.clone();
        let network = lock::shared_within(
            &self.paths.network_lock(),
            "a lab of an older seaport-lab, which takes the whole network, to finish",
            self.lock_timeout,
            move || lab_holders(&paths),
        )?;
        let (slot, lock) = take_slot(&self.paths, self.lock_timeout)?;
        let mut options = self.options.clone();
        if let Some(f) = &self.user_data_for {
            options.cloud_init_user_data = Some((f.0)(slot.gateway()));
        }
        let removed = cleanup::remove_leftovers(&self.paths, Some(slot))?;
        if !removed.is_empty() {
            eprintln!("seaport-lab: removed leftovers of a killed run: {removed:?}");
        }
        let id = match self.run_id {
            Some(id) => id,
            None => RunId::generate()?,
        };
        let record = RunRecord {
            id: id.clone(),
            owner_pid: std::process::id(),
            bridge: id.bridge(),
            slot,
            gateway: slot.gateway(),
            base: base_dir.clone(),
            hosts: Vec::new(),
            coordinator: None,
        };
        // The directory appears with its record in it, so another lab's
        // cleanup never sees a run without one.
        let run_dir = self.paths.run_dir(&id);
        let staging = self.paths.runs.join(format!(".{id}.new"));
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LabError::Dir { path, source }
        };
        std::fs::create_dir_all(&staging).map_err(dir_err(&staging))?;
        record.save(&staging)?;
        std::fs::rename(&staging, &run_dir).map_err(dir_err(&run_dir))?;
        let mut lab = Lab {
            id: id.clone(),
            paths: self.paths.clone(),
            shared: Arc::new(RunShared {
                run_dir: run_dir.clone(),
                record: Mutex::new(record),
            }),
            hosts: Vec::new(),
            slot,
            lock: Some(lock),
            network: Some(network),
            turn: Some(turn),
            down: false,
        };
        // From here on, dropping `lab` on an error removes what was made.
        net::create_bridge(&id.bridge(), slot.gateway())?;
        let peers: Vec<(String, Ipv4Addr)> = (0..self.hosts)
            .map(|i| (id.host_name(i), slot.host_ip(i)))
            .collect();
        for (i, (name, ip)) in peers.iter().enumerate() {
            let layout = HostLayout {
                name: name.clone(),
                ip: *ip,
                gateway: slot.gateway(),
                dir: run_dir.join(format!("h{}", i + 1)),
            };
            // Record the directory before mounting, so cleanup finds it.
            lab.shared.update(|r| {
                r.hosts.push(HostRecord {
                    name: name.clone(),
                    ip: *ip,
                    dir: layout.dir.clone(),
                    root: layout.dir.join("root"),
                    overlay: false,
                    nspawn_pid: None,
                    boots: 0,
                })
            });
            let (root, overlay) = host::prepare_root(&base_dir, &layout, &peers, &options)?;
            lab.shared.update(|r| {
                r.hosts[i].root = root.clone();
                r.hosts[i].overlay = overlay;
            });
        }
        for i in 0..self.hosts {
            let h = Host::start(i, &id.bridge(), lab.shared.clone())?;
            lab.hosts.push(h);
        }
        let deadline = Instant::now() + self.boot_timeout;
        for h in &lab.hosts {
            let state = h.wait_ready(deadline.saturating_duration_since(Instant::now()))?;
            // Without its address a host is useless: fail loudly.
            let net = h.exec(&["systemctl", "is-active", "seaport-lab-net.service"])?;
            if net.stdout.trim() != "active" {
                let status = h
                    .exec(&[
                        "systemctl",
                        "status",
                        "--no-pager",
                        "seaport-lab-net.service",
                    ])
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                return Err(LabError::HostNetwork {
                    host: h.name().to_string(),
                    status,
                });
            }
            if state != "running" {
                let failed = h
                    .exec(&["systemctl", "--failed", "--no-legend", "--plain"])
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                tracing::warn!(host = h.name(), %state, failed = %failed.trim(), "host booted degraded");
            }
        }
        Ok(lab)
    }
}

/// A running lab: a bridge and its hosts. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    id: RunId,
    paths: LabPaths,
    shared: Arc<RunShared>,
    hosts: Vec<Host>,
    slot: Slot,
    lock: Option<LockGuard>,
    network: Option<LockGuard>,
    turn: Option<ProcessTurn>,
    down: bool,
}

impl Lab {
    /// A builder with the defaults: 1 host, the default base, the default
    /// directories.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// Brings up `n` hosts with the defaults.
    pub fn up(n: usize) -> Result<Lab, LabError> {
        Lab::builder().hosts(n).up()
    }

    /// The run id (`spl-xxxxxx`), also the bridge name.
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// The machine-side bridge.
    pub fn bridge(&self) -> String {
        self.id.bridge()
    }

    /// The machine's address on the bridge, where a coordinator listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.slot.gateway()
    }

    /// The slot of 198.18.0.0/24 the lab holds.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The run's directory (state.json, host roots, console logs).
    pub fn run_dir(&self) -> &Path {
        &self.shared.run_dir
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host number `index` (0-based).
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// The host with this name (full, or short like `h2`).
    pub fn host_named(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .iter()
            .find(|h| h.name() == name || h.name().ends_with(&format!("-{name}")))
            .ok_or_else(|| LabError::NoSuchHost(name.to_string()))
    }

    /// A copy of the run record (what `seaport-lab status` shows).
    pub fn record(&self) -> RunRecord {
        self.shared
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a coordinator the run owns, so cleanup can stop it.
    pub fn record_coordinator(&self, c: Option<crate::state::CoordinatorRecord>) {
        self.shared.update(|r| r.coordinator = c);
    }

    /// Tears the lab down and reports anything that could not be removed.
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        for h in &self.hosts {
            h.begin_stop();
        }
        for h in &self.hosts {
            h.finish_stop(Duration::from_secs(15));
        }
        self.hosts.clear();
        let mut problems = Vec::new();
        // Stops anything still running from the record, then unmounts and
        // removes the run directory and the bridge.
        let mut removed = cleanup::Removed::default();
        if let Err(e) = cleanup::remove_run(&self.paths, &self.id, &mut removed) {
            problems.push(e.to_string());
        }
        if let Err(e) = mounts::remove_tree(&self.shared.run_dir) {
            problems.push(e.to_string());
        }
        self.lock = None;
        self.network = None;
        self.turn = None;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown(problems.join("; ")))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("seaport-lab: {e}; run `seaport-lab down --all` to finish");
        }
    }
}
