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
use seaport_kube_double::kubeadm_api::{self, Version};
use seaport_kube_double::pki::PkiDir;
use seaport_kube_double::upgrade;

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
    /// Writes a kubeconfig for `https://apiserver.cluster.local:6443` with
    /// the cluster CA: with a client certificate from the CA when its key
    /// is there (admin.conf), else naming the kubelet's client certificate
    /// file (kubelet.conf of a joined node).
    Kubeconfig {
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        dir: PathBuf,
        /// The file to write (0600).
        #[arg(long)]
        out: PathBuf,
        /// The user (kubernetes-admin, system:node:NAME).
        #[arg(long)]
        user: String,
        /// The user's group (system:masters, system:nodes).
        #[arg(long, default_value = "")]
        group: String,
    },
    /// The kubectl double (bin/kubectl runs it): checks and records.
    Kubectl {
        /// Where its records go.
        #[arg(
            long,
            default_value = "/var/lib/kubectl-double",
            env = "KUBECTL_DOUBLE_STATE"
        )]
        state: PathBuf,
        /// kubectl's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Checks a kubeadm configuration file as kubeadm RELEASE reads it for
    /// init or join (see kubeadm_api); prints warnings, fails naming the
    /// file, document and field.
    Validate {
        #[arg(long)]
        config: PathBuf,
        /// The kubeadm release (v1.19.8).
        #[arg(long)]
        kubeadm_version: String,
        /// init or join.
        #[arg(long = "for")]
        command: String,
    },
    /// After init: records the control plane's version (the
    /// configuration's kubernetesVersion, checked against kubeadm's).
    RecordInit {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        kubeadm_version: String,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
    },
    /// After join: records the endpoint joined through and the cluster's
    /// version it serves.
    RecordJoin {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
        #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
        ca: PathBuf,
    },
    /// `kubeadm upgrade apply VERSION`: checks and records it.
    UpgradeApply {
        #[arg(long)]
        version: String,
        #[arg(long)]
        kubeadm_version: String,
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
    },
    /// `kubeadm upgrade node`: reads the cluster's version from the
    /// endpoint joined through, checks and records it.
    UpgradeNode {
        #[arg(long, default_value = "/var/lib/kubeadm-double")]
        state: PathBuf,
        #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
        ca: PathBuf,
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
        Cmd::Kubeconfig {
            dir,
            out,
            user,
            group,
        } => write_kubeconfig(&PkiDir::new(&dir), &out, &user, &group)?,
        Cmd::Kubectl { state, args } => kubectl(&state, &args),
        Cmd::Validate {
            config,
            kubeadm_version,
            command,
        } => {
            let release = parse_version(&kubeadm_version)?;
            let cmd = match command.as_str() {
                "init" => kubeadm_api::Command::Init,
                "join" => kubeadm_api::Command::Join,
                other => bail!("--for must be init or join, not {other}"),
            };
            for w in kubeadm_api::validate_file(&config, release, cmd)? {
                eprintln!("W: {w}");
            }
        }
        Cmd::RecordInit {
            config,
            kubeadm_version,
            state,
        } => {
            let release = parse_version(&kubeadm_version)?;
            let docs = config::read(&config)?;
            let configured = find(&docs, "ClusterConfiguration")
                .and_then(|c| str_at(&c.value, &["kubernetesVersion"]).map(String::from));
            let v = upgrade::init_version(release, configured.as_deref())?;
            upgrade::write_version(&state, upgrade::CLUSTER_VERSION, v)?;
            upgrade::write_version(&state, upgrade::NODE_VERSION, v)?;
            println!("[init] Using Kubernetes version: {v}");
        }
        Cmd::RecordJoin { config, state, ca } => {
            let docs = config::read(&config)?;
            let join = find(&docs, "JoinConfiguration")
                .with_context(|| format!("{}: no JoinConfiguration", config.display()))?;
            let ep = required(
                &config,
                join,
                &["discovery", "bootstrapToken", "apiServerEndpoint"],
            )?;
            let v = cluster_version(&ep, &ca)?;
            upgrade::write(&state, upgrade::JOIN_ENDPOINT, &format!("{ep}\n"))?;
            upgrade::write_version(&state, upgrade::NODE_VERSION, v)?;
        }
        Cmd::UpgradeApply {
            version,
            kubeadm_version,
            state,
        } => {
            let release = parse_version(&kubeadm_version)?;
            let target = parse_version(&version)?;
            let Some(cluster) = upgrade::read_version(&state, upgrade::CLUSTER_VERSION) else {
                bail!("[upgrade/config] FATAL: this host initialized no cluster (no kubeadm-config to read): run upgrade apply on the first control-plane node");
            };
            upgrade::check_apply(release, cluster, target)?;
            upgrade::write_version(&state, upgrade::CLUSTER_VERSION, target)?;
            upgrade::write_version(&state, upgrade::NODE_VERSION, target)?;
            upgrade::record(&state, &format!("apply {target} from {cluster}"));
            println!(
                "[upgrade/successful] SUCCESS! Your cluster was upgraded to \"{target}\". Enjoy!"
            );
        }
        Cmd::UpgradeNode { state, ca } => {
            let ep = std::fs::read_to_string(state.join(upgrade::JOIN_ENDPOINT))
                .map(|t| t.trim().to_string())
                .context("[upgrade] FATAL: this host joined no cluster (no endpoint recorded)")?;
            let cluster = cluster_version(&ep, &ca)?;
            let node = upgrade::read_version(&state, upgrade::NODE_VERSION);
            upgrade::check_node(node, cluster)?;
            upgrade::write_version(&state, upgrade::NODE_VERSION, cluster)?;
            let from = node.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            upgrade::record(&state, &format!("node {cluster} from {from}"));
            println!("[upgrade] The configuration for this node was successfully updated!");
        }
        Cmd::WaitHealthy {
            endpoint,
            ca,
            timeout,
        } => wait_healthy(&endpoint, &ca, Duration::from_secs(timeout))?,
    }
    Ok(())
}

