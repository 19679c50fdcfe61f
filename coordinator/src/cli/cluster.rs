//! `seaport run`, `seaport status` and `seaport delete`: install a cluster
//! image on hosts through their agents, show how every host stands, and put
//! the hosts back as they were. The coordinator drives the work
//! (`crate::operations`); these commands ask for it and follow it, so an
//! interrupted `seaport run` loses nothing: `seaport status` shows the run
//! going on, and running the same command again continues it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use seaport_shared::cluster::{ClusterName, OperationKind};
use seaport_shared::env::key_value;
use seaport_shared::wire::{
    AdminRequest, AdminResponse, ClusterView, HostView, RunRequest, RunState, StepState,
};

use super::access::runtime;
use crate::admin::AdminClient;

/// The cluster name when none is given (sealer's default).
pub(super) const DEFAULT_CLUSTER: &str = "my-cluster";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Cluster image in the coordinator's store.
    pub image: String,
    /// Master IPs, comma-separated; the first is master0.
    #[arg(short = 'm', long, value_delimiter = ',', required = true)]
    pub masters: Vec<String>,
    /// Worker IPs, comma-separated.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Cluster env, KEY=VALUE (repeatable): templates and scripts see it.
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// The cluster's name.
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub cluster: ClusterName,
    /// Return once the coordinator has accepted the run.
    #[arg(long)]
    pub detach: bool,
    /// Preflight checks whose errors do not stop it, comma-separated
    /// (swap, port-6443, ports, ip-forward, hostname, runtime, disk, ..., all).
    #[arg(long, value_delimiter = ',', value_name = "CHECK", value_parser = super::check::check_name)]
    pub ignore_preflight: Vec<String>,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The Clusterfile (sealer's format).
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Validate the file and print the plan per host; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Do not ask before removing hosts that left the file.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Return once the coordinator has accepted the operation.
    #[arg(long)]
    pub detach: bool,
    /// Preflight checks whose errors do not stop it, comma-separated
    /// (swap, port-6443, ports, ip-forward, hostname, runtime, disk, ..., all).
    #[arg(long, value_delimiter = ',', value_name = "CHECK", value_parser = super::check::check_name)]
    pub ignore_preflight: Vec<String>,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Masters to add, comma-separated.
    #[arg(short = 'm', long, value_delimiter = ',')]
    pub masters: Vec<String>,
    /// Workers to add, comma-separated.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The cluster.
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    pub cluster: ClusterName,
    /// Preflight checks whose errors do not stop it, comma-separated
    /// (swap, port-6443, ports, ip-forward, hostname, runtime, disk, ..., all).
    #[arg(long, value_delimiter = ',', value_name = "CHECK", value_parser = super::check::check_name)]
    pub ignore_preflight: Vec<String>,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The cluster (default: the only one).
    #[arg(long)]
    pub cluster: Option<ClusterName>,
    /// Only this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this step.
    #[arg(long)]
    pub step: Option<String>,
    /// Print JSON: host, step, state and output tail of each step shown.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many entries, the newest last.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Have every host check the files its install wrote: modified or missing.
    #[arg(long)]
    pub drift: bool,
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<ClusterName>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["all", "cluster", "masters", "nodes"])))]
pub struct DeleteArgs {
    /// Delete every cluster.
    #[arg(long, conflicts_with_all = ["masters", "nodes"])]
    pub all: bool,
    /// Delete this cluster (with -m/-n: the cluster the hosts leave).
    #[arg(long)]
    pub cluster: Option<ClusterName>,
    /// Masters to remove from the cluster, comma-separated.
    #[arg(short = 'm', long, value_delimiter = ',')]
    pub masters: Vec<String>,
    /// Workers to remove from the cluster, comma-separated.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Also remove the hosts' cluster data (the unpacked rootfs).
    #[arg(long)]
    pub prune: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Coordinator address (HOST:PORT, or several: HOST:PORT,HOST:PORT);
    /// defaults to the local one.
    #[arg(long)]
    pub coordinator: Option<String>,
}

