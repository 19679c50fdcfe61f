//! `seaport nodes [--json]` and `seaport nodes remove NODE`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::admin::{self, AdminClient, AdminError};
use crate::ca::CoordinatorPaths;
use crate::daemon;
use crate::state::{StateError, Store};
use seaport_shared::wire::{AdminRequest, AdminResponse, NodeInfo};

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: Option<NodesCommand>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT); defaults to the address
    /// `coordinator serve` listens on.
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodesCommand {
    /// Revoke a node (by node id or hostname): its certificate is refused from now on.
    Remove {
        /// Node id or hostname.
        node: String,
    },
}

/// A node in `--json` output.
#[derive(Debug, Serialize)]
struct NodeView {
    node_id: String,
    hostname: String,
    ips: Vec<String>,
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

/// Unix seconds as RFC 3339 (UTC).
pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

pub fn run(root: &Path, args: NodesArgs) -> anyhow::Result<()> {
    match args.command {
        None => list(root, args.json, args.coordinator.as_deref()),
        Some(NodesCommand::Remove { ref node }) => remove(root, node, args.coordinator.as_deref()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn ask(root: &Path, addr: &str, req: AdminRequest) -> Result<AdminResponse, AdminError> {
    let client = AdminClient::connect(root, addr).await?;
    let resp = client.request(&req).await;
    client.close().await;
    resp
}

/// Runs `req` against the running coordinator, or `offline` on the state
/// database when no coordinator runs (the database is then not locked).
fn with_coordinator<T>(
    root: &Path,
    explicit: Option<&str>,
    req: AdminRequest,
    online: impl FnOnce(AdminResponse) -> anyhow::Result<T>,
    offline: impl FnOnce(&Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let db = CoordinatorPaths::new(root).state_db();
    if let Some(addr) = admin::coordinator_addr(root, explicit)? {
        match runtime()?.block_on(ask(root, &addr, req)) {
            Ok(resp) => return online(resp),
            Err(err @ AdminError::Unreachable { .. }) if explicit.is_none() => {
                // A coordinator that died leaves its address behind; its
                // database is unlocked then.
                match Store::open(&db) {
                    Ok(store) => return offline(&store),
                    Err(_) => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    match Store::open(&db) {
        Ok(store) => offline(&store),
        Err(StateError::Busy(_)) => anyhow::bail!(
            "the coordinator is running but its address is unknown; pass --coordinator HOST:PORT"
        ),
        Err(e) => Err(e.into()),
    }
}

fn list(root: &Path, json: bool, explicit: Option<&str>) -> anyhow::Result<()> {
    let nodes = with_coordinator(
        root,
        explicit,
        AdminRequest::ListNodes,
        |resp| match resp {
            AdminResponse::Nodes(n) => Ok(n),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
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
        agent_version: n.agent_version,
        os: n.os,
        kernel: n.kernel,
        arch: n.arch,
        cpus: n.cpus,
        memory_total: n.memory_total,
    }
}

fn print_table(nodes: &[NodeInfo]) {
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            [
                n.node_id.clone(),
                n.hostname.clone(),
                n.ips.join(","),
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
        |resp| match resp {
            AdminResponse::Removed { node_id } => Ok(node_id),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
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
