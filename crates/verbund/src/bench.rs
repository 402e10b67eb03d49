//! `verbund bench api`: load against a real node process over mutual TLS.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Creates and gets against a node.
    Api,
}

pub async fn run(_b: BenchCommand) -> Result<()> {
    anyhow::bail!("bench is being written")
}
