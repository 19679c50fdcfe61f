//! The Seaport side of the lab: finding the built binaries, running a
//! coordinator on the bridge as a child process we own, creating join
//! tokens, installing the agent into hosts the way an operator does it, and
//! reading `seaport nodes --json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cmd::{self, CmdError};
use crate::host::{Host, HostError};
use crate::procs;
use crate::wait::{self, WaitError};

/// Where the agent's unit is installed in a host.
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/seaport-agent.service";
/// Where the agent binary is installed in a host.
pub const AGENT_BIN_PATH: &str = "/usr/local/bin/seaport-agent";
/// Port the lab's coordinator listens on.
pub const COORDINATOR_PORT: u16 = 7443;

/// Errors of the Seaport side.
#[derive(Debug, thiserror::Error)]
pub enum SeaportError {
    #[error(
        "{what} not found at {path}; build it with `cargo build -p seaport -p seaport-agent` \
         (or point SEAPORT_BIN_DIR at the directory holding seaport and seaport-agent)"
    )]
    Missing { what: String, path: PathBuf },
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` printed output that is not the expected JSON ({source}): {output}")]
    Json {
        command: String,
        output: String,
        source: serde_json::Error,
    },
    #[error(
        "the coordinator exited before it listened on {listen} (status {status}); its log: {log}"
    )]
    CoordinatorExited {
        listen: String,
        status: String,
        log: String,
    },
    #[error("installing the agent in host {host} failed at `{step}`: {detail}")]
    Install {
        host: String,
        step: String,
        detail: String,
    },
}

/// The binaries and unit file the lab installs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `seaport` CLI and coordinator.
    pub seaport: PathBuf,
    /// The `seaport-agent` binary copied into hosts.
    pub agent: PathBuf,
    /// `packaging/systemd/seaport-agent.service`.
    pub agent_unit: PathBuf,
}

/// The workspace root (this crate is `tests/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Binaries {
    /// `seaport --root ROOT ARGS` as a user runs it, with `envs` set:
    /// (success, stdout, stderr).
    pub fn seaport_env(
        &self,
        root: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (bool, String, String) {
        let (code, out, err) = self.seaport_status(root, args, envs);
        (code == 0, out, err)
    }

    /// `seaport --root ROOT ARGS` with `envs` set: (exit code, stdout,
    /// stderr); -1 when a signal ended it.
    pub fn seaport_status(
        &self,
        root: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (i32, String, String) {
        let out = Command::new(&self.seaport)
            .arg("--root")
            .arg(root)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.seaport.display()));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `seaport --root ROOT ARGS`: (success, stdout, stderr).
    pub fn seaport_out(&self, root: &Path, args: &[&str]) -> (bool, String, String) {
        self.seaport_env(root, args, &[])
    }

    /// `seaport --root ROOT ARGS`, which must succeed; its stdout.
    pub fn seaport_ok(&self, root: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.seaport_out(root, args);
        assert!(ok, "seaport {args:?} failed: {out}{err}");
        out
    }

    /// Waits (30 s at most) until `seaport status` shows the balancer of
    /// the host `ip` with exactly one registry backend, `backend`
    /// (`IP:PORT`), healthy.
    pub fn wait_registry_backend_up(
        &self,
        root: &Path,
        ip: &str,
        backend: &str,
    ) -> Result<(), WaitError> {
        wait::until(
            "the host's registry backend up",
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                let (_, out, _) = self.seaport_out(root, &["status", "--json"]);
                let s: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
                let host = s[0]["hosts"]
                    .as_array()
                    .and_then(|hs| hs.iter().find(|h| h["ip"] == ip))
                    .cloned()
                    .unwrap_or_default();
                let regs = &host["balancer"]["registry"];
                let up = regs.as_array().is_some_and(|a| {
                    a.len() == 1 && a[0]["addr"] == backend && a[0]["healthy"] == true
                });
                if up {
                    Ok(())
                } else {
                    Err(format!("{regs}"))
                }
            },
        )
    }

    /// `seaport --root ROOT ARGS`, which must succeed, its stdout as JSON.
    pub fn seaport_json(&self, root: &Path, args: &[&str]) -> serde_json::Value {
        let out = self.seaport_ok(root, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("seaport {args:?}: {e}: {out}"))
    }

    /// The binaries in `dir` and the unit from the workspace's packaging/.
    pub fn in_dir(dir: &Path) -> Result<Self, SeaportError> {
        let b = Binaries {
            seaport: dir.join("seaport"),
            agent: dir.join("seaport-agent"),
            agent_unit: std::env::var_os("SEAPORT_AGENT_UNIT")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    workspace_root().join("packaging/systemd/seaport-agent.service")
                }),
        };
        for (what, path) in [
            ("the seaport binary", &b.seaport),
            ("the seaport-agent binary", &b.agent),
            ("the agent's systemd unit", &b.agent_unit),
        ] {
            if !path.is_file() {
                return Err(SeaportError::Missing {
                    what: what.into(),
                    path: path.clone(),
                });
            }
        }
        Ok(b)
    }

    /// The directory holding the binaries: `SEAPORT_BIN_DIR`, else the
    /// target directory the running executable was built in (a test binary
    /// lives in `target/debug/deps`, `seaport-lab` in `target/debug`).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("SEAPORT_BIN_DIR") {
            return PathBuf::from(d);
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                let dir = if dir.file_name().is_some_and(|n| n == "deps") {
                    dir.parent().unwrap_or(dir)
                } else {
                    dir
                };
                return dir.to_path_buf();
            }
        }
        workspace_root().join("target/debug")
    }

    /// For tests: builds `seaport` and `seaport-agent` (a no-op when they are
    /// up to date) into the target directory of the running test, then finds
    /// them there.
    pub fn build_for_tests() -> Result<Self, SeaportError> {
        let dir = Self::default_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.current_dir(workspace_root())
            .args(["build", "-p", "seaport", "-p", "seaport-agent"])
            // The test image's API server stand-in and kubeadm helper.
            .args(["-p", "seaport-kube-double"]);
        // Build into the directory the test runs from, whatever profile.
        if let Some(target) = dir.parent() {
            c.env("CARGO_TARGET_DIR", target);
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        cmd::run(&mut c)?;
        Self::in_dir(&dir)
    }
}