/// The cluster and generation of an accepted operation.
fn accepted(resp: AdminResponse) -> anyhow::Result<(ClusterName, u64)> {
    match resp {
        AdminResponse::RunAccepted {
            cluster,
            generation,
        } => Ok((cluster, generation)),
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
    }
}

async fn clusters(client: &AdminClient) -> anyhow::Result<Vec<ClusterView>> {
    match client
        .request(&AdminRequest::Clusters)
        .await
        .context("asking the coordinator for clusters")?
    {
        AdminResponse::Clusters(c) => Ok(c),
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
    }
}

/// `seaport run`.
pub(super) fn run(root: &Path, args: RunArgs) -> anyhow::Result<()> {
    let req = RunRequest {
        cluster: args.cluster.clone(),
        image: args.image.clone(),
        masters: args.masters,
        nodes: args.nodes,
        env: args.env,
        ignore_preflight: args.ignore_preflight,
    };
    runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let resp = client
            .request(&AdminRequest::Run(req))
            .await
            .with_context(|| format!("installing {} as cluster {}", args.image, args.cluster))?;
        let (cluster, generation) = accepted(resp)?;
        eprintln!(
            "cluster {cluster}: installing {} (run {generation})",
            args.image
        );
        if args.detach {
            client.close().await;
            return Ok(());
        }
        client.close().await;
        let view = follow(root, args.coordinator.as_deref(), &cluster, generation).await?;
        print_summary(&view);
        match view.state {
            RunState::Succeeded => Ok(()),
            _ => Err(failure(&view)),
        }
    })
}

/// `seaport status --drift`.
fn drift(root: &Path, args: &StatusArgs) -> anyhow::Result<()> {
    let drifts = runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let cluster = match &args.cluster {
            Some(c) => c.clone(),
            None => only_cluster(&clusters(&client).await?)?,
        };
        let resp = client
            .request(&AdminRequest::Drift {
                cluster: cluster.clone(),
            })
            .await
            .with_context(|| format!("checking cluster {cluster} for drift"));
        client.close().await;
        match resp? {
            AdminResponse::Drift(d) => Ok(d),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&drifts)?);
        return Ok(());
    }
    let mut clean = true;
    for d in &drifts {
        if let Some(e) = &d.error {
            println!("{}: could not check: {e}", d.ip);
            clean = false;
            continue;
        }
        if d.modified.is_empty() && d.missing.is_empty() {
            println!("{}: {} files as installed", d.ip, d.checked);
        }
        for p in &d.modified {
            println!("{}: modified {p}", d.ip);
            clean = false;
        }
        for p in &d.missing {
            println!("{}: missing {p}", d.ip);
            clean = false;
        }
    }
    if !clean {
        return Err(super::Exit::new(
            super::exit::DRIFT,
            "drift found: restore those files, or apply the cluster again to rewrite them",
        )
        .into());
    }
    Ok(())
}

