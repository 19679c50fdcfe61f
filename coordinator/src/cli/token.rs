//! `seaport token create`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::admin::{self, AdminClient};
use crate::ca::{Ca, CoordinatorPaths};
use crate::daemon::read_serve_info;
use crate::state::{StateError, Store};
use crate::tokens;
use seaport_shared::wire::{AdminRequest, AdminResponse, TokenGrant};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it with the CA pin.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// How long the token is valid (e.g. 30m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How many agents may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT) to reach it and to show in the join
    /// command; defaults to the address `coordinator serve` listens on.
    #[arg(long)]
    pub coordinator: Option<String>,
}

pub fn run(root: &Path, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(root, args),
    }
}

fn create(root: &Path, args: CreateArgs) -> anyhow::Result<()> {
    let ttl_secs = args.ttl.as_secs();
    let paths = CoordinatorPaths::new(root);
    let grant = match Store::open(&paths.state_db()) {
        Ok(store) => {
            let ca = Ca::load(root)?;
            tokens::create(&store, &ca, ttl_secs, args.uses)?
        }
        Err(StateError::Busy(_)) => via_coordinator(root, &args, ttl_secs)?,
        Err(e) => return Err(e.into()),
    };
    let expires = super::nodes::rfc3339(grant.expires_at);
    if args.json {
        let out = serde_json::json!({
            "token": grant.token,
            "ca_pin": grant.ca_pin,
            "expires_at": expires,
            "uses": grant.uses,
            "join_command": join_command(root, &args, &grant),
        });
        println!("{out}");
    } else {
        println!("token:   {}", grant.token);
        println!("ca pin:  {}", grant.ca_pin);
        println!("expires: {expires} ({} use(s))", grant.uses);
        println!();
        println!("join a host with:");
        println!("  {}", join_command(root, &args, &grant));
    }
    Ok(())
}

fn via_coordinator(root: &Path, args: &CreateArgs, ttl_secs: u64) -> anyhow::Result<TokenGrant> {
    let addr = admin::coordinator_addr(root, args.coordinator.as_deref())?.context(
        "the state database is in use but no running coordinator address was found; pass --coordinator",
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = AdminClient::connect(root, &addr).await?;
        let resp = client
            .request(&AdminRequest::CreateToken {
                ttl_secs,
                uses: args.uses,
            })
            .await;
        client.close().await;
        match resp? {
            AdminResponse::Token(grant) => Ok(grant),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
        }
    })
}

fn join_command(root: &Path, args: &CreateArgs, grant: &TokenGrant) -> String {
    let addr = match (&args.coordinator, read_serve_info(root)) {
        (Some(a), _) => a.clone(),
        (None, Some(info)) if !info.listen.ip().is_unspecified() => info.listen.to_string(),
        (None, Some(info)) => format!("<COORDINATOR-IP>:{}", info.listen.port()),
        (None, None) => "<COORDINATOR-IP>:7443".to_string(),
    };
    format!(
        "seaport-agent join --coordinator {addr} --token {} --ca-pin {}",
        grant.token, grant.ca_pin
    )
}
