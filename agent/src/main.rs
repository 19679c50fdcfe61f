//! The `seaport-agent` binary: parse flags, set up logging, call the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::Instrument;

use seaport_agent::{facts, HostIdentity, JoinOptions, SystemFacts, DEFAULT_STATE_DIR};

/// The Seaport host agent.
#[derive(Debug, Parser)]
#[command(name = "seaport-agent", version, about)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this host with a coordinator (once).
    Join {
        /// Coordinator address, HOST:PORT; a site with several
        /// coordinators: all of them, HOST:PORT,HOST:PORT,... (the agent
        /// goes to the one that leads and fails over to the others).
        #[arg(long)]
        coordinator: String,
        /// Join token from `seaport token create`.
        #[arg(long, env = "SEAPORT_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The coordinator CA's pin, sha256:HEX.
        #[arg(long)]
        ca_pin: String,
        /// Where the agent keeps its identity and state.
        #[arg(long, env = "SEAPORT_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run the agent service: keep a session to the coordinator, fetch the
    /// layers of assigned images, serve pieces to peers.
    Run {
        /// Where the agent keeps its identity and state.
        #[arg(long, env = "SEAPORT_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(flatten)]
        distribution: seaport_agent::distribution::DistributionArgs,
        /// Root of cluster data (each cluster's rootfs is unpacked under it).
        #[arg(long, env = "SEAPORT_DATA_ROOT", default_value = seaport_agent::apply::DEFAULT_DATA_ROOT)]
        data_root: PathBuf,
        #[command(flatten)]
        trust: seaport_agent::trust::TrustArgs,
    },
    /// Install a cluster image on this host from a local OCI layout.
    Apply {
        #[command(flatten)]
        args: Box<seaport_agent::cli_apply::ApplyArgs>,
        /// Where the agent keeps its state (the step journal).
        #[arg(long, env = "SEAPORT_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Undo a cluster's install on this host.
    Reset {
        #[command(flatten)]
        args: seaport_agent::cli_apply::ResetArgs,
        /// Where the agent keeps its state (the step journal).
        #[arg(long, env = "SEAPORT_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    #[command(flatten)]
    About(seaport_shared::cli_docs::About),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    seaport_shared::logging::init("info", cli.verbose);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use clap::CommandFactory;
    // apply and reset are synchronous (blocking HTTP to the local registry).
    let command = match cli.command {
        Command::About(about) => return Ok(about.run(Cli::command())?),
        Command::Apply { args, state_dir } => {
            return seaport_agent::cli_apply::run_apply(*args, state_dir)
        }
        Command::Reset { args, state_dir } => {
            return seaport_agent::cli_apply::run_reset(args, state_dir)
        }
        other => other,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        Command::Join {
            coordinator,
            token,
            ca_pin,
            state_dir,
        } => rt.block_on(async {
            let host = HostIdentity::from_system()?;
            let opts = JoinOptions {
                coordinator: coordinator.clone(),
                token,
                ca_pin,
                state_dir: state_dir.clone(),
                host,
                ips: facts::host_ips(),
            };
            let joined = seaport_agent::join(&opts)
                .await
                .with_context(|| format!("joining the coordinator at {coordinator}"))?;
            println!(
                "joined as node {} (identity in {})",
                joined.node_id,
                state_dir.join("identity").display()
            );
            Ok(())
        }),
        Command::Run {
            state_dir,
            distribution,
            data_root,
            trust,
        } => rt.block_on(async {
            let host = HostIdentity::from_system()?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(
                async move {
                    shutdown_signal().await;
                    tracing::info!("stopping");
                    let _ = tx.send(true);
                }
                .instrument(tracing::info_span!("signals")),
            );
            seaport_agent::service::run(
                seaport_agent::service::RunSettings {
                    state_dir,
                    distribution: distribution.options(),
                    data_root,
                    trust: trust.local(),
                },
                SystemFacts::new(host),
                rx,
            )
            .await;
            Ok(())
        }),
        Command::Apply { .. } | Command::Reset { .. } | Command::About(_) => {
            unreachable!("handled above")
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
