//! `seaport token create`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::ca::Ca;
use crate::daemon::read_serve_info;
use crate::tokens;
use seaport_shared::wire::{AdminRequest, AdminResponse, TokenGrant};

use super::access::{with_coordinator, Offline};

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
    /// Make the token for one existing node (id or hostname): it enrolls
    /// exactly that node again, once (a reinstalled or removed host). No
    /// other token enrolls under an existing node id.
    #[arg(long)]
    pub node: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (HOST:PORT) to reach it and to show in the join
    /// command; defaults to the address `coordinator serve` listens on.
    #[arg(long)]
    pub coordinator: Option<String>,
}

pub(super) fn run(root: &Path, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(root, args),
    }
}

fn create(root: &Path, args: CreateArgs) -> anyhow::Result<()> {
    let ttl_secs = args.ttl.as_secs();
    let grant = with_coordinator(
        root,
        args.coordinator.as_deref(),
        AdminRequest::CreateToken {
            ttl_secs,
            uses: args.uses,
            node: args.node.clone(),
        },
        Offline::Write,
        |resp| match resp {
            AdminResponse::Token(grant) => Ok(grant),
            other => anyhow::bail!("unexpected answer from the coordinator: {other:?}; the CLI and the coordinator must be the same version (seaport --version)"),
        },
        |store| {
            let ca = Ca::load(root)?;
            Ok(tokens::create(
                store,
                &ca,
                ttl_secs,
                args.uses,
                args.node.as_deref(),
            )?)
        },
    )
    .context("creating a join token")?;
    let expires = seaport_shared::clock::rfc3339(grant.expires_at);
    if args.json {
        let out = serde_json::json!({
            "token": grant.token,
            "ca_pin": grant.ca_pin,
            "expires_at": expires,
            "uses": grant.uses,
            "node": grant.node,
            "join_command": join_command(root, &args, &grant),
        });
        println!("{out}");
    } else {
        println!("token:   {}", grant.token);
        println!("ca pin:  {}", grant.ca_pin);
        println!("expires: {expires} ({} use(s))", grant.uses);
        if let Some(node) = &grant.node {
            println!(
                "enrolls: node {node} again (its older certificates are refused from then on)"
            );
        }
        println!();
        println!("join a host with:");
        println!("  {}", join_command(root, &args, &grant));
    }
    Ok(())
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