/// One node as `seaport nodes --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Node {
    pub node_id: String,
    pub hostname: String,
    #[serde(default)]
    pub ips: Vec<String>,
    pub status: String,
    /// When the coordinator last heard from the node (RFC 3339 text or
    /// seconds since the epoch, as the coordinator prints it).
    #[serde(default)]
    pub last_seen: Option<serde_json::Value>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub cert_expires: Option<serde_json::Value>,
}

impl Node {
    /// `last_seen` as seconds since the epoch, if the coordinator gave one.
    pub fn last_seen_unix(&self) -> Option<i64> {
        match self.last_seen.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.parse::<i64>().ok().or_else(|| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| t.unix_timestamp())
            }),
            _ => None,
        }
    }
}

/// A join token as `seaport token create --json` prints it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Token {
    pub token: String,
    pub ca_pin: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub uses: Option<u64>,
}

fn seaport_json<T: serde::de::DeserializeOwned>(
    bins: &Binaries,
    root: &Path,
    args: &[&str],
) -> Result<T, SeaportError> {
    let mut c = Command::new(&bins.seaport);
    c.arg("--root").arg(root).args(args);
    let out = cmd::run(&mut c)?;
    serde_json::from_str(&out.stdout).map_err(|source| SeaportError::Json {
        command: cmd::describe(&c),
        output: out.stdout.clone(),
        source,
    })
}

/// `seaport --root ROOT nodes --json`.
pub fn nodes(bins: &Binaries, root: &Path) -> Result<Vec<Node>, SeaportError> {
    seaport_json(bins, root, &["nodes", "--json"])
}

/// `seaport --root ROOT token create --ttl TTL --uses N --json`.
pub fn create_token(
    bins: &Binaries,
    root: &Path,
    ttl: &str,
    uses: u32,
) -> Result<Token, SeaportError> {
    seaport_json(
        bins,
        root,
        &[
            "token",
            "create",
            "--ttl",
            ttl,
            "--uses",
            &uses.to_string(),
            "--json",
        ],
    )
}

