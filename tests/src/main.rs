//! `seaport-lab`: bring lab hosts up and keep them running in the background,
//! look at them, run commands in them, and take them down.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use seaport_lab::names::{LabPaths, RunId};
use seaport_lab::runs::{self, RunStatus};
use seaport_lab::seaport::{Binaries, Node};
use seaport_lab::Lab;
use tokio::signal::unix::{signal, SignalKind};

/// Real systemd hosts on one machine, each lab on a bridge of its own in
/// 198.18.0.0/24.
#[derive(Debug, Parser)]
#[command(name = "seaport-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring up hosts and keep them running after this command returns.
    Up(UpArgs),
    /// List the labs and hosts that run.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a host (name like spl-1a2b3c-h1, or h1).
    Exec {
        host: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Take a lab down (the only one, or RUN), or every lab and leftover.
    Down {
        /// The run id (spl-xxxxxx), when several labs run.
        run: Option<String>,
        /// Every lab `up` keeps, and leftovers of killed runs.
        #[arg(long, conflicts_with_all = ["run", "leftovers"])]
        all: bool,
        /// Only what killed runs left behind; every live lab stays.
        #[arg(long, conflicts_with = "run")]
        leftovers: bool,
    },
    /// Build the lab's example cluster image (the default CloudRootfs with
    /// this machine's containerd, runc and registry, and the recording
    /// kubeadm double) into the running lab's coordinator store.
    Image {
        /// The run id, when several labs run.
        run: Option<String>,
        /// The docker variant (seaport-test-docker:v1): this machine's
        /// docker.io binaries in cri/docker.tar.gz instead of containerd.
        #[arg(long)]
        docker: bool,
        /// Image store to build into (default: the lab coordinator's root).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Sign the image with this private key (`seaport sign`; the
        /// passphrase from SEAPORT_KEY_PASSWORD or the terminal).
        #[arg(long, value_name = "NAME.key")]
        sign_key: Option<PathBuf>,
        /// Directory holding the seaport binary (default: beside this program).
        #[arg(long, env = "SEAPORT_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Print shell assignments for the running lab: SEAPORT_ROOT (its
    /// coordinator's root) and LAB_H1, LAB_H2, ... (host IPs).
    Env {
        /// The run id, when several labs run.
        run: Option<String>,
    },
    /// Internal: the background process that owns a lab brought up by `up`.
    #[command(hide = true)]
    Keep {
        #[arg(long)]
        run_id: String,
        #[command(flatten)]
        up: UpArgs,
    },
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Also run a coordinator on the lab's gateway (port 7443) and enroll an agent in
    /// every host (as systemd services), and print the nodes.
    #[arg(long)]
    agents: bool,
    /// Directory holding the seaport and seaport-agent binaries (default:
    /// beside this program).
    #[arg(long, env = "SEAPORT_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// With --agents: the coordinator trusts images signed by the public
    /// keys in DIR (`coordinator serve --trusted-keys`).
    #[arg(long, value_name = "DIR", requires = "agents")]
    trusted_keys: Option<PathBuf>,
    /// With --trusted-keys: unsigned images are refused.
    #[arg(long, requires = "trusted_keys")]
    require_signed: bool,
}

/// What the keeper tells `up` once the lab is ready (one JSON line).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Ready {
    error: Option<String>,
    record: Option<seaport_lab::state::RunRecord>,
    nodes: Vec<Node>,
}

