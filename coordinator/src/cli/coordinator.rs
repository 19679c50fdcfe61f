//! `seaport coordinator init | serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::bootstrap::{self, BootstrapInfo};
use crate::ca;
use crate::daemon::{self, Daemon, ServeOptions};
use crate::state::{Backend, EtcdConfig};

#[derive(Debug, clap::Subcommand)]
pub enum CoordinatorCommand {
    /// Create the coordinator's CA, certificates and state (an existing CA is kept).
    Init(InitArgs),
    /// Run the coordinator in the foreground until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Print what another coordinator of this site needs (state on etcd):
    /// the site key and its `coordinator init` command.
    Add,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Where the coordinator keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One file under the root (`coordinator/state.redb`).
    Redb,
    /// etcd, shared by several coordinators (docs/ha.md).
    Etcd,
}

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Where the state is kept: redb (a file under the root, the default)
    /// or etcd. `init` records the choice; `serve` uses the recorded one
    /// unless told.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub store: Option<StoreKind>,
    /// etcd client URLs, comma-separated (https://HOST:2379,...).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URLS",
        required_if_eq("store", "etcd")
    )]
    pub etcd_endpoints: Vec<String>,
    /// The prefix of this site's keys in etcd.
    #[arg(long, default_value = crate::state::etcd::DEFAULT_PREFIX, value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// The CA of etcd's server certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// This coordinator's client certificate for etcd (PEM; with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// This coordinator's client key for etcd (PEM; with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    /// The backend asked for, if any; file names made absolute, as they are
    /// recorded.
    fn backend(&self) -> anyhow::Result<Option<Backend>> {
        let etcd_flags =
            !self.etcd_endpoints.is_empty() || self.etcd_ca.is_some() || self.etcd_cert.is_some();
        match self.store {
            None if etcd_flags => anyhow::bail!("--etcd-* options need --store etcd"),
            None => Ok(None),
            Some(StoreKind::Redb) if etcd_flags => {
                anyhow::bail!("--etcd-* options need --store etcd, not redb")
            }
            Some(StoreKind::Redb) => Ok(Some(Backend::Redb)),
            Some(StoreKind::Etcd) => {
                let abs = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
                    p.as_deref()
                        .map(|p| {
                            std::path::absolute(p)
                                .with_context(|| format!("resolving {}", p.display()))
                        })
                        .transpose()
                };
                Ok(Some(Backend::Etcd(EtcdConfig {
                    endpoints: self.etcd_endpoints.clone(),
                    prefix: self.etcd_prefix.clone(),
                    ca: abs(&self.etcd_ca)?,
                    cert: abs(&self.etcd_cert)?,
                    key: abs(&self.etcd_key)?,
                })))
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Lifetime of node certificates; agents renew at two thirds of it.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub node_cert_ttl: Duration,
    /// Also serve the HTTPS bootstrap endpoint (agent binary and bootstrap
    /// script for join token holders) on this TCP address, e.g. 0.0.0.0:7444.
    #[arg(long)]
    pub bootstrap_listen: Option<SocketAddr>,
    /// The agent binary the bootstrap endpoint serves. Default: seaport-agent
    /// beside this executable.
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Trust cluster images signed by these public keys (*.pub, *.pem files
    /// in DIR): a signed image must verify with one of them, on the
    /// coordinator and on every agent.
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// Refuse cluster images without a good signature (needs --trusted-keys).
    #[arg(long, requires = "trusted_keys")]
    pub require_signed: bool,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this TCP
    /// address, e.g. 127.0.0.1:9470.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// With several coordinators on etcd: the address (HOST:PORT) agents
    /// and the CLI reach this coordinator at, given to them while it leads.
    /// Default: the --listen address.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// With several coordinators on etcd: the leader's lease TTL. A leader
    /// that dies is replaced within it (plus one second); one that cannot
    /// renew its lease stops driving within three quarters of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
}

pub(super) fn run(root: &Path, cmd: CoordinatorCommand) -> anyhow::Result<()> {
    match cmd {
        CoordinatorCommand::Init(args) => init(root, args),
        CoordinatorCommand::Serve(args) => serve(root, *args),
        CoordinatorCommand::Add => add(root),
    }
}

fn init(root: &Path, args: InitArgs) -> anyhow::Result<()> {
    let store = args.store.backend()?;
    let report = ca::init_with(root, store)
        .with_context(|| format!("initializing coordinator state under {}", root.display()))?;
    if report.site_ca {
        println!(
            "took the site's coordinator CA from etcd; certificates and state in {}",
            report.dir.display()
        );
    } else if report.created_ca {
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

fn add(root: &Path) -> anyhow::Result<()> {
    let dir = ca::CoordinatorPaths::new(root).dir;
    let Backend::Etcd(config) = crate::state::backend(&dir)? else {
        anyhow::bail!(
            "this coordinator keeps its state in {}; only coordinators on etcd (`coordinator init --store etcd`) share a site",
            dir.join("state.redb").display()
        );
    };
    let key_path = crate::state::SiteKey::path(&dir);
    crate::state::SiteKey::load(&key_path)?;
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading the site key {}", key_path.display()))?;
    let pin = ca::Ca::load(root)?.pin()?;
    let mut init = format!(
        "seaport coordinator init --store etcd --etcd-endpoints {} --etcd-prefix {}",
        config.endpoints.join(","),
        config.prefix
    );
    if config.ca.is_some() {
        init.push_str(" --etcd-ca ETCD_CA.pem");
    }
    if config.cert.is_some() {
        init.push_str(" --etcd-cert CLIENT.pem --etcd-key CLIENT.key");
    }
    println!("A new coordinator of this site needs, on its machine:");
    println!();
    println!("1. The site key (secret: it opens the site's sealed state), in");
    println!("   ROOT/coordinator/site.key, mode 0600 (directory 0700):");
    println!();
    println!("   {}", key.trim());
    println!();
    if config.ca.is_some() || config.cert.is_some() {
        println!("2. etcd's CA and a client certificate and key of its own for etcd.");
    } else {
        println!("2. Access to etcd at {}.", config.endpoints.join(","));
    }
    println!();
    println!("3. Then:");
    println!();
    println!("   {init}");
    println!();
    println!("It takes the site's CA ({pin}) from etcd.");
    Ok(())
}

fn serve(root: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let store = args.store.backend()?;
    if args.node_cert_ttl < Duration::from_secs(3) {
        anyhow::bail!("--node-cert-ttl must be at least 3s");
    }
    let trust = seaport_rootfs::signing::Policy {
        keys: match &args.trusted_keys {
            Some(dir) => super::signing::trusted_keys(dir)?,
            None => seaport_rootfs::signing::TrustedKeys::new(),
        },
        require_signed: args.require_signed,
    };
    if !trust.is_off() {
        println!(
            "image signatures: trusted keys {}; unsigned images {}",
            trust.keys.fingerprints().join(", "),
            if trust.require_signed {
                "refused"
            } else {
                "accepted"
            }
        );
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
                trust,
                store,
                advertise: args.advertise,
                lease_ttl: args.lease_ttl,
            },
        )
        .with_context(|| {
            format!(
                "starting the coordinator from {}",
                daemon::state_dir(root).display()
            )
        })?;
        eprintln!("coordinator listening on {} (udp)", daemon.local_addr());
        let metrics =
            match args.metrics_listen {
                Some(listen) => {
                    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
                    format!("binding the metrics listener on {listen} (tcp); is the port taken?")
                })?;
                    eprintln!(
                        "metrics on http://{}/metrics",
                        listener.local_addr().unwrap_or(listen)
                    );
                    let gauges = std::sync::Arc::new(daemon.metrics_gauges());
                    Some(tokio::spawn(crate::metrics::serve(listener, gauges)))
                }
                None => None,
            };
        let endpoint = match args.bootstrap_listen {
            Some(listen) => Some(start_bootstrap(root, listen, args.agent_binary, &daemon).await?),
            None => None,
        };
        let result = daemon.run(shutdown_signal()).await;
        if let Some(task) = metrics {
            task.abort();
        }
        if let Some((stop, task)) = endpoint {
            let _ = stop.send(true);
            let _ = task.await;
            bootstrap::remove_info(root);
        }
        result?;
        Ok(())
    })
}

/// Binds the bootstrap endpoint, records it in `bootstrap.json` and runs it
/// until told to stop.
async fn start_bootstrap(
    root: &Path,
    listen: SocketAddr,
    agent_binary: Option<PathBuf>,
    daemon: &Daemon,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let agent_path = agent_binary.unwrap_or_else(bootstrap::default_agent_path);
    let server = bootstrap::bind(
        root,
        listen,
        &agent_path,
        daemon.local_addr().port(),
        daemon.token_check(),
    )
    .await
    .context("starting the bootstrap endpoint")?;
    let info = BootstrapInfo {
        listen: server.local_addr(),
        agent_path: agent_path.clone(),
        agent_sha256: server.agent_sha256().to_string(),
        pid: std::process::id(),
    };
    bootstrap::write_info(root, &info)?;
    eprintln!(
        "bootstrap endpoint listening on {} (https), serving {} (sha256 {})",
        info.listen,
        agent_path.display(),
        info.agent_sha256
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok((stop, task))
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