fn only_cluster(views: &[ClusterView]) -> anyhow::Result<ClusterName> {
    match views {
        [one] => Ok(one.cluster.clone()),
        [] => anyhow::bail!("no clusters"),
        _ => anyhow::bail!(
            "several clusters ({}): name one with --cluster",
            views
                .iter()
                .map(|v| v.cluster.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `seaport apply -f Clusterfile`.
pub(super) fn apply(root: &Path, args: ApplyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    // Checked here first, so a broken file never reaches the coordinator.
    let desired = crate::operations::spec_of_clusterfile(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let name = desired.name;
    for w in &desired.warnings {
        eprintln!("warning: {}: {w}", args.file.display());
    }
    runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let plan = match client
            .request(&AdminRequest::Apply {
                clusterfile: text.clone(),
                dry_run: true,
                ignore_preflight: vec![],
            })
            .await
            .with_context(|| format!("planning {}", args.file.display()))?
        {
            AdminResponse::Planned(p) => p,
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        };
        if args.dry_run {
            client.close().await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            return Ok(());
        }
        if plan.operation == OperationKind::ScaleDown && !args.yes {
            let leaving: Vec<&str> = plan
                .hosts
                .iter()
                .filter(|h| h.stages.iter().any(|s| s == "reset"))
                .map(|h| h.ip.as_str())
                .collect();
            confirm_text(&format!(
                "Remove {} from cluster {name} (clean, reset, delete the nodes)?",
                leaving.join(", ")
            ))?;
        }
        let resp = client
            .request(&AdminRequest::Apply {
                clusterfile: text,
                dry_run: false,
                ignore_preflight: args.ignore_preflight,
            })
            .await
            .with_context(|| format!("applying {}", args.file.display()))?;
        client.close().await;
        let (cluster, generation) = accepted(resp)?;
        eprintln!(
            "cluster {cluster}: {} (operation {generation})",
            plan.operation
        );
        if args.detach {
            return Ok(());
        }
        finish(root, args.coordinator.as_deref(), &cluster, generation).await
    })
}

async fn finish(
    root: &Path,
    explicit: Option<&str>,
    cluster: &ClusterName,
    generation: u64,
) -> anyhow::Result<()> {
    let view = follow(root, explicit, cluster, generation).await?;
    print_summary(&view);
    match view.state {
        RunState::Succeeded => Ok(()),
        _ => Err(failure(&view)),
    }
}

fn print_plan(p: &seaport_shared::wire::PlannedApply) {
    println!("cluster {}: {} of {}", p.cluster, p.operation, p.image);
    for w in &p.warnings {
        println!("  warning: {w}");
    }
    println!("  stages: {}", p.stages.join(", "));
    for h in &p.hosts {
        println!(
            "  {:<15} {:<7} {:<24} {}",
            h.ip,
            h.role,
            h.node.as_deref().unwrap_or("NO AGENT (bootstrap it)"),
            h.stages.join(", ")
        );
    }
}

/// `seaport join`.
pub(super) fn join(root: &Path, args: JoinArgs) -> anyhow::Result<()> {
    if args.masters.is_empty() && args.nodes.is_empty() {
        anyhow::bail!("name hosts to add with -m and/or -n");
    }
    runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let resp = client
            .request(&AdminRequest::Join {
                cluster: args.cluster.clone(),
                masters: args.masters,
                nodes: args.nodes,
                ignore_preflight: args.ignore_preflight,
            })
            .await
            .with_context(|| format!("adding hosts to cluster {}", args.cluster))?;
        client.close().await;
        let (cluster, generation) = accepted(resp)?;
        finish(root, args.coordinator.as_deref(), &cluster, generation).await
    })
}

/// `seaport logs`.
pub(super) fn logs(root: &Path, args: LogsArgs) -> anyhow::Result<()> {
    let views = runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let v = clusters(&client).await;
        client.close().await;
        v
    })?;
    let name = match &args.cluster {
        Some(c) => c.clone(),
        None => only_cluster(&views)?,
    };
    let v = views
        .iter()
        .find(|v| v.cluster == name)
        .ok_or_else(|| anyhow::anyhow!("no cluster named {name}"))?;
    let chosen: Vec<(&str, &seaport_shared::wire::StepView)> = v
        .hosts
        .iter()
        .filter(|h| args.host.as_ref().is_none_or(|x| *x == h.ip))
        .flat_map(|h| h.steps.iter().map(move |s| (h.ip.as_str(), s)))
        .filter(|(_, s)| args.step.as_ref().is_none_or(|x| *x == s.step))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!(
            "no step logs match; `seaport status --cluster {name}` lists every host and step"
        );
    }
    if args.json {
        let out: Vec<serde_json::Value> = chosen
            .iter()
            .map(|(ip, s)| serde_json::json!({"host": ip, "step": s.step, "state": s.state, "log_tail": s.log_tail}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    {
        for (ip, s) in chosen {
            let detail = match &s.state {
                StepState::Done {
                    summary,
                    elapsed_ms,
                } => {
                    format!("done in {:.1} s: {summary}", *elapsed_ms as f64 / 1000.0)
                }
                StepState::Running { attempt } => format!("running (attempt {attempt})"),
                StepState::Failed { .. } => "failed".into(),
                other => other.label().into(),
            };
            println!("{ip} {}: {detail}", s.step);
            for l in s.log_tail.lines() {
                println!("    {l}");
            }
        }
    }
    Ok(())
}

/// `seaport audit`.
pub(super) fn audit(root: &Path, args: AuditArgs) -> anyhow::Result<()> {
    let entries = runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let resp = client
            .request(&AdminRequest::Audit { limit: args.limit })
            .await;
        client.close().await;
        match resp.context("reading the audit log")? {
            AdminResponse::Audit(a) => Ok(a),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print!("{}", audit_table(&entries));
    Ok(())
}

/// The audit log as a table: sequence, time, who, what, result.
fn audit_table(entries: &[seaport_shared::wire::AuditView]) -> String {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                seaport_shared::clock::rfc3339(e.at),
                e.who.clone(),
                e.what.clone(),
                e.result.clone(),
            ]
        })
        .collect();
    let header = ["SEQ", "TIME", "WHO", "WHAT", "RESULT"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 4 {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}

/// `seaport status`.
pub(super) fn status(root: &Path, args: StatusArgs) -> anyhow::Result<()> {
    if args.drift {
        return drift(root, &args);
    }
    let views = runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let v = clusters(&client).await;
        client.close().await;
        v
    })?;
    let views: Vec<ClusterView> = views
        .into_iter()
        .filter(|v| args.cluster.as_ref().is_none_or(|c| *c == v.cluster))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if let (Some(c), true) = (&args.cluster, views.is_empty()) {
        anyhow::bail!("no cluster named {c}");
    }
    if views.is_empty() {
        println!("no clusters");
    }
    for v in &views {
        print_status(v);
    }
    Ok(())
}

