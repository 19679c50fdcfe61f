//! Placeholder until this group of subcommands is implemented.

use std::path::Path;

#[derive(Debug, clap::Subcommand)]
pub enum CoordinatorCommand {
    /// Create the coordinator's CA and state.
    Init,
}

pub fn run(_root: &Path, _cmd: CoordinatorCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
