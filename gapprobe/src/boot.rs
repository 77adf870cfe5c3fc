//! `gapprobe boot`: the VMM as a plain command (owned by the l1-harness work).

use crate::exit::Outcome;

#[derive(Debug, clap::Args)]
pub struct BootArgs {}

pub fn run(_args: &BootArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("gapprobe boot is not implemented yet")
}