/// `seaport delete`.
pub(super) fn delete(root: &Path, args: DeleteArgs) -> anyhow::Result<()> {
    if !args.masters.is_empty() || !args.nodes.is_empty() {
        let ips: Vec<String> = args.masters.iter().chain(&args.nodes).cloned().collect();
        return runtime()?.block_on(async {
            let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
            let cluster = match &args.cluster {
                Some(c) => c.clone(),
                None => only_cluster(&clusters(&client).await?)?,
            };
            if !args.yes {
                confirm_text(&format!(
                    "Remove {} from cluster {cluster} (clean, reset, delete the nodes)?",
                    ips.join(", ")
                ))?;
            }
            let resp = client
                .request(&AdminRequest::RemoveHosts {
                    cluster: cluster.clone(),
                    ips,
                })
                .await
                .with_context(|| format!("removing hosts from cluster {cluster}"))?;
            client.close().await;
            let (cluster, generation) = accepted(resp)?;
            finish(root, args.coordinator.as_deref(), &cluster, generation).await
        });
    }
    runtime()?.block_on(async {
        let client = AdminClient::connect_running(root, args.coordinator.as_deref()).await?;
        let all = clusters(&client).await?;
        let chosen: Vec<&ClusterView> = all
            .iter()
            .filter(|v| args.all || args.cluster.as_ref() == Some(&v.cluster))
            .collect();
        if chosen.is_empty() {
            client.close().await;
            match &args.cluster {
                Some(c) => anyhow::bail!("no cluster named {c} (see `seaport status`)"),
                None => {
                    println!("no clusters to delete");
                    return Ok(());
                }
            }
        }
        if !args.yes {
            confirm(&chosen, args.prune)?;
        }
        let resp = client
            .request(&AdminRequest::DeleteCluster {
                cluster: args.cluster.clone(),
                prune: args.prune,
            })
            .await
            .context("deleting")?;
        let AdminResponse::Deleting(list) = resp else {
            anyhow::bail!("unexpected answer from the coordinator: {resp:?}");
        };
        let mut failed = Vec::new();
        for (cluster, generation) in list {
            eprintln!("cluster {cluster}: resetting every host");
            let view = follow(root, args.coordinator.as_deref(), &cluster, generation).await?;
            print_summary(&view);
            if view.state != RunState::Deleted {
                failed.push(failure(&view));
            }
        }
        client.close().await;
        match failed.pop() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    })
}

