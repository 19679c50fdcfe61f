//! `seaport nodes [--json]`, `seaport nodes remove NODE`, and
//! `seaport nodes approve|unapprove NODE --ip IP`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::access::{with_coordinator, Offline};
use crate::daemon;
use seaport_shared::clock::rfc3339;
use seaport_shared::wire::{AdminRequest, AdminResponse, NodeAddress, NodeInfo};

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: Option<NodesCommand>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the address `coordinator serve` listens on.
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodesCommand {
    /// Revoke a node (by node id or hostname): its certificate is refused
    /// from now on, and it comes back only with `seaport token create --node`.
    Remove {
        /// Node id or hostname.
        node: String,
    },
    /// Bind host IPs to a node on your word, for addresses its connection
    /// does not come from (NAT, another interface). Plans place a host's
    /// tasks on a node only for IPs bound by its connection or approved.
    Approve {
        /// Node id or hostname.
        node: String,
        /// Host IP to bind (repeat, or comma-separated).
        #[arg(long = "ip", required = true, value_delimiter = ',')]
        ips: Vec<String>,
    },
    /// Withdraw approvals given with `seaport nodes approve`.
    Unapprove {
        /// Node id or hostname.
        node: String,
        /// Host IP (repeat, or comma-separated).
        #[arg(long = "ip", required = true, value_delimiter = ',')]
        ips: Vec<String>,
    },
}

/// A node in `--json` output.
#[derive(Debug, Serialize)]
struct NodeView {
    node_id: String,
    hostname: String,
    /// What the node reports.
    ips: Vec<String>,
    /// Claimed and approved addresses with what binds each: `connection`
    /// (its session comes from it), `approved`, or `claimed` (only its word).
    addresses: Vec<NodeAddress>,
    connects_from: Option<String>,
    status: &'static str,
    last_seen: Option<String>,
    agent_version: String,
    cert_expires: String,
    enrolled_at: String,
    os: String,
    kernel: String,
    arch: String,
    cpus: u32,
    memory_total: u64,
}

pub(super) fn run(root: &Path, args: NodesArgs) -> anyhow::Result<()> {
    let explicit = args.coordinator.as_deref();
    match args.command {
        None => list(root, args.json, explicit),
        Some(NodesCommand::Remove { ref node }) => remove(root, node, explicit),
        Some(NodesCommand::Approve { ref node, ref ips }) => {
            approve(root, node, ips, true, explicit)
        }
        Some(NodesCommand::Unapprove { ref node, ref ips }) => {
            approve(root, node, ips, false, explicit)
        }
    }
}

fn list(root: &Path, json: bool, explicit: Option<&str>) -> anyhow::Result<()> {
    let nodes = with_coordinator(
        root,
        explicit,
        AdminRequest::ListNodes,
        Offline::Read,
        |resp| match resp {
            AdminResponse::Nodes(n) => Ok(n),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            Ok(store
                .nodes()?
                .into_iter()
                .map(|rec| daemon::node_info(rec, None, now))
                .collect())
        },
    )
    .context("listing nodes")?;
    if json {
        let views: Vec<NodeView> = nodes.into_iter().map(view).collect();
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print_table(&nodes);
    }
    Ok(())
}

fn view(n: NodeInfo) -> NodeView {
    NodeView {
        status: n.status.as_str(),
        last_seen: n.last_seen.map(rfc3339),
        cert_expires: rfc3339(n.cert_expires),
        enrolled_at: rfc3339(n.enrolled_at),
        node_id: n.node_id,
        hostname: n.hostname,
        ips: n.ips,
        addresses: n.addresses,
        connects_from: n.connects_from,
        agent_version: n.agent_version,
        os: n.os,
        kernel: n.kernel,
        arch: n.arch,
        cpus: n.cpus,
        memory_total: n.memory_total,
    }
}

/// `IP (binding)` for each address: only `connection` and `approved` bind
/// a host IP to the node.
fn addresses_cell(addresses: &[NodeAddress]) -> String {
    if addresses.is_empty() {
        return "-".into();
    }
    addresses
        .iter()
        .map(|a| format!("{} ({})", a.ip, a.binding.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(nodes: &[NodeInfo]) {
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            [
                n.node_id.clone(),
                n.hostname.clone(),
                addresses_cell(&n.addresses),
                n.status.as_str().to_string(),
                n.last_seen.map(rfc3339).unwrap_or_else(|| "never".into()),
                n.agent_version.clone(),
                rfc3339(n.cert_expires),
            ]
        })
        .collect();
    let header = [
        "NODE ID",
        "HOSTNAME",
        "IPS",
        "STATUS",
        "LAST SEEN",
        "VERSION",
        "CERT EXPIRES",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn remove(root: &Path, node: &str, explicit: Option<&str>) -> anyhow::Result<()> {
    let node_id = with_coordinator(
        root,
        explicit,
        AdminRequest::RemoveNode {
            node: node.to_string(),
        },
        Offline::Write,
        |resp| match resp {
            AdminResponse::Removed { node_id } => Ok(node_id),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            Ok(store.revoke(node, now)?)
        },
    )
    .with_context(|| format!("removing node {node}"))?;
    println!("revoked node {node_id}: its certificate is refused from now on");
    Ok(())
}

fn approve(
    root: &Path,
    node: &str,
    ips: &[String],
    approve: bool,
    explicit: Option<&str>,
) -> anyhow::Result<()> {
    let req = if approve {
        AdminRequest::ApproveIps {
            node: node.to_string(),
            ips: ips.to_vec(),
        }
    } else {
        AdminRequest::UnapproveIps {
            node: node.to_string(),
            ips: ips.to_vec(),
        }
    };
    let (node_id, approved) = with_coordinator(
        root,
        explicit,
        req,
        Offline::Write,
        |resp| match resp {
            AdminResponse::Approved {
                node_id,
                approved_ips,
            } => Ok((node_id, approved_ips)),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| Ok(store.approve_ips(node, ips, approve)?),
    )
    .with_context(|| format!("changing the approved IPs of node {node}"))?;
    let list = if approved.is_empty() {
        "none".to_string()
    } else {
        approved.join(", ")
    };
    println!("node {node_id}: approved IPs {list}");
    Ok(())
}
