//! `seaport login`, `logout`, `push`, `pull`: thin wrappers over
//! `seaport_rootfs::registry`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::platform::{parse_platform, platform_string};
use seaport_rootfs::registry::{
    pull_image, push_image, ClientOptions, CredentialStore, Credentials, RegistryClient,
};
use seaport_rootfs::store::Store;

/// How to reach the registry: shared by login, push and pull.
#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Talk plain HTTP to the registry (for test registries only).
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate bundle (PEM) for the registry, besides the
    /// system's and `<root>/certs.d/HOST[:PORT]/*.crt`. Repeatable.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,
}

impl ConnectionArgs {
    fn options(&self, root: &Path) -> ClientOptions {
        ClientOptions {
            insecure: self.insecure,
            ca_files: self.ca_files.clone(),
            certs_dirs: ClientOptions::default_certs_dirs(root),
            ..ClientOptions::default()
        }
    }
}

fn credential_store() -> anyhow::Result<CredentialStore> {
    Ok(CredentialStore::default_location()?)
}

fn client_for(
    root: &Path,
    registry: &str,
    conn: &ConnectionArgs,
) -> anyhow::Result<RegistryClient> {
    let store = credential_store()?;
    let credentials = store
        .get(registry)
        .with_context(|| format!("reading the credentials for {registry}"))?;
    Ok(RegistryClient::new(
        registry,
        &conn.options(root),
        credentials,
    )?)
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: String,
    /// Password or access token.
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(super) fn login(root: &Path, args: LoginArgs) -> anyhow::Result<()> {
    let password = match (args.password, args.password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with -p PASSWORD or --password-stdin"),
    };
    if args.username.is_empty() || password.is_empty() {
        bail!("the user name and password must not be empty");
    }
    let credentials = Credentials::new(args.username, password);
    let client = RegistryClient::new(
        &args.registry,
        &args.connection.options(root),
        Some(credentials.clone()),
    )?;
    client
        .check_login()
        .with_context(|| format!("logging in to {}", args.registry))?;
    let store = credential_store()?;
    store.store(&args.registry, &credentials)?;
    println!(
        "Login succeeded: credentials for {} stored in {}",
        client.host(),
        store.path().display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
}

pub(super) fn logout(_root: &Path, args: LogoutArgs) -> anyhow::Result<()> {
    let store = credential_store()?;
    if store.remove(&args.registry)? {
        println!("Removed the credentials for {}", args.registry);
    } else {
        println!("Not logged in to {}", args.registry);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image to push, named by its registry: REGISTRY/REPOSITORY[:TAG].
    pub name: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(super) fn push(root: &Path, args: PushArgs) -> anyhow::Result<()> {
    let image = ImageRef::parse(&args.name)?;
    let store = Store::open(root)?;
    let client = client_for(root, image.registry(), &args.connection)?;
    let report = push_image(&store, &args.name, &image, &client)
        .with_context(|| format!("pushing {}", image.canonical()))?;
    println!(
        "Pushed {} ({}): {} blobs uploaded ({}), {} already in the registry",
        image.canonical(),
        report.digest.map(|d| d.to_string()).unwrap_or_default(),
        report.transferred,
        human_bytes(report.bytes),
        report.skipped
    );
    if report.signatures > 0 {
        if let Some(d) = report.digest {
            println!(
                "Pushed its signatures: {} in {}:{}",
                report.signatures,
                image.canonical_repository(),
                seaport_rootfs::signing::signature_tag(&d)
            );
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image to pull: REGISTRY/REPOSITORY[:TAG|@DIGEST].
    pub name: String,
    /// Pull only this platform's manifest of a multi-platform image
    /// (os/arch[/variant]); without it every platform is pulled and the
    /// index is kept.
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(super) fn pull(root: &Path, args: PullArgs) -> anyhow::Result<()> {
    let image = ImageRef::parse(&args.name)?;
    let platform = match &args.platform {
        Some(p) => Some(
            parse_platform(p)
                .with_context(|| format!("--platform {p:?} is not os/arch[/variant]"))?,
        ),
        None => None,
    };
    let store = Store::open(root)?;
    let client = client_for(root, image.registry(), &args.connection)?;
    let report =
        pull_image(&store, &image, &client, platform.as_ref()).with_context(
            || match &platform {
                Some(p) => format!("pulling {} for {}", image.canonical(), platform_string(p)),
                None => format!("pulling {}", image.canonical()),
            },
        )?;
    println!(
        "Pulled {} ({}): {} blobs downloaded ({}), {} already in the local store",
        image.canonical(),
        report.digest.map(|d| d.to_string()).unwrap_or_default(),
        report.transferred,
        human_bytes(report.bytes),
        report.skipped
    );
    if report.signatures > 0 {
        println!("Pulled its signatures: {}", report.signatures);
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
