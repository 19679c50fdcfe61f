//! `seaport coordinator init | serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::ca;
use crate::daemon::{self, Daemon, ServeOptions};

#[derive(Debug, clap::Subcommand)]
pub enum CoordinatorCommand {
    /// Create the coordinator's CA, certificates and state (an existing CA is kept).
    Init,
    /// Run the coordinator in the foreground until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Lifetime of node certificates; agents renew at two thirds of it.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub node_cert_ttl: Duration,
}

pub fn run(root: &Path, cmd: CoordinatorCommand) -> anyhow::Result<()> {
    match cmd {
        CoordinatorCommand::Init => init(root),
        CoordinatorCommand::Serve(args) => serve(root, args),
    }
}

fn init(root: &Path) -> anyhow::Result<()> {
    let report = ca::init(root)
        .with_context(|| format!("initializing coordinator state under {}", root.display()))?;
    if report.created_ca {
        println!(
            "created coordinator CA and state in {}",
            report.dir.display()
        );
    } else {
        println!(
            "kept the existing coordinator CA in {}",
            report.dir.display()
        );
    }
    println!("CA pin: {}", report.ca_pin);
    Ok(())
}

fn serve(root: &Path, args: ServeArgs) -> anyhow::Result<()> {
    if args.node_cert_ttl < Duration::from_secs(3) {
        anyhow::bail!("--node-cert-ttl must be at least 3s");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let daemon = Daemon::bind(
            root,
            ServeOptions {
                listen: args.listen,
                node_cert_ttl: args.node_cert_ttl,
            },
        )
        .with_context(|| {
            format!(
                "starting the coordinator from {}",
                daemon::state_dir(root).display()
            )
        })?;
        eprintln!("coordinator listening on {} (udp)", daemon.local_addr());
        daemon.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