fn main() -> ExitCode {
    seaport_shared::logging::init("warn", 0);
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seaport-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let paths = LabPaths::from_env();
    match cli.command {
        Cmd::Up(args) => up(&paths, args),
        Cmd::Keep { run_id, up } => keep(&paths, &run_id, up),
        Cmd::Status { json } => {
            let runs = runs::status(&paths);
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print_status(&runs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Image {
            run,
            docker,
            root,
            sign_key,
            bin_dir,
        } => {
            let root = match root {
                Some(r) => r,
                None => {
                    let rec = runs::find_run(&paths, run.as_deref())?;
                    rec.coordinator
                        .context("this lab has no coordinator: bring it up with `up --agents`, or give --root")?
                        .root
                }
            };
            let bins = Binaries::in_dir(&bin_dir.unwrap_or_else(Binaries::default_dir))?;
            let work = tempfile::tempdir().context("creating a work directory")?;
            let runtime = if docker {
                seaport_lab::testimage::TestRuntime::Docker
            } else {
                seaport_lab::testimage::TestRuntime::Containerd
            };
            let img = seaport_lab::testimage::build_test_image_with(
                work.path(),
                &bins.seaport,
                &root,
                runtime,
            )?;
            println!(
                "built {} ({}) into {}",
                img.name,
                img.digest,
                root.display()
            );
            if let Some(key) = sign_key {
                let status = Command::new(&bins.seaport)
                    .arg("--root")
                    .arg(&root)
                    .arg("sign")
                    .arg("--key")
                    .arg(&key)
                    .arg(&img.name)
                    .status()
                    .context("running seaport sign")?;
                if !status.success() {
                    bail!("seaport sign --key {} {} failed", key.display(), img.name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Env { run } => {
            let rec = runs::find_run(&paths, run.as_deref())?;
            if let Some(c) = &rec.coordinator {
                println!("SEAPORT_ROOT={}", c.root.display());
            }
            for (i, h) in rec.hosts.iter().enumerate() {
                println!("LAB_H{}={}", i + 1, h.ip);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { host, command } => {
            let out = runs::exec(&paths, &host, &command)?;
            std::io::stdout().write_all(out.stdout.as_bytes())?;
            std::io::stderr().write_all(out.stderr.as_bytes())?;
            Ok(ExitCode::from(out.code.clamp(0, 255) as u8))
        }
        Cmd::Down {
            run,
            all,
            leftovers,
        } => {
            let removed = if all {
                runs::down_all(&paths)?
            } else if leftovers {
                runs::down_leftovers(&paths)?
            } else {
                let rec = runs::find_run(&paths, run.as_deref())?;
                runs::down(&paths, &rec.id)?
            };
            if removed.is_empty() {
                println!("nothing to remove");
            } else {
                for r in &removed.runs {
                    println!("removed run {r}");
                }
                for i in &removed.interfaces {
                    println!("removed interface {i}");
                }
                for p in &removed.processes {
                    println!("stopped {p}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(runs: &[RunStatus]) {
    if runs.is_empty() {
        println!("no lab running");
        return;
    }
    for r in runs {
        println!(
            "{}  slot {}  bridge {} {}/{}  owner pid {}{}",
            r.record.id,
            r.record.slot.index(),
            r.record.bridge,
            r.record.gateway,
            seaport_lab::names::PREFIX_LEN,
            r.record.owner_pid,
            if r.owner_alive {
                ""
            } else {
                " (gone: `seaport-lab down --all` cleans up)"
            }
        );
        if let Some(c) = &r.record.coordinator {
            println!("  coordinator {}  root {}", c.listen, c.root.display());
        }
        for h in &r.hosts {
            println!(
                "  {:<16} {:<13} {}",
                h.name,
                h.ip,
                match (&h.running, &h.system_state) {
                    (true, Some(s)) => s.as_str(),
                    (true, None) => "running",
                    (false, _) => "stopped",
                }
            );
        }
    }
}

fn up(paths: &LabPaths, args: UpArgs) -> Result<ExitCode> {
    seaport_lab::lab::preflight()?;
    let id = RunId::generate()?;
    std::fs::create_dir_all(&paths.runs)
        .with_context(|| format!("creating {}", paths.runs.display()))?;
    let log_path = paths.keeper_log(&id);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut c = Command::new(exe);
    c.args([
        "keep",
        "--run-id",
        id.as_str(),
        "--hosts",
        &args.hosts.to_string(),
    ]);
    if args.agents {
        c.arg("--agents");
    }
    if let Some(d) = &args.trusted_keys {
        c.arg("--trusted-keys").arg(d);
    }
    if args.require_signed {
        c.arg("--require-signed");
    }
    if let Some(d) = &args.bin_dir {
        c.arg("--bin-dir").arg(d);
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the background lab process")?;
    eprintln!(
        "seaport-lab: bringing up {} hosts as {id} (log {})",
        args.hosts,
        log_path.display()
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading from the background lab process")?;
    let ready: Ready = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(_) => {
            let _ = child.wait();
            bail!(
                "the background lab process ended before the lab was ready; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    };
    if let Some(e) = ready.error {
        let _ = child.wait();
        bail!("{e}");
    }
    let rec = ready.record.context("the lab process sent no run record")?;
    println!(
        "lab {} is up (bridge {}, machine side {})",
        rec.id, rec.bridge, rec.gateway
    );
    for h in &rec.hosts {
        println!("  host {:<16} {}", h.name, h.ip);
    }
    if let Some(c) = &rec.coordinator {
        println!(
            "coordinator {} (seaport --root {})",
            c.listen,
            c.root.display()
        );
        println!(
            "  {:<16} {:<14} {:<8} node id",
            "hostname", "address", "status"
        );
        for n in &ready.nodes {
            println!(
                "  {:<16} {:<14} {:<8} {}",
                n.hostname,
                n.ips.first().map(String::as_str).unwrap_or("-"),
                n.status,
                n.node_id
            );
        }
    }
    println!("next: seaport-lab exec h1 -- systemctl status; seaport-lab status; seaport-lab down");
    Ok(ExitCode::SUCCESS)
}

/// The background owner of a lab: brings it up, reports on stdout, then
/// waits for SIGTERM (from `down`) and tears it down.
fn keep(paths: &LabPaths, run_id: &str, args: UpArgs) -> Result<ExitCode> {
    // Our own session: the terminal that ran `up` may close.
    let _ = nix::unistd::setsid();
    // Handlers, not a blocked mask: a blocked mask would be inherited by
    // the coordinator and nspawn, which then could not be stopped with
    // SIGTERM. Registered first, so a `down` during `up` is not lost.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let (mut term, mut int, mut hup) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })
        .context("installing signal handlers")?;

    let id = RunId::parse(run_id)?;
    let report = |ready: &Ready| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", serde_json::to_string(ready).unwrap_or_default());
        let _ = out.flush();
    };
    let result = (|| -> Result<(Lab, Option<seaport_lab::seaport::Coordinator>, Vec<Node>)> {
        let lab = Lab::builder()
            .hosts(args.hosts)
            .paths(paths.clone())
            .run_id(id.clone())
            .up()?;
        if !args.agents {
            return Ok((lab, None, Vec::new()));
        }
        let dir = args.bin_dir.clone().unwrap_or_else(Binaries::default_dir);
        let bins = Binaries::in_dir(&dir)?;
        let root = lab.run_dir().join("coordinator");
        let mut serve_args: Vec<String> = Vec::new();
        if let Some(d) = &args.trusted_keys {
            let d = std::path::absolute(d).context("the --trusted-keys directory")?;
            serve_args.push("--trusted-keys".into());
            serve_args.push(d.display().to_string());
        }
        if args.require_signed {
            serve_args.push("--require-signed".into());
        }
        let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
        let (c, nodes) = runs::enroll_all_with(&lab, &bins, &root, &serve_args)?;
        Ok((lab, Some(c), nodes))
    })();
    let (lab, coordinator, nodes) = match result {
        Ok(v) => v,
        Err(e) => {
            report(&Ready {
                error: Some(format!("{e:#}")),
                record: None,
                nodes: Vec::new(),
            });
            return Ok(ExitCode::FAILURE);
        }
    };
    report(&Ready {
        error: None,
        record: Some(lab.record()),
        nodes,
    });
    // Let `up` (or a shell's command substitution) see the end of our output.
    if let Ok(devnull) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(devnull);
    }
    let sig = rt.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        }
    });
    tracing::info!(signal = sig, "taking the lab down");
    drop(coordinator);
    lab.down()?;
    Ok(ExitCode::SUCCESS)
}