/// A coordinator process we own (`seaport coordinator serve`); stopped with
/// SIGTERM when dropped.
#[derive(Debug)]
pub struct Coordinator {
    bins: Binaries,
    root: PathBuf,
    listen: String,
    extra_args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Coordinator {
    /// `seaport --root ROOT coordinator init`.
    pub fn init(bins: &Binaries, root: &Path) -> Result<(), SeaportError> {
        let mut c = Command::new(&bins.seaport);
        c.arg("--root").arg(root).args(["coordinator", "init"]);
        cmd::run(&mut c)?;
        Ok(())
    }

    /// Starts `seaport --root ROOT coordinator serve --listen LISTEN` and
    /// waits until it listens (a UDP socket on the port). Its output goes to
    /// `ROOT.log` beside the root (for `/tmp/x/coordinator`, `/tmp/x/coordinator.log`).
    pub fn start(bins: &Binaries, root: &Path, listen: &str) -> Result<Self, SeaportError> {
        Self::start_with(bins, root, listen, &[])
    }

    /// As [`Coordinator::start`], with more `coordinator serve` flags (for
    /// example `--bootstrap-listen ADDR:PORT`).
    pub fn start_with(
        bins: &Binaries,
        root: &Path,
        listen: &str,
        extra_args: &[&str],
    ) -> Result<Self, SeaportError> {
        let log = root.with_extension("log");
        let mut me = Coordinator {
            bins: bins.clone(),
            root: root.to_path_buf(),
            listen: listen.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            log,
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> Result<(), SeaportError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| SeaportError::Spawn {
                command: format!("the coordinator log {}", self.log.display()),
                source,
            })?;
        let err = out.try_clone().map_err(|source| SeaportError::Spawn {
            command: format!("the coordinator log {}", self.log.display()),
            source,
        })?;
        let mut c = Command::new(&self.bins.seaport);
        c.arg("--root")
            .arg(&self.root)
            .args(["coordinator", "serve", "--listen", &self.listen])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c.spawn().map_err(|source| SeaportError::Spawn {
            command: cmd::describe(&c),
            source,
        })?;
        let pid = child.id();
        self.child = Some(child);
        let listen = self.listen.clone();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("just spawned");
        let serve_info = self.root.join("coordinator/serve.json");
        let mut exited = None;
        let waited = wait::until(
            &format!("the coordinator to listen on {listen}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return Ok(());
                }
                // The coordinator writes its serve info once it listens:
                // a port check would also see another lab's coordinator.
                let serving = std::fs::read(&serve_info)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)));
                if serving {
                    Ok(())
                } else {
                    Err("not listening yet")
                }
            },
        );
        if let Some(status) = exited {
            self.child = None;
            return Err(SeaportError::CoordinatorExited {
                listen,
                status: status.to_string(),
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        waited?;
        Ok(())
    }

    /// The coordinator's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The address it listens on.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops it with SIGTERM and returns its exit status (SIGKILL after 20 s).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, SeaportError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        procs::signal(child.id(), Signal::SIGTERM);
        let status = wait::until(
            "the coordinator to exit after SIGTERM",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || match child.try_wait() {
                Ok(Some(s)) => Ok(s),
                _ => Err("still running"),
            },
        );
        match status {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.into())
            }
        }
    }

    /// Kills it with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            procs::signal(child.id(), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts it again after `stop`, with the same root and address.
    pub fn restart(&mut self) -> Result<(), SeaportError> {
        self.stop()?;
        self.spawn()
    }

    /// Starts it again with other `coordinator serve` flags (kept for later
    /// restarts).
    pub fn restart_with(&mut self, extra_args: &[&str]) -> Result<(), SeaportError> {
        self.stop()?;
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.spawn()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// True when a UDP socket is bound to `port` (IPv4 or IPv6).
pub fn udp_port_bound(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|local| format!("{local} ").ends_with(&want))
                })
            })
            .unwrap_or(false)
    })
}

/// Installs and enrolls the agent in `host` the way an operator does it:
/// binary to /usr/local/bin, the unit from packaging/ to /etc/systemd/system,
/// `seaport-agent join` with the token, then `systemctl enable --now`.
pub fn install_agent(
    host: &Host,
    bins: &Binaries,
    coordinator: &str,
    token: &Token,
) -> Result<(), SeaportError> {
    let fail = |step: &str, detail: String| SeaportError::Install {
        host: host.name().to_string(),
        step: step.to_string(),
        detail,
    };
    host.copy_in(&bins.agent, AGENT_BIN_PATH, 0o755)?;
    host.copy_in(&bins.agent_unit, AGENT_UNIT_PATH, 0o644)?;
    host.exec_ok(&["systemctl", "daemon-reload"])?;
    let join = host.exec(&[
        AGENT_BIN_PATH,
        "join",
        "--coordinator",
        coordinator,
        "--token",
        &token.token,
        "--ca-pin",
        &token.ca_pin,
    ])?;
    if !join.success() {
        return Err(fail(
            "seaport-agent join",
            format!("exit code {}: {}{}", join.code, join.stdout, join.stderr),
        ));
    }
    let enable = host.exec(&["systemctl", "enable", "--now", "seaport-agent.service"])?;
    if !enable.success() {
        let journal = host
            .journal(Some("seaport-agent.service"))
            .unwrap_or_default();
        return Err(fail(
            "systemctl enable --now seaport-agent",
            format!("{}\njournal:\n{journal}", enable.stderr.trim()),
        ));
    }
    Ok(())
}

/// Waits until `want(nodes)` holds, polling `seaport nodes --json`.
pub fn wait_for_nodes(
    bins: &Binaries,
    root: &Path,
    what: &str,
    timeout: Duration,
    want: impl Fn(&[Node]) -> bool,
) -> Result<Vec<Node>, SeaportError> {
    Ok(wait::until(
        what,
        timeout,
        Duration::from_millis(250),
        || match nodes(bins, root) {
            Ok(n) if want(&n) => Ok(n),
            Ok(n) => Err(serde_json::to_string(&n).unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        },
    )?)
}

/// The status of the node whose hostname is `hostname`.
pub fn status_of<'a>(nodes: &'a [Node], hostname: &str) -> Option<&'a str> {
    nodes
        .iter()
        .find(|n| n.hostname == hostname)
        .map(|n| n.status.as_str())
}

