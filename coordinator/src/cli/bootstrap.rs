//! `seaport bootstrap cloud-init | script`: what a host runs to get its agent.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use seaport_shared::pki::{self, JoinToken};

use crate::bootstrap::{self, ScriptParams};
use crate::ca::CoordinatorPaths;
use crate::daemon;

#[derive(Debug, clap::Subcommand)]
pub enum BootstrapCommand {
    /// Print #cloud-config user-data that installs, joins and starts the agent at first boot.
    CloudInit(BootstrapArgs),
    /// Print a shell one-liner that does the same on a running host (as root).
    Script(BootstrapArgs),
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Join token from `seaport token create` (it ends up in the output: keep that secret).
    #[arg(long, env = "SEAPORT_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The coordinator's QUIC address as hosts reach it, HOST:PORT. Default:
    /// the address `coordinator serve` listens on, when that is not a wildcard.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The bootstrap endpoint as hosts reach it, HOST:PORT. Default: the
    /// coordinator's host and the port of the running endpoint.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Use the agent already in the machine image at /usr/local/bin/seaport-agent
    /// instead of downloading it.
    #[arg(long)]
    pub preinstalled: bool,
    /// The agent binary whose sha256 is pinned. Default: the one the running
    /// bootstrap endpoint serves.
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
}

pub(super) fn run(root: &Path, cmd: BootstrapCommand) -> anyhow::Result<()> {
    let (args, cloud_init) = match cmd {
        BootstrapCommand::CloudInit(a) => (a, true),
        BootstrapCommand::Script(a) => (a, false),
    };
    let params = params(root, &args)?;
    let text = if cloud_init {
        bootstrap::render_cloud_init(&params)?
    } else {
        bootstrap::render_one_liner(&params)?
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

fn is_wildcard(addr: &SocketAddr) -> bool {
    addr.ip().is_unspecified()
}

fn params(root: &Path, args: &BootstrapArgs) -> anyhow::Result<ScriptParams> {
    let token = JoinToken::parse(&args.token).context("--token")?;
    let ca_path = CoordinatorPaths::new(root).ca_cert();
    let ca_pem = pki::read_text(&ca_path).with_context(|| {
        format!(
            "reading the coordinator CA; run `seaport coordinator init` first (root {})",
            root.display()
        )
    })?;
    let coordinator = match &args.coordinator {
        Some(c) => c.clone(),
        None => match daemon::read_serve_info(root) {
            Some(info) if !is_wildcard(&info.listen) => info.listen.to_string(),
            Some(info) => anyhow::bail!(
                "the coordinator listens on {}, which hosts cannot dial: give --coordinator HOST:PORT, the address hosts reach it at",
                info.listen
            ),
            None => anyhow::bail!(
                "no running coordinator under {}: give --coordinator HOST:PORT",
                root.display()
            ),
        },
    };
    let (agent_sha256, bootstrap) = if args.preinstalled {
        (None, String::new())
    } else {
        let info = bootstrap::read_info(root);
        let sha = match (&args.agent_binary, &info) {
            (Some(path), _) => bootstrap::read_agent(path)?.1,
            (None, Some(info)) => info.agent_sha256.clone(),
            (None, None) => anyhow::bail!(
                "no bootstrap endpoint is running under {}: start `seaport coordinator serve --bootstrap-listen ADDR:PORT`, \
                 or give --agent-binary and --bootstrap, or use --preinstalled",
                root.display()
            ),
        };
        let endpoint = match (&args.bootstrap, &info) {
            (Some(b), _) => b.clone(),
            (None, info) => {
                let port = info
                    .as_ref()
                    .map_or(bootstrap::DEFAULT_PORT, |i| i.listen.port());
                let host = coordinator
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .context("--coordinator must be HOST:PORT")?;
                format!("{host}:{port}")
            }
        };
        (Some(sha), endpoint)
    };
    Ok(ScriptParams {
        coordinator,
        bootstrap,
        ca_pem,
        agent_sha256,
        token: Some(token),
    })
}
