//! `gapprobe compare`: sets of runs side by side, and whether each set differs from the first
//! beyond run-to-run noise. The run is the unit of the test: gaps within one run are not
//! independent of each other, runs are.

mod load;
mod report;
mod stats;
mod table;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::exit::Outcome;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run sets: a --json result file (one run) or a directory of *.json result files (one
    /// run each). The first set is the baseline; every other set is tested against it. Give a
    /// directory per kernel, not a shell glob (each file would be a set of its own).
    #[arg(required = true, value_name = "SET", num_args = 1..=26)]
    pub sets: Vec<PathBuf>,

    /// Print a JSON document instead of the tables (fields in the README).
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 whatever the verdict; bad input is an error (exit 2).
pub fn run(args: &CompareArgs) -> anyhow::Result<Outcome> {
    let sets = args
        .sets
        .iter()
        .map(|path| load::load_set(path))
        .collect::<Result<Vec<_>, _>>()?;
    let comparable = load::check_comparable(&sets)?;
    let report = report::build(&sets, comparable)?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table::render(&report)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("stdout")?;
    Ok(Outcome::Clean)
}
