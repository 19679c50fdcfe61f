//! Placeholder until this group of subcommands is implemented.

use std::path::Path;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a join token.
    Create,
}

pub fn run(_root: &Path, _cmd: TokenCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
