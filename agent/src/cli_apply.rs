//! `seaport-agent apply` and `seaport-agent reset`: run the apply engine for
//! this host from local inputs and print per-step progress. The coordinator
//! drives the same engine over the session; these commands are how it is run
//! and debugged by hand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use seaport_shared::cluster::{ClusterName, Role};
use seaport_shared::env::key_value;

use crate::apply::{self, ApplyOptions, ImageSource, StepEvent, SystemEffects, Timeouts};

/// Install a cluster image on this host.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// OCI image layout directory holding the image.
    #[arg(long)]
    pub image_layout: PathBuf,
    /// The image's name in the layout.
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub trust: crate::trust::TrustArgs,
    /// Cluster name.
    #[arg(long)]
    pub cluster: ClusterName,
    /// This host's role: master0, master or node.
    #[arg(long)]
    pub role: Role,
    /// Cluster env, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// This host's own env, KEY=VALUE (repeatable; wins over --env).
    #[arg(long = "host-env", value_name = "K=V", value_parser = key_value)]
    pub host_env: Vec<(String, String)>,
    /// This host's IP (default: its first IPv4 address).
    #[arg(long)]
    pub host_ip: Option<String>,
    /// The registry host's IP (default: the first master).
    #[arg(long)]
    pub registry_ip: Option<String>,
    /// Every master's IP, comma-separated (certificate SANs).
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    /// kubeadm documents (YAML) merged over the image's etc/kubeadm.yml.
    #[arg(long)]
    pub kubeadm_config: Option<PathBuf>,
    /// Join data written by the first master (masters and nodes).
    #[arg(long)]
    pub join_data: Option<PathBuf>,
    /// Where the first master also writes its join data.
    #[arg(long)]
    pub join_data_out: Option<PathBuf>,
    /// Allow device nodes in the image's layers.
    #[arg(long)]
    pub allow_devices: bool,
    /// Allow setuid and setgid files in the image's layers.
    #[arg(long)]
    pub allow_setuid: bool,
    /// Timeout of each hook script, in seconds.
    #[arg(long, default_value_t = 300)]
    pub hook_timeout: u64,
    /// Timeout of kubeadm, in seconds.
    #[arg(long, default_value_t = 600)]
    pub kubeadm_timeout: u64,
    /// Root of cluster data.
    #[arg(long, env = "SEAPORT_DATA_ROOT", default_value = apply::DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
}

/// Undo a cluster's install on this host.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Cluster name.
    #[arg(long)]
    pub cluster: ClusterName,
    /// Also remove the cluster's data directory (its rootfs).
    #[arg(long)]
    pub prune: bool,
    /// Timeout of kubeadm reset and clean.sh, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Root of cluster data.
    #[arg(long, env = "SEAPORT_DATA_ROOT", default_value = apply::DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
}

/// Runs `apply`.
pub fn run_apply(args: ApplyArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    // The image's signatures are checked before anything is written, as
    // for an apply the coordinator sends.
    let subject = apply::image::LayoutImage::entry(&args.image_layout, &args.image)?.digest;
    let sigs = seaport_rootfs::signing::from_layout(&args.image_layout, &subject)?;
    let accepted = crate::trust::check(
        &state_dir,
        &args.trust.local(),
        &seaport_shared::wire::ImageTrust::default(),
        &args.image,
        &subject,
        sigs.as_ref(),
    )
    .map_err(anyhow::Error::msg)?;
    if accepted != seaport_rootfs::signing::Accepted::NotChecked {
        println!("{:<16} {accepted}", crate::tasks::SIGNATURE_STEP);
    }
    let join_data = match &args.join_data {
        Some(p) => Some(apply::read_join_data(p)?),
        None => None,
    };
    let kubeadm_config = match &args.kubeadm_config {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let opts = ApplyOptions {
        image: ImageSource::Layout {
            dir: args.image_layout,
            name: args.image,
        },
        only: None,
        master0_ip: None,
        cluster: args.cluster,
        role: args.role,
        host_ip: args.host_ip,
        registry_ip: args.registry_ip,
        master_ips: args.masters,
        env: args.env,
        host_env: args.host_env,
        kubeadm_config,
        join_data,
        join_data_out: args.join_data_out,
        registry_auth: None,
        registry_tls: None,
        state_dir,
        data_root: args.data_root,
        host_root: PathBuf::from("/"),
        allow_devices: args.allow_devices,
        allow_setuid: args.allow_setuid,
        timeouts: Timeouts {
            hook: Duration::from_secs(args.hook_timeout),
            kubeadm: Duration::from_secs(args.kubeadm_timeout),
            ..Timeouts::default()
        },
        upgrade: false,
    };
    let mut print = |e: &StepEvent| match e {
        StepEvent::Started { step, attempt } if *attempt > 1 => {
            println!("{step:<16} resuming (attempt {attempt})")
        }
        StepEvent::Started { step, .. } => println!("{step:<16} running"),
        StepEvent::Skipped { step } => println!("{step:<16} skipped (done)"),
        StepEvent::Done {
            step,
            summary,
            elapsed,
        } => println!(
            "{step:<16} done in {:.1} s: {summary}",
            elapsed.as_secs_f64()
        ),
        StepEvent::Failed { step, error } => println!("{step:<16} FAILED: {error}"),
    };
    let report = apply::apply(&opts, &SystemEffects, &mut print)
        .with_context(|| format!("installing cluster {} on this host", opts.cluster))?;
    println!(
        "applied: {} steps run, {} skipped",
        report.ran.len(),
        report.skipped.len()
    );
    if report.join_data.is_some() {
        println!(
            "join data: {}",
            opts.cluster_dir().join("join.json").display()
        );
    }
    Ok(())
}

/// Runs `reset`.
pub fn run_reset(args: ResetArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let opts = apply::ResetOptions {
        cluster: args.cluster.clone(),
        prune: args.prune,
        state_dir: state_dir.clone(),
        data_root: args.data_root,
        host_root: PathBuf::from("/"),
        timeout: Duration::from_secs(args.timeout),
    };
    // The API balancer's kept list and address go first, as in a reset
    // through the coordinator; a running agent's listener is left without
    // its address and is gone at the agent's next start.
    let balancer = crate::balancer::host::HostBalancer::new(
        &state_dir,
        crate::balancer::host::CA_FILE,
        std::sync::Arc::new(SystemEffects),
    );
    let stopped = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(balancer.stop(&args.cluster));
    if stopped {
        println!(
            "API balancer of cluster {}: list forgotten, address removed",
            args.cluster
        );
    }
    let report = apply::reset(&opts, &SystemEffects)
        .with_context(|| format!("resetting cluster {}", args.cluster))?;
    if !report.had_journal {
        println!(
            "cluster {}: nothing was installed on this host",
            args.cluster
        );
    }
    for a in &report.actions {
        println!("{a}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}
