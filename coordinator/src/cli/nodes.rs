//! Placeholder until this group of subcommands is implemented.

use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct NodesArgs {}

pub fn run(_root: &Path, _args: NodesArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