/// Builds `name` in the coordinator's image store from files of random
/// (incompressible) bytes, one layer per size in `layers`. The context goes
/// to `ctx`.
pub fn build_random_image(
    bins: &Binaries,
    root: &Path,
    ctx: &Path,
    name: &str,
    layers: &[u64],
) -> Result<(), SeaportError> {
    use std::io::{Read, Write};
    let io = |what: &str, source: std::io::Error| SeaportError::Spawn {
        command: format!("writing the build context {}: {what}", ctx.display()),
        source,
    };
    std::fs::create_dir_all(ctx).map_err(|e| io("mkdir", e))?;
    let mut kubefile = String::from("FROM scratch\n");
    let mut random = std::fs::File::open("/dev/urandom").map_err(|e| io("/dev/urandom", e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (i, size) in layers.iter().enumerate() {
        let file = format!("layer{i}.bin");
        let mut out = std::fs::File::create(ctx.join(&file)).map_err(|e| io(&file, e))?;
        let mut left = *size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            random
                .read_exact(&mut buf[..n])
                .map_err(|e| io("/dev/urandom", e))?;
            out.write_all(&buf[..n]).map_err(|e| io(&file, e))?;
            left -= n as u64;
        }
        kubefile.push_str(&format!("COPY {file} .\n"));
    }
    std::fs::write(ctx.join("Kubefile"), kubefile).map_err(|e| io("Kubefile", e))?;
    let mut c = Command::new(&bins.seaport);
    c.arg("--root")
        .arg(root)
        .arg("build")
        .arg("-f")
        .arg(ctx.join("Kubefile"))
        .arg("-t")
        .arg(name)
        .arg(ctx);
    cmd::run(&mut c)?;
    Ok(())
}

/// `seaport distribute IMAGE --nodes N,...` against the running coordinator.
pub fn distribute(
    bins: &Binaries,
    root: &Path,
    image: &str,
    nodes: &[&str],
) -> Result<(), SeaportError> {
    let mut c = Command::new(&bins.seaport);
    c.arg("--root")
        .arg(root)
        .args(["distribute", image, "--nodes", &nodes.join(",")]);
    cmd::run(&mut c)?;
    Ok(())
}

/// `seaport distribute status --json`, as JSON.
pub fn distribution_status(
    bins: &Binaries,
    root: &Path,
) -> Result<serde_json::Value, SeaportError> {
    seaport_json(bins, root, &["distribute", "status", "--json"])
}

/// The progress entry of `node` (hostname) for `image` in a status.
pub fn node_progress<'a>(
    status: &'a serde_json::Value,
    image: &str,
    hostname: &str,
) -> Option<&'a serde_json::Value> {
    status["images"]
        .as_array()?
        .iter()
        .find(|i| i["image"] == image)?["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["hostname"] == hostname)
}

/// Waits until `want(status)` holds, polling `seaport distribute status --json`.
pub fn wait_for_distribution(
    bins: &Binaries,
    root: &Path,
    what: &str,
    timeout: Duration,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, SeaportError> {
    Ok(wait::until(
        what,
        timeout,
        Duration::from_millis(250),
        || match distribution_status(bins, root) {
            Ok(s) if want(&s) => Ok(s),
            Ok(s) => Err(s.to_string()),
            Err(e) => Err(e.to_string()),
        },
    )?)
}

/// Bytes the machine has sent into the lab bridge (what the coordinator
/// and anything else on the machine side sent to hosts).
pub fn bridge_tx_bytes(bridge: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{bridge}/statistics/tx_bytes"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_json_of_the_contract_parses() {
        let text = r#"[{"node_id":"n1","hostname":"spl-000001-h1","ips":["198.18.0.11"],
            "status":"online","last_seen":"2026-01-01T00:00:00Z","agent_version":"0.1.0",
            "cert_expires":"2026-02-01T00:00:00Z"}]"#;
        let nodes: Vec<Node> = serde_json::from_str(text).unwrap();
        assert_eq!(status_of(&nodes, "spl-000001-h1"), Some("online"));
        assert_eq!(status_of(&nodes, "spl-000001-h2"), None);
        assert_eq!(nodes[0].last_seen_unix(), Some(1767225600));
    }

    #[test]
    fn a_bound_udp_port_is_seen() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(udp_port_bound(sock.local_addr().unwrap().port()));
    }
}