fn confirm(chosen: &[&ClusterView], prune: bool) -> anyhow::Result<()> {
    let hosts: usize = chosen.iter().map(|v| v.hosts.len()).sum();
    confirm_text(&format!(
        "Reset {} on {hosts} host(s){}?",
        chosen
            .iter()
            .map(|v| v.cluster.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if prune { " and remove their data" } else { "" }
    ))
}

fn confirm_text(question: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("this needs confirmation: run it in a terminal or add --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was changed")
    }
}

/// How long `follow` keeps trying to reach a coordinator that went away
/// (restarted, or its host rebooted): the run goes on without the CLI.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Follows a run until it ends, showing progress; returns its last view.
/// A coordinator that restarts in the middle is reconnected to.
async fn follow(
    root: &Path,
    explicit: Option<&str>,
    cluster: &ClusterName,
    generation: u64,
) -> anyhow::Result<ClusterView> {
    let mut shown = Progress::new();
    let mut missing_since: Option<Instant> = None;
    let mut client: Option<AdminClient> = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if client.is_none() {
            match AdminClient::connect_running(root, explicit).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECONNECT_FOR {
                        shown.finish();
                        return Err(anyhow::Error::new(e).context(format!(
                            "lost the coordinator; the run goes on there: see `seaport status --cluster {cluster}`"
                        )));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let views = match clusters(client.as_ref().expect("connected")).await {
            Ok(v) => {
                unreachable_since = None;
                v
            }
            Err(e) => {
                if unreachable_since.is_none() {
                    eprintln!("lost the coordinator ({e:#}); reconnecting");
                }
                unreachable_since.get_or_insert_with(Instant::now);
                client = None;
                continue;
            }
        };
        match views.into_iter().find(|v| v.cluster == *cluster) {
            Some(v) if v.generation == generation => {
                missing_since = None;
                shown.update(&v);
                if v.state.is_final() {
                    shown.finish();
                    if let Some(c) = client.take() {
                        c.close().await;
                    }
                    return Ok(v);
                }
            }
            Some(v) if v.generation > generation => {
                shown.finish();
                anyhow::bail!(
                    "cluster {cluster}: a newer operation (run {}) replaced this one",
                    v.generation
                );
            }
            _ => {
                // A deleted cluster's record goes away once it is done.
                let since = *missing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    shown.finish();
                    anyhow::bail!("cluster {cluster} is no longer known to the coordinator");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

fn current_step(h: &HostView) -> Option<&seaport_shared::wire::StepView> {
    h.steps
        .iter()
        .rev()
        .find(|s| {
            matches!(
                s.state,
                StepState::Running { .. } | StepState::Failed { .. }
            )
        })
        .or_else(|| h.steps.last())
}

fn host_line(h: &HostView) -> String {
    let step = current_step(h)
        .map(|s| format!("{} {}", s.step, s.state.label()))
        .unwrap_or_default();
    let fetched = if h.total_bytes > 0 && h.phase.starts_with("fetch") {
        format!(" {}/{}", mib(h.fetched_bytes), mib(h.total_bytes))
    } else {
        String::new()
    };
    let note = h
        .error
        .as_deref()
        .map(|e| format!(" ({})", first_line(e)))
        .unwrap_or_default();
    format!(
        "{:<15} {:<7} {:<16} {step}{fetched}{note}",
        h.ip, h.role, h.phase
    )
}

/// The host's hostname, or its node id before it reported one.
fn host_name(h: &HostView) -> &str {
    if h.hostname.is_empty() {
        &h.node_id
    } else {
        &h.hostname
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Live progress: a bar per host on a terminal, a line per change otherwise.
struct Progress {
    tty: bool,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    last: HashMap<String, String>,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Progress {
            tty,
            multi,
            bars: HashMap::new(),
            last: HashMap::new(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, v: &ClusterView) {
        for h in &v.hosts {
            let line = host_line(h);
            if self.tty {
                let bar = self.bars.entry(h.ip.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(0));
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {wide_bar} {percent:>3}%")
                            .expect("a valid template"),
                    );
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                let (done, total) = host_progress(v, h);
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(line);
            } else if self.last.get(&h.ip) != Some(&line) {
                eprintln!("[{:>5.1}s] {line}", self.started.elapsed().as_secs_f64());
                self.last.insert(h.ip.clone(), line);
            }
        }
    }

    fn finish(&mut self) {
        for b in self.bars.values() {
            b.finish();
        }
    }
}

/// How far a host is: fetched bytes count for the fetch phase, then each
/// phase of the plan counts as much as the whole fetch.
fn host_progress(v: &ClusterView, h: &HostView) -> (u64, u64) {
    const UNIT: u64 = 1000;
    let phases = v.phases.len() as u64;
    let fetch = (h.fetched_bytes * UNIT)
        .checked_div(h.total_bytes)
        .unwrap_or(0);
    let idx = v.phases.iter().position(|p| *p == v.phase).unwrap_or(0) as u64;
    let done = if v.state == RunState::Succeeded {
        phases * UNIT
    } else if idx == 0 {
        fetch
    } else {
        idx * UNIT
    };
    (done, phases * UNIT)
}

fn print_summary(v: &ClusterView) {
    let took = v
        .finished_at
        .map(|f| format!(" in {} s", f - v.started_at))
        .unwrap_or_default();
    println!("cluster {}: {}{took}", v.cluster, v.state.as_str());
    for h in &v.hosts {
        let count = |f: fn(&StepState) -> bool| h.steps.iter().filter(|s| f(&s.state)).count();
        println!(
            "  {:<15} {:<7} {:<16} {} steps done, {} skipped, {} failed",
            h.ip,
            h.role,
            host_name(h),
            count(|s| matches!(s, StepState::Done { .. })),
            count(|s| matches!(s, StepState::Skipped)),
            count(|s| matches!(s, StepState::Failed { .. })),
        );
    }
}

/// The error of a failed run, with the failing steps' output tails.
fn failure(v: &ClusterView) -> anyhow::Error {
    let mut msg = format!(
        "cluster {}: {}",
        v.cluster,
        v.error.as_deref().unwrap_or("failed")
    );
    let mut preflight = false;
    for h in &v.hosts {
        for s in &h.steps {
            if let StepState::Failed { .. } = s.state {
                preflight |= s.step == super::check::PREFLIGHT_STEP;
                msg.push_str(&format!("\n--- {} step {}:\n{}", h.ip, s.step, s.log_tail));
            }
        }
    }
    if preflight {
        // Nothing on any host changed: the exit code says so.
        return super::Exit::new(super::exit::PREFLIGHT, msg).into();
    }
    anyhow::anyhow!(msg)
}

fn print_status(v: &ClusterView) {
    println!(
        "cluster {}  image {} ({})  {}  phase {}",
        v.cluster,
        v.image,
        v.manifest_digest,
        v.state.as_str(),
        v.phase
    );
    if let Some(e) = &v.error {
        println!("  error: {}", first_line(e));
    }
    println!(
        "  {:<15} {:<7} {:<20} {:<7} {:<16} STEP",
        "HOST", "ROLE", "NODE", "ONLINE", "PHASE"
    );
    for h in &v.hosts {
        let step = current_step(h)
            .map(|s| format!("{} {}", s.step, s.state.label()))
            .unwrap_or_default();
        println!(
            "  {:<15} {:<7} {:<20} {:<7} {:<16} {step}",
            h.ip,
            h.role,
            host_name(h),
            if h.online { "yes" } else { "no" },
            h.phase
        );
        if let Some(e) = &h.error {
            println!("    {}", first_line(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use seaport_shared::wire::AuditView;

    #[test]
    fn the_audit_log_is_a_table_in_words() {
        let entries = [AuditView {
            seq: 7,
            at: 0,
            who: "admin".into(),
            what: "run k8s:v1 on cluster c (masters 10.0.0.1, nodes )".into(),
            result: "accepted: install of cluster c, operation 1".into(),
        }];
        let t = super::audit_table(&entries);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("SEQ  TIME"), "{t}");
        assert!(
            lines[1].starts_with("7    1970-01-01T00:00:00Z  admin  run k8s:v1"),
            "{t}"
        );
        assert!(lines[1].ends_with("accepted: install of cluster c, operation 1"));
    }
}
