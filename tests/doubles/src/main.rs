//! `seaport-kube-double`: the helper of the lab's kubeadm double (see the
//! crate's lib.rs). Each subcommand is one thing real kubeadm or the API
//! server does; `tests/fixtures/kubeadm-double` calls them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use seaport_kube_double::apiserver::{self, Discovery, Server, ServerOptions, Trust};
use seaport_kube_double::certs;
use seaport_kube_double::config::{self, find, required, str_at, strs_at};
use seaport_kube_double::pki::PkiDir;

#[derive(Parser)]
#[command(
    name = "seaport-kube-double",
    about = "Stand-ins for kubeadm's PKI and the API server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates the cluster CA (unless present) and issues the API server's
    /// serving certificate for this host.
    Pki {
        /// The PKI directory.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        dir: PathBuf,
        /// The host's name.
        #[arg(long)]
        host: String,
        /// An address of the host (repeat).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A kubeadm configuration whose ClusterConfiguration's
        /// apiServer.certSANs are added.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only write ca.crt/ca.key if missing; no serving certificate.
        #[arg(long)]
        ca_only: bool,
    },
    /// `init --upload-certs`: seals ca.crt and ca.key under the
    /// InitConfiguration's certificateKey and accepts its bootstrap tokens.
    UploadCerts {
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        dir: PathBuf,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
        /// The init configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// The API server stand-in: serves until killed.
    Serve {
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        dir: PathBuf,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// The name in every answer's X-Seaport-Host header.
        #[arg(long)]
        host: String,
    },
    /// kubeadm join's discovery (and, for a master, the certificate
    /// download) from the JoinConfiguration's fields.
    Discover {
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        dir: PathBuf,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
        /// The join configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Waits until https://ENDPOINT/healthz answers ok, verified with the CA.
    WaitHealthy {
        #[arg(long, default_value = "127.0.0.1:6443")]
        endpoint: String,
        #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
        ca: PathBuf,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.cmd) {
        eprintln!("seaport-kube-double: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Pki {
            dir,
            host,
            ips,
            config,
            ca_only,
        } => {
            let pki = PkiDir::new(&dir);
            if pki.ensure_ca()? {
                println!("[certs] Generating \"ca\" certificate and key");
            }
            if ca_only {
                return Ok(());
            }
            let extra = match &config {
                Some(p) => cert_sans(p)?,
                None => Vec::new(),
            };
            let names = pki.issue_serving(&host, &ips, &extra)?;
            println!(
                "[certs] apiserver serving cert is signed for DNS names and IPs [{}]",
                names.join(" ")
            );
        }
        Cmd::UploadCerts { dir, state, config } => {
            let docs = config::read(&config)?;
            let init = find(&docs, "InitConfiguration")
                .with_context(|| format!("{}: no InitConfiguration", config.display()))?;
            let key = required(&config, init, &["certificateKey"])?;
            let sealed = certs::seal_dir(&key, &dir)?;
            certs::store(&state, &sealed)?;
            let tokens = init
                .value
                .get("bootstrapTokens")
                .and_then(|v| v.as_sequence())
                .map(|s| {
                    s.iter()
                        .filter_map(|t| str_at(t, &["token"]).map(String::from))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if tokens.is_empty() {
                bail!(
                    "{}: InitConfiguration.bootstrapTokens has no token",
                    config.display()
                );
            }
            for t in &tokens {
                certs::add_token(&state, t)?;
            }
            println!("[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace");
        }
        Cmd::Serve {
            dir,
            state,
            listen,
            host,
        } => {
            let server = Server::start(ServerOptions {
                pki: dir,
                state,
                listen,
                host,
            })?;
            println!("serving on https://{}", server.addr());
            server.wait();
        }
        Cmd::Discover { dir, state, config } => {
            let docs = config::read(&config)?;
            let join = find(&docs, "JoinConfiguration")
                .with_context(|| format!("{}: no JoinConfiguration", config.display()))?;
            let bt = ["discovery", "bootstrapToken"];
            let d = Discovery {
                endpoint: required(&config, join, &[bt[0], bt[1], "apiServerEndpoint"])?,
                token: required(&config, join, &[bt[0], bt[1], "token"])?,
                ca_hashes: strs_at(&join.value, &[bt[0], bt[1], "caCertHashes"]),
                certificate_key: join
                    .value
                    .get("controlPlane")
                    .filter(|v| !v.is_null())
                    .map(|_| required(&config, join, &["controlPlane", "certificateKey"]))
                    .transpose()?,
            };
            let what = apiserver::discover(&d, &PkiDir::new(&dir), &state)?;
            println!("[discovery] {what}");
        }
        Cmd::WaitHealthy {
            endpoint,
            ca,
            timeout,
        } => wait_healthy(&endpoint, &ca, Duration::from_secs(timeout))?,
    }
    Ok(())
}

/// The apiServer.certSANs of the file's ClusterConfiguration, if any.
fn cert_sans(path: &Path) -> Result<Vec<String>> {
    let docs = config::read(path)?;
    Ok(find(&docs, "ClusterConfiguration")
        .map(|c| strs_at(&c.value, &["apiServer", "certSANs"]))
        .unwrap_or_default())
}

fn wait_healthy(endpoint: &str, ca: &Path, timeout: Duration) -> Result<()> {
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let start = Instant::now();
    loop {
        let last = match apiserver::get(endpoint, "/healthz", &Trust::Ca(pem.clone()), None) {
            Ok(a) if a.code == 200 && a.body == "ok" => {
                println!(
                    "[api-check] The API server is healthy after {:?}",
                    start.elapsed()
                );
                return Ok(());
            }
            Ok(a) => format!("HTTP {}: {}", a.code, a.body),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > timeout {
            bail!("the API server at {endpoint} is not healthy after {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
