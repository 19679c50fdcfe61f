//! `seaport check`: every host's preflight checks, as a table per host or
//! JSON, changing nothing. Exits with [`super::exit::PREFLIGHT`] when any
//! host has an error.

use std::path::{Path, PathBuf};

use anyhow::Context;

use seaport_shared::cluster::ClusterName;
use seaport_shared::env::key_value;
use seaport_shared::preflight::{HostChecks, Ignore, Level, UnknownCheck};
use seaport_shared::wire::{AdminRequest, AdminResponse, CheckRequest};

use super::access::runtime;
use super::cluster::DEFAULT_CLUSTER;
use crate::admin::AdminClient;

/// The step a host records its preflight table under.
pub(super) const PREFLIGHT_STEP: &str = "preflight";

/// One `--ignore-preflight` name, checked.
pub(super) fn check_name(s: &str) -> Result<String, UnknownCheck> {
    Ignore::parse(&[s]).map(|_| s.trim().to_ascii_lowercase())
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("hosts").required(true).multiple(true).args(["file", "masters", "nodes"])))]
pub struct CheckArgs {
    /// The hosts of a Clusterfile (and its image, for the disk check).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["masters", "nodes", "image", "cluster"])]
    pub file: Option<PathBuf>,
    /// Master IPs, comma-separated; the first is master0 (and the registry).
    #[arg(short = 'm', long, value_delimiter = ',')]
    pub masters: Vec<String>,
    /// Worker IPs, comma-separated.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The image to install, to check free disk against its size.
    #[arg(long)]
    pub image: Option<String>,
    /// The cluster (hosts it has already are compared for hostnames, and
    /// what its install holds is not an error).
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub cluster: ClusterName,
    /// Cluster env, KEY=VALUE (repeatable): `RegistryPort` moves the
    /// registry's port.
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Checks whose errors are shown as `ignored`, comma-separated, or all.
    #[arg(long, value_delimiter = ',', value_name = "CHECK", value_parser = check_name)]
    pub ignore_preflight: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

/// `seaport check`.
pub(super) fn check(root: &Path, args: CheckArgs) -> anyhow::Result<()> {
    let clusterfile = match &args.file {
        Some(f) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?)
        }
        None => None,
    };
    if let (Some(text), Some(f)) = (&clusterfile, &args.file) {
        // Checked here first, so a broken file never reaches the coordinator.
        crate::operations::spec_of_clusterfile(text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    }
    let req = CheckRequest {
        clusterfile,
        cluster: args.cluster.clone(),
        masters: args.masters.clone(),
        nodes: args.nodes.clone(),
        image: args.image.clone(),
        env: args.env.clone(),
        ignore_preflight: args.ignore_preflight.clone(),
    };
    let hosts = runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let resp = client
            .request(&AdminRequest::Check(req))
            .await
            .context("asking the hosts' agents for preflight checks");
        client.close().await;
        match resp? {
            AdminResponse::Checked(h) => Ok(h),
            AdminResponse::Refused { reason } => anyhow::bail!("{reason}"),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hosts)?);
    } else {
        print!("{}", render(&hosts));
    }
    let errors: usize = hosts.iter().map(|h| h.errors().count()).sum();
    if errors > 0 {
        let failing: Vec<&str> = hosts
            .iter()
            .filter(|h| h.errors().next().is_some())
            .map(|h| h.ip.as_str())
            .collect();
        return Err(super::Exit::new(
            super::exit::PREFLIGHT,
            format!(
                "{errors} preflight error(s) on {}: fix them, or pass --ignore-preflight CHECK,... to `seaport run`/`apply`/`join`",
                failing.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

/// Every host's table, then a summary line.
fn render(hosts: &[HostChecks]) -> String {
    let mut out = String::new();
    for h in hosts {
        out.push_str(&format!(
            "{} ({}, {}, node {})\n",
            h.ip,
            if h.hostname.is_empty() {
                "hostname unknown"
            } else {
                &h.hostname
            },
            h.role,
            if h.node_id.is_empty() {
                "none"
            } else {
                &h.node_id
            }
        ));
        for line in h.table().lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push('\n');
    }
    let count = |l: Level| -> usize {
        hosts
            .iter()
            .map(|h| h.checks.iter().filter(|c| c.level == l).count())
            .sum()
    };
    out.push_str(&format!(
        "{} hosts: {} errors, {} warnings, {} ignored\n",
        hosts.len(),
        count(Level::Error),
        count(Level::Warning),
        count(Level::Ignored)
    ));
    out
}
