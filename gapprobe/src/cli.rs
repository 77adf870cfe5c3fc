//! Command line: the user target is the default command; subcommands for the VMM and images.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bisect::BisectRunArgs;
use crate::boot::BootArgs;
use crate::compare::CompareArgs;
use crate::coresched::CoreSchedMode;
use crate::initrd_cmd::InitrdArgs;
use crate::vm_cmd::VmArgs;

/// Find execution gaps of busy threads (the hwlat tracer, emulated in userspace) and catch
/// the kernel trace that explains them.
///
/// Without a subcommand gapprobe runs the user target: 8 groups x 2 threads busy-loop on the
/// TSC on two SMT siblings, 1 s busy then a random sleep, each group sharing one
/// core-scheduling cookie like the two vCPUs of a VM. A gap over --max-gap marks and stops the
/// trace, dumps it to --dump and exits 1.
///
/// Exit codes: 0 no gap over the threshold, 1 gap found, 2 usage or environment error,
/// 125 cannot test here, 130/143 stopped by SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "gapprobe", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the user target (the default when no subcommand is given).
    Run(RunArgs),
    /// Boot a kernel with our minimal KVM VMM; exit 0 when it powers off cleanly.
    Boot(BootArgs),
    /// Write a newc initramfs with this (static) gapprobe as /init.
    Initrd(InitrdArgs),
    // Its help is VmArgs's own doc comment (long, with the exit codes).
    Vm(VmArgs),
    /// Compare sets of --json results (one directory per kernel): gaps per minute, worst gap
    /// and percentiles side by side, and an exact Mann-Whitney U test of each set against the
    /// first, one value per run.
    ///
    /// Exit codes: 0 compared (whatever the verdict), 2 bad input (a missing, unreadable or
    /// non-result file, an empty directory, another schema, user and nested results mixed).
    Compare(CompareArgs),
    /// One `git bisect run` step: build the kernel at this revision, run `gapprobe vm` on it.
    ///
    /// Meant for `git bisect run gapprobe bisect-run [options] -- [gapprobe vm options]` in a
    /// kernel tree. Builds with --build (default: the embedded scripts/build-kernel.sh with
    /// kernels/gapprobe.config), then runs `gapprobe vm --kernel IMAGE --duration DUR
    /// --json TMP [vm options]` up to --repeat times, stopping at the first run that finds a
    /// gap. Each step appends one line to $(git rev-parse --git-dir)/gapprobe-bisect.log and
    /// prints the probability that a bad commit passes as good, from the gap rate measured on
    /// the bad steps so far; --summary prints the log and that estimate.
    ///
    /// Exit codes (what `git bisect run` does with them): 0 good (no run found a gap),
    /// 1 bad (a run found a gap), 125 skip (the build failed, the kernel did not boot, or
    /// this host cannot test), 128 abort the bisection (gapprobe vm exited 2: bad options or
    /// environment; not a git repository; an unusable build command; an error in bisect-run's
    /// own command line, where 2 would mean "bad" to `git bisect run`), 130/143 interrupted
    /// (also aborts).
    #[command(name = "bisect-run")]
    BisectRun(BisectRunArgs),
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err} (examples: 250us, 20ms, 1s)"))
}

pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// A parsed `--cpus` list (a newtype, so clap treats it as one value, not many).
#[derive(Debug, Clone)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    l1_harness::host_topology::parse_cpulist(text)
        .map(CpuList)
        .map_err(|err| err.to_string())
}

/// Options of the user target.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A gap longer than this ends the run: trace marker, trace stopped and dumped, exit 1.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_positive_duration)]
    pub max_gap: Duration,

    /// Stop after this long without a gap over --max-gap (exit 0). Default: run until a gap
    /// or Ctrl-C.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// CPUs the threads run on, kernel cpulist syntax (2,3 or 0-3). Default: the two SMT
    /// siblings of the first core that is not CPU 0's; without SMT, the last two CPUs.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,

    /// Number of groups ("VMs"); each group shares one core-scheduling cookie.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub groups: u32,

    /// Threads per group ("vCPUs per VM").
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads_per_group: u32,

    /// Pin thread i to the (i % len)-th CPU of --cpus, like a pinned vCPU. Default: every
    /// thread may run on every CPU of the list (as schedgaps' cpusets).
    #[arg(long)]
    pub pin: bool,

    /// Nice value of the busy threads (-20..19). A negative value keeps ordinary CFS
    /// neighbours from adding their time slices to the gaps you want to see.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,

    /// Busy-loop this long, then sleep.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration)]
    pub busy: Duration,

    /// Sleep a random time below this between busy phases (0 never sleeps).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub max_sleep: Duration,

    /// Seed of the sleep-time generator (schedgaps used srand(5)).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub seed: u64,

    /// Core-scheduling cookies per group: auto uses what the kernel has (prctl PR_SCHED_CORE,
    /// or a cgroup-v1 cpu.tag / cpu.scheduled), group insists on it, off runs without.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub core_sched: CoreSchedMode,

    /// Print a `Max latency` line this often.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Print only the final result.
    #[arg(long, short)]
    pub quiet: bool,

    /// Write a machine-readable result (schema in the README).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Record every gap at least this long in the JSON's gaps[].
    #[arg(long, value_name = "DUR", default_value = "1ms", value_parser = parse_duration)]
    pub log_gap: Duration,

    /// Treat a TSC that is not invariant (or that the kernel marked unstable) as an error.
    #[arg(long)]
    pub strict_tsc: bool,

    /// Trace events for the private trace instance: `system` or `system:event`, comma
    /// separated.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "sched,irq,timer",
        value_delimiter = ','
    )]
    pub events: Vec<String>,

    /// Per-CPU trace buffer size of the private instance, in KiB.
    #[arg(long, value_name = "KB", default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_kb: u64,

    /// Where the trace goes when a gap is found.
    #[arg(long, value_name = "PATH", default_value = "/dev/shm/log")]
    pub dump: PathBuf,

    /// Run without tracing (no tracefs, no root needed unless core scheduling needs it).
    #[arg(long)]
    pub no_trace: bool,
}
