//! Placeholder until this group of subcommands is implemented.

use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct LoginArgs {}

pub fn login(_root: &Path, _args: LoginArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {}

pub fn logout(_root: &Path, _args: LogoutArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {}

pub fn push(_root: &Path, _args: PushArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {}

pub fn pull(_root: &Path, _args: PullArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

