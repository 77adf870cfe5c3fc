//! `gapprobe bisect-run`: one step of `git bisect run` in a kernel tree. Builds the revision,
//! runs `gapprobe vm` on its kernel up to --repeat times (stopping at the first gap), turns
//! the runs into good (0), bad (1) or skip (125), logs the step in the repository's git
//! directory and prints how likely a bad commit passes as good. `--summary` prints the log.

mod build;
mod child;
mod git;
mod log;
mod miss;
mod report;
mod runs;
mod verdict;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use clap::Parser;
use nix::sys::signal::Signal;

use crate::cli::{parse_positive_duration, Cli};
use crate::exit::Outcome;
use crate::signals;
use build::Built;
use log::Step;
use runs::{Measured, RunPlan};
pub use verdict::EXIT_ABORT_BISECTION;
use verdict::{step_verdict, RunEnd, Verdict};

// The subcommand's help is the doc comment of `Command::BisectRun` in cli.rs.
#[derive(Debug, clap::Args)]
pub struct BisectRunArgs {
    /// Build command, run as `sh -c CMD` in the current directory; the last non-empty line
    /// of its stdout is the kernel image. A failing build skips the revision (exit 125).
    /// [default: the embedded scripts/build-kernel.sh with kernels/gapprobe.config, cached]
    #[arg(long, value_name = "CMD", conflicts_with = "summary")]
    build: Option<String>,

    /// Run gapprobe vm up to N times per revision (the step stops at the first gap).
    #[arg(long, value_name = "N", default_value_t = 3, conflicts_with = "summary",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,

    /// --duration of each run.
    #[arg(long, value_name = "DUR", default_value = "60s", conflicts_with = "summary",
          value_parser = parse_positive_duration)]
    duration: std::time::Duration,

    /// Print this repository's bisect-run log and the miss-probability estimate, then exit.
    #[arg(long)]
    summary: bool,

    /// Options for every `gapprobe vm` run, after `--` (e.g. -- --max-gap 50ms --vcpus 4).
    /// --kernel, --duration and --json are bisect-run's.
    #[arg(last = true, value_name = "VM OPTIONS", conflicts_with = "summary")]
    vm_options: Vec<String>,
}

pub fn run(args: &BisectRunArgs) -> anyhow::Result<Outcome> {
    if args.summary {
        return summary();
    }
    match step(args) {
        Ok(outcome) => Ok(outcome),
        Err(err) => abort_bisection(&err),
    }
}

/// The shared error path exits 2, which `git bisect run` would take for "bad": an error in
/// a step (the same on every revision: bad options, no repository, no build) must stop the
/// bisection instead.
fn abort_bisection(err: &anyhow::Error) -> ! {
    eprintln!("gapprobe: error: {err:#}");
    eprintln!("bisect-run: aborting the bisection (exit {EXIT_ABORT_BISECTION})");
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(EXIT_ABORT_BISECTION))
}

fn summary() -> anyhow::Result<Outcome> {
    let path = log::log_path(&git::git_dir()?);
    let Some(steps) = log::read(&path)? else {
        anyhow::bail!(
            "no bisect-run log at {} yet: `gapprobe bisect-run` writes one line there per step",
            path.display()
        );
    };
    for line in report::summary_lines(&steps) {
        println!("{line}");
    }
    Ok(Outcome::Clean)
}

/// What the runs of a step added up to.
#[derive(Debug, Default)]
struct Tally {
    runs: u32,
    gaps: u32,
    measured: Duration,
    worst_gap_ns: Option<u64>,
}

impl Tally {
    fn add(&mut self, measured: Measured, gap: bool) {
        self.gaps += u32::from(gap);
        self.measured += measured.elapsed;
        self.worst_gap_ns = self.worst_gap_ns.max(Some(measured.worst_gap_ns));
    }
}

/// How the revision's test ended.
struct Decided {
    verdict: Verdict,
    reason: Option<String>,
    /// A run that was stopped by this signal: passed up, which also aborts.
    signal: Option<i32>,
}

