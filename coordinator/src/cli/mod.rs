//! Command-line interface of the `seaport` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod access;
mod admins;
mod bootstrap;
mod check;
mod cluster;
mod coordinator;
mod distribute;
mod images;
mod nodes;
mod registry;
mod signing;
mod token;

/// Default root of Seaport's local state (image store, coordinator state).
pub const DEFAULT_ROOT: &str = "/var/lib/seaport";

/// Package a whole Kubernetes cluster as one OCI cluster image and roll it out
/// to hosts through agents.
#[derive(Debug, Parser)]
#[command(name = "seaport", version, about, propagate_version = true)]
pub struct Cli {
    /// Root of Seaport's local state: image store, coordinator state.
    #[arg(long, global = true, env = "SEAPORT_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a cluster image from a Kubefile and a context directory.
    Build(images::BuildArgs),
    /// List the cluster images in the local store.
    Images(images::ImagesArgs),
    /// Show an image's digest, layers, labels, env, cmds, launch and apps as JSON.
    Inspect(images::InspectArgs),
    /// Give an image in the local store another name.
    Tag(images::TagArgs),
    /// Remove an image name, and the blobs nothing else references.
    Rmi(images::RmiArgs),
    /// Write images to one OCI archive.
    Save(images::SaveArgs),
    /// Load images from an OCI archive, verifying every blob.
    Load(images::LoadArgs),
    /// Store registry credentials (docker-compatible config.json, mode 0600).
    Login(registry::LoginArgs),
    /// Forget the credentials stored for a registry.
    Logout(registry::LogoutArgs),
    /// Push a cluster image to an OCI distribution registry.
    Push(registry::PushArgs),
    /// Pull a cluster image from an OCI distribution registry.
    Pull(registry::PullArgs),
    /// Signing keys: generate a key pair.
    #[command(subcommand)]
    Key(signing::KeyCommand),
    /// Sign an image of the local store with a private key.
    Sign(signing::SignArgs),
    /// Create and run the coordinator (CA, state, QUIC endpoint).
    #[command(subcommand)]
    Coordinator(coordinator::CoordinatorCommand),
    /// Join tokens for enrolling agents.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The enrolled nodes: list, remove (revoke) one, approve host IPs.
    Nodes(nodes::NodesArgs),
    /// Admin certificates: list, issue, revoke.
    Admin(admins::AdminArgs),
    /// Send an image's layers to nodes (peer-to-peer), and show progress.
    Distribute(distribute::DistributeArgs),
    /// Check hosts before an install (swap, ports, forwarding, hostnames, disk, ...), changing nothing.
    Check(check::CheckArgs),
    /// Install a cluster image on hosts: -m masters, -n workers (by IP).
    Run(cluster::RunArgs),
    /// Clusters and how every host stands: phase, step, errors.
    Status(cluster::StatusArgs),
    /// Undo a cluster's install on every host, or remove hosts (-m/-n) from it.
    Delete(cluster::DeleteArgs),
    /// Converge a cluster to a Clusterfile: install, add or remove hosts, upgrade.
    Apply(cluster::ApplyArgs),
    /// Add hosts to a cluster.
    Join(cluster::JoinArgs),
    /// Step logs of a cluster's hosts.
    Logs(cluster::LogsArgs),
    /// The audit log: every operation asked of the coordinator.
    Audit(cluster::AuditArgs),
    /// What a host runs to get its agent: cloud-init user-data or a shell one-liner.
    #[command(subcommand)]
    Bootstrap(bootstrap::BootstrapCommand),
    #[command(flatten)]
    About(seaport_shared::cli_docs::About),
}

/// The exit codes of `seaport` besides 0 (success); README.md has the
/// table.
pub mod exit {
    /// The command failed (the message says why and what to do).
    pub const FAILURE: u8 = 1;
    /// The command line is wrong (clap's code for usage errors).
    pub const USAGE: u8 = 2;
    /// Preflight checks found errors: `seaport check`, or an install,
    /// join or upgrade refused before any host changed.
    pub const PREFLIGHT: u8 = 3;
    /// `seaport status --drift` found files modified or missing.
    pub const DRIFT: u8 = 4;
}

/// An error that exits with its own code (see [`exit`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for an error a command returned.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<Exit>().map_or(exit::FAILURE, |e| e.code)
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root;
    match cli.command {
        Command::Build(args) => images::build(&root, args),
        Command::Images(args) => images::images(&root, args),
        Command::Inspect(args) => images::inspect(&root, args),
        Command::Tag(args) => images::tag(&root, args),
        Command::Rmi(args) => images::rmi(&root, args),
        Command::Save(args) => images::save(&root, args),
        Command::Load(args) => images::load(&root, args),
        Command::Login(args) => registry::login(&root, args),
        Command::Logout(args) => registry::logout(&root, args),
        Command::Push(args) => registry::push(&root, args),
        Command::Pull(args) => registry::pull(&root, args),
        Command::Key(cmd) => signing::key(cmd),
        Command::Sign(args) => signing::sign(&root, args),
        Command::Coordinator(cmd) => coordinator::run(&root, cmd),
        Command::Token(cmd) => token::run(&root, cmd),
        Command::Nodes(args) => nodes::run(&root, args),
        Command::Admin(args) => admins::run(&root, args),
        Command::Distribute(args) => distribute::run(&root, args),
        Command::Bootstrap(cmd) => bootstrap::run(&root, cmd),
        Command::Check(args) => check::check(&root, args),
        Command::About(about) => {
            use clap::CommandFactory;
            Ok(about.run(Cli::command())?)
        }
        Command::Run(args) => cluster::run(&root, args),
        Command::Status(args) => cluster::status(&root, args),
        Command::Delete(args) => cluster::delete(&root, args),
        Command::Apply(args) => cluster::apply(&root, args),
        Command::Join(args) => cluster::join(&root, args),
        Command::Logs(args) => cluster::logs(&root, args),
        Command::Audit(args) => cluster::audit(&root, args),
    }
}