fn write_kubeconfig(pki: &PkiDir, out: &Path, user: &str, group: &str) -> Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let ca = pki.ca_pem()?;
    let creds = if pki.ca_key().is_file() {
        let (cert, key) = pki.issue_client(user, group)?;
        format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&cert),
            b64(&key)
        )
    } else {
        let f = "/var/lib/kubelet/pki/kubelet-client-current.pem";
        format!("    client-certificate: {f}\n    client-key: {f}\n")
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    certificate-authority-data: {}\n    server: https://apiserver.cluster.local:6443\ncontexts:\n- name: {user}@kubernetes\n  context:\n    cluster: kubernetes\n    user: {user}\nusers:\n- name: {user}\n  user:\n{creds}current-context: {user}@kubernetes\npreferences: {{}}\n",
        b64(&ca)
    );
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    seaport_shared::confined::write_atomic(out, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The kubectl double: records the call, checks it, prints what kubectl
/// would; exits 1 with kubectl's message on what kubectl rejects.
fn kubectl(state: &Path, args: &[String]) {
    use seaport_kube_double::kubectl as k;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    k::append(
        state,
        "calls.log",
        &format!("{}\t{}", cwd.display(), args.join(" ")),
    );
    let env = k::Env {
        kubeconfig: std::env::var("KUBECONFIG").ok(),
        home: std::env::var("HOME").ok(),
        require_kubeconfig: std::env::var("KUBECTL_DOUBLE_REQUIRE_KUBECONFIG")
            .is_ok_and(|v| v == "1"),
    };
    match k::run(args, &cwd, state, &env) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            k::append(state, "calls.log", &format!("FAILED: {first}"));
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn parse_version(s: &str) -> Result<Version> {
    Version::parse(s).with_context(|| format!("\"{s}\" is not a Kubernetes version (vX.Y.Z)"))
}

/// The cluster's version served at https://ENDPOINT/version.
fn cluster_version(endpoint: &str, ca: &Path) -> Result<Version> {
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let a = apiserver::get(endpoint, "/version", &Trust::Ca(pem), None)?;
    if a.code != 200 {
        bail!(
            "GET https://{endpoint}/version: HTTP {}: {}",
            a.code,
            a.body
        );
    }
    let v: serde_json::Value = serde_json::from_str(&a.body)
        .with_context(|| format!("GET https://{endpoint}/version: not JSON"))?;
    let text = v["gitVersion"].as_str().unwrap_or("");
    parse_version(text)
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