fn step(args: &BisectRunArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    signals::watch().context("cannot watch SIGINT/SIGTERM")?;
    check_vm_options(&args.vm_options)?;
    let log_path = log::log_path(&git::git_dir()?);
    let revision = git::revision_under_test()?;
    let gapprobe = std::env::current_exe().context("locating this gapprobe for the runs")?;
    eprintln!("bisect-run: testing {revision}");

    let mut tally = Tally::default();
    let tested = test_revision(args, &gapprobe, &mut tally);
    let decided = match (signals::received(), tested) {
        (Some(signal), _) => Decided {
            verdict: Verdict::Abort,
            reason: Some(format!("interrupted by {}", signal_name(signal))),
            signal: Some(signal),
        },
        (None, Ok(decided)) => decided,
        (None, Err(err)) => Decided {
            verdict: Verdict::Abort,
            reason: Some(format!("{err:#}")),
            signal: None,
        },
    };
    let step = Step {
        at: SystemTime::now(),
        revision,
        verdict: decided.verdict,
        runs: tally.runs,
        repeat: args.repeat,
        gaps: tally.gaps,
        measured: tally.measured,
        worst_gap_ns: tally.worst_gap_ns,
        duration: args.duration,
        wall: started.elapsed(),
        reason: decided.reason.clone(),
    };
    log::append(&log_path, &step)?;
    println!("{}", report::step_line(&step));
    // The verdict stands even if an older line of the log is damaged; only the estimate,
    // which needs every bad step, is lost.
    match log::read(&log_path) {
        Ok(steps) => {
            let steps = steps.unwrap_or_default();
            for line in report::estimate_lines(&steps, args.repeat, args.duration) {
                println!("{line}");
            }
        }
        Err(err) => eprintln!("gapprobe: warning: no miss-probability estimate: {err}"),
    }
    match (decided.signal, decided.verdict) {
        (Some(signal), _) => Ok(Outcome::Interrupted(signal)),
        (None, Verdict::Good) => Ok(Outcome::Clean),
        (None, Verdict::Bad) => Ok(Outcome::Failed),
        (None, Verdict::Skip) => Ok(Outcome::CannotTest),
        (None, Verdict::Abort) => Err(anyhow!(decided.reason.unwrap_or_default())),
    }
}

/// Checks the vm options as `gapprobe vm` will parse them, before a long build.
fn check_vm_options(options: &[String]) -> anyhow::Result<()> {
    let ours = [
        "gapprobe",
        "vm",
        "--kernel",
        "K",
        "--duration",
        "1s",
        "--json",
        "J",
    ];
    let words = ours
        .into_iter()
        .map(String::from)
        .chain(options.iter().cloned());
    Cli::try_parse_from(words).map(drop).map_err(|err| {
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        anyhow!(
            "gapprobe vm options after --: {} (bisect-run sets --kernel, --duration and --json)",
            first.trim_start_matches("error: ")
        )
    })
}

fn test_revision(
    args: &BisectRunArgs,
    gapprobe: &std::path::Path,
    tally: &mut Tally,
) -> anyhow::Result<Decided> {
    let image = match build::build(args.build.as_deref())? {
        Built::Image(image) => image,
        Built::Failed(reason) => {
            return Ok(Decided {
                verdict: Verdict::Skip,
                reason: Some(reason),
                signal: None,
            })
        }
    };
    eprintln!("bisect-run: kernel image {}", image.display());
    let results = tempfile::Builder::new()
        .prefix("gapprobe-bisect-")
        .tempdir()
        .context("creating a directory for the runs' results")?;
    let plan = RunPlan {
        gapprobe,
        image: &image,
        duration: args.duration,
        vm_options: &args.vm_options,
    };
    let mut last = None;
    for run in 1..=args.repeat {
        if signals::received().is_some() {
            break;
        }
        eprintln!("bisect-run: run {run} of {}", args.repeat);
        tally.runs += 1;
        let report = runs::run_once(&plan, &results.path().join(format!("run{run}.json")))?;
        if let Some(measured) = report.measured {
            tally.add(measured, report.end == RunEnd::Gap);
        }
        let decisive = report.end != RunEnd::NoGap;
        last = Some(report);
        if decisive {
            break;
        }
    }
    let verdict = step_verdict(last.as_ref().map(|report| &report.end));
    let (reason, signal) = match last.map(|report| (report.end, report.skip_line)) {
        Some((RunEnd::CannotTest, skip)) => (
            Some(skip.unwrap_or_else(|| "gapprobe vm exited 125".to_string())),
            None,
        ),
        Some((RunEnd::Broken(why), _)) => (Some(format!("gapprobe vm {why}")), None),
        Some((RunEnd::Interrupted(signal), _)) => (
            Some(format!("gapprobe vm stopped by {}", signal_name(signal))),
            Some(signal),
        ),
        _ => (None, None),
    };
    Ok(Decided {
        verdict,
        reason,
        signal,
    })
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string())
}
