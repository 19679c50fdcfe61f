//! `seaport distribute IMAGE --nodes N,...`, `seaport distribute status`,
//! `seaport distribute cancel IMAGE`: ask the running coordinator to send an
//! image's layers to nodes, and show progress.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::access::runtime;
use crate::admin::{self, AdminClient};
use seaport_shared::distribution::DistributionStatus;
use seaport_shared::wire::{AdminRequest, AdminResponse};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DistributeArgs {
    #[command(subcommand)]
    pub command: Option<DistributeCommand>,
    /// Image name in the coordinator's store.
    pub image: Option<String>,
    /// Nodes to send it to: node ids, hostnames or IPs, comma-separated.
    #[arg(long, short = 'n', value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Wait until every node holds the whole image, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (e.g. 10m).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the address `coordinator serve` listens on.
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DistributeCommand {
    /// Progress per image, node and blob: bytes done and total.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop an image's assignment; agents then remove its blobs.
    Cancel {
        /// Image name.
        image: String,
    },
}

fn ask(root: &Path, explicit: Option<&str>, req: AdminRequest) -> anyhow::Result<AdminResponse> {
    let Some(addr) = admin::coordinator_addr(root, explicit)? else {
        anyhow::bail!(
            "no running coordinator found under {}: start `seaport coordinator serve` or pass --coordinator HOST:PORT",
            root.display()
        );
    };
    runtime()?.block_on(async {
        let client = AdminClient::connect(root, &addr).await?;
        let resp = client.request(&req).await;
        client.close().await;
        Ok(resp?)
    })
}

pub(super) fn run(root: &Path, args: DistributeArgs) -> anyhow::Result<()> {
    let explicit = args.coordinator.as_deref();
    match args.command {
        Some(DistributeCommand::Status { json }) => {
            let status = status(root, explicit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Some(DistributeCommand::Cancel { image }) => {
            match ask(root, explicit, AdminRequest::CancelDistribution { image })
                .context("cancelling the distribution")?
            {
                AdminResponse::Cancelled { image } => {
                    println!("{image}: assignment dropped");
                    Ok(())
                }
                other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
            }
        }
        None => {
            let Some(image) = args.image else {
                anyhow::bail!("name an image: seaport distribute IMAGE --nodes NODE,...");
            };
            let resp = ask(
                root,
                explicit,
                AdminRequest::Distribute {
                    image: image.clone(),
                    nodes: args.nodes,
                },
            )
            .with_context(|| format!("distributing {image}"))?;
            let AdminResponse::Distributing {
                image,
                manifest_digest,
                nodes,
            } = resp
            else {
                anyhow::bail!("unexpected answer from the coordinator: {resp:?}");
            };
            println!(
                "{image} ({manifest_digest}) assigned to {}",
                nodes.join(", ")
            );
            if args.wait {
                wait(root, explicit, &image, args.timeout)?;
            }
            Ok(())
        }
    }
}

fn status(root: &Path, explicit: Option<&str>) -> anyhow::Result<DistributionStatus> {
    match ask(root, explicit, AdminRequest::DistributionStatus)
        .context("asking the coordinator for distribution progress")?
    {
        AdminResponse::DistributionStatus(s) => Ok(s),
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
    }
}

fn wait(root: &Path, explicit: Option<&str>, image: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let s = status(root, explicit)?;
        let Some(img) = s.images.iter().find(|i| i.image == image) else {
            anyhow::bail!("{image} is no longer assigned");
        };
        let done = img.nodes.iter().filter(|n| n.complete).count();
        let bytes: u64 = img.nodes.iter().map(|n| n.done_bytes).sum();
        let total: u64 = img.nodes.iter().map(|n| n.total_bytes).sum();
        eprintln!(
            "{image}: {done}/{} nodes complete, {} of {}",
            img.nodes.len(),
            human(bytes),
            human(total)
        );
        if done == img.nodes.len() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("{image} not on every node after {timeout:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn human(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB", b as f64 / MIB)
}

fn print_status(s: &DistributionStatus) {
    println!(
        "coordinator sent {} of pieces since it started",
        human(s.served_bytes)
    );
    if s.images.is_empty() {
        println!("no images assigned");
    }
    for img in &s.images {
        println!(
            "{} ({}), {}",
            img.image,
            img.manifest_digest,
            human(img.total_bytes)
        );
        println!(
            "  {:<28} {:<8} {:>20} {:>7}  bad peers",
            "NODE", "STATE", "DONE", "PERCENT"
        );
        for n in &img.nodes {
            let state = if n.complete {
                "complete"
            } else if n.active {
                "fetching"
            } else {
                "waiting"
            };
            let pct = if n.total_bytes == 0 {
                100.0
            } else {
                n.done_bytes as f64 * 100.0 / n.total_bytes as f64
            };
            let name = if n.hostname.is_empty() {
                &n.node_id
            } else {
                &n.hostname
            };
            println!(
                "  {:<28} {:<8} {:>20} {:>6.1}%  {}",
                name,
                state,
                format!("{}/{}", human(n.done_bytes), human(n.total_bytes)),
                pct,
                n.bad_peers.join(",")
            );
        }
    }
}
