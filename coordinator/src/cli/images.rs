//! Placeholder until this group of subcommands is implemented.

use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {}

pub fn build(_root: &Path, _args: BuildArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {}

pub fn images(_root: &Path, _args: ImagesArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

pub fn inspect(_root: &Path, _args: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {}

pub fn tag(_root: &Path, _args: TagArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {}

pub fn rmi(_root: &Path, _args: RmiArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {}

pub fn save(_root: &Path, _args: SaveArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

pub fn load(_root: &Path, _args: LoadArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

