//! The user target: schedgaps' bursty busy threads on one SMT core, grouped by cookie, with a
//! trace that stops at the first gap over the threshold.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use l1_harness::host_topology::{format_cpulist, HostTopology};
use nix::time::ClockId;

use crate::cli::RunArgs;
use crate::coresched::{self, CoreSchedInterface, CoreSchedMode, LegacyGroups};
use crate::detector::trigger::{Trigger, TriggerCause};
use crate::detector::worker::{GroupPhase, WorkerPlan, GAP_FLOOR_NS};
use crate::detector::{self, DetectorConfig, GroupJoiner, RunEnd, RunSummary, Shared};
use crate::exit::Outcome;
use crate::report::{diff_line, ms, seconds};
use crate::result::{self, RunResult, TraceResult};
use crate::signals;
use crate::trace_session::TraceSession;
use crate::tsc::{self, clock_ns, TscRate};

/// Long enough for a few-ppm calibration, short enough not to delay the start.
const CALIBRATION_WINDOW: Duration = Duration::from_millis(200);

pub fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    signals::watch().context("cannot watch SIGINT/SIGTERM")?;
    let topology = HostTopology::from_host()?;
    let cpus = topology
        .select_cpus(args.cpus.as_ref().map(|list| list.0.as_slice()))
        .context("--cpus")?;
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };

    let tsc_warnings: Vec<String> = tsc::check_host().into_iter().map(|w| w.0).collect();
    for warning in &tsc_warnings {
        if args.strict_tsc {
            bail!("--strict-tsc: {warning}");
        }
        eprintln!("gapprobe: warning: {warning}");
    }
    let rate = TscRate {
        hz: tsc::calibrate_hz(CALIBRATION_WINDOW),
    };
    say(format!(
        "TSC: {}.{:03} MHz (calibrated against CLOCK_MONOTONIC_RAW)",
        rate.hz / 1_000_000,
        rate.hz / 1_000 % 1_000
    ));

    let (trace, stopper) = if args.no_trace {
        (None, None)
    } else {
        let (session, stopper) = TraceSession::start(&args.events, args.buffer_kb)?;
        (Some(session), Some(stopper))
    };
    let interface = choose_core_sched(args.core_sched)?;
    let core_sched_name = interface.as_ref().map_or("none", CoreSchedInterface::name);

    let workers = (args.groups * args.threads_per_group) as usize;
    say(format!(
        "{workers} threads ({} groups x {}) on CPUs {}{}, core scheduling: {core_sched_name}, max gap {}",
        args.groups,
        args.threads_per_group,
        format_cpulist(&cpus),
        if args.pin { " (pinned)" } else { "" },
        ms(args.max_gap.as_nanos() as u64),
    ));

    let config = DetectorConfig {
        rate,
        max_gap: args.max_gap,
        max_gap_ticks: rate.duration_to_ticks(args.max_gap),
        log_gap_ticks: rate.duration_to_ticks(args.log_gap),
        floor_ticks: rate.ns_to_ticks(GAP_FLOOR_NS),
        busy_ticks: rate.duration_to_ticks(args.busy),
        max_sleep: args.max_sleep,
        duration: args.duration,
        interval: args.interval,
        quiet: args.quiet,
    };
    let plans = worker_plans(args, &cpus);
    let reporter_cpus: Vec<usize> = topology
        .online_cpus()
        .iter()
        .copied()
        .filter(|cpu| !cpus.contains(cpu))
        .collect();
    let started_mono_ns = clock_ns(ClockId::CLOCK_MONOTONIC);
    let shared = Arc::new(Shared::new(config, workers, Trigger::new(stopper)));
    let join_group = group_joiner(interface.as_ref(), args, shared.clone())?;
    // The run takes the last references: the trigger's marker files close when it returns,
    // so the trace instance can be removed afterwards.
    let outcome = detector::run(shared, plans, join_group, &reporter_cpus);
    let summary = match outcome {
        Ok(summary) => summary,
        Err(message) => {
            if let Some(trace) = trace {
                trace.finish()?;
            }
            bail!(message);
        }
    };

    let trace_result = trace.as_ref().map(|session| {
        let exceeded = matches!(summary.end, RunEnd::Exceeded(_));
        session.dump(exceeded.then_some(args.dump.as_path()))
    });
    let result = build_result(
        args,
        &summary,
        rate,
        &cpus,
        core_sched_name,
        started_mono_ns,
        tsc_warnings,
        trace_result,
    );
    print_final(&summary, &result);
    if let Some(path) = &args.json {
        result::write(&result, path).with_context(|| format!("--json {}", path.display()))?;
    }
    if let Some(trace) = trace {
        trace.finish()?;
    }
    Ok(match summary.end {
        RunEnd::Duration => Outcome::Clean,
        RunEnd::Exceeded(_) => Outcome::Failed,
        RunEnd::Signal(signal) => Outcome::Interrupted(signal),
    })
}

fn choose_core_sched(mode: CoreSchedMode) -> anyhow::Result<Option<CoreSchedInterface>> {
    if mode == CoreSchedMode::Off {
        return Ok(None);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    match (coresched::detect(&mounts), mode) {
        (Ok(interface), _) => Ok(Some(interface)),
        (Err(reason), CoreSchedMode::Group) => {
            Err(coresched::CoreSchedError::Unavailable(reason).into())
        }
        (Err(reason), _) => {
            eprintln!("gapprobe: note: running without core-scheduling cookies: {reason}");
            Ok(None)
        }
    }
}

/// Thread i is thread i % T of group i / T, like vCPU i % T of VM i / T in schedgaps.
fn worker_plans(args: &RunArgs, cpus: &[usize]) -> Vec<WorkerPlan> {
    let per_group = args.threads_per_group as usize;
    (0..(args.groups as usize * per_group))
        .map(|index| WorkerPlan {
            index,
            group: index / per_group,
            affinity: if args.pin {
                vec![cpus[index % cpus.len()]]
            } else {
                cpus.to_vec()
            },
            nice: args.nice,
            seed: args.seed,
        })
        .collect()
}

/// How each worker gets its group's cookie through the chosen interface.
fn group_joiner(
    interface: Option<&CoreSchedInterface>,
    args: &RunArgs,
    shared: Arc<Shared>,
) -> anyhow::Result<Arc<GroupJoiner>> {
    let per_group = args.threads_per_group as usize;
    match interface {
        None => Ok(Arc::new(|_: &WorkerPlan, _, _| Ok(()))),
        Some(CoreSchedInterface::Prctl) => {
            let joiner = move |plan: &WorkerPlan, tid: i32, phase: GroupPhase| {
                let leader = plan.group * per_group;
                let result = match phase {
                    GroupPhase::Create if plan.index == leader => coresched::prctl_create(tid),
                    GroupPhase::Share if plan.index != leader => {
                        let leader_tid = shared.slots[leader]
                            .tid
                            .load(std::sync::atomic::Ordering::Relaxed);
                        coresched::prctl_share_from(leader_tid)
                    }
                    _ => Ok(()),
                };
                result.map_err(|err| err.to_string())
            };
            Ok(Arc::new(joiner))
        }
        Some(CoreSchedInterface::LegacyCgroup { cpu_root, file }) => {
            coresched::remove_stale_cgroups(cpu_root);
            let groups = LegacyGroups::create(cpu_root, file, args.groups as usize)?;
            let joiner = move |plan: &WorkerPlan, tid: i32, phase: GroupPhase| match phase {
                GroupPhase::Create => groups.join(plan.group, tid).map_err(|err| err.to_string()),
                GroupPhase::Share => Ok(()),
            };
            // The cgroups live as long as the joiner, which the run drops after the workers
            // have exited: then they are empty and can be removed.
            Ok(Arc::new(joiner))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_result(
    args: &RunArgs,
    summary: &RunSummary,
    rate: TscRate,
    cpus: &[usize],
    core_sched: &str,
    started_mono_ns: u64,
    tsc_warnings: Vec<String>,
    trace: Option<TraceResult>,
) -> RunResult {
    let threads: Vec<_> = summary
        .workers
        .iter()
        .map(|worker| result::thread_result(rate, worker))
        .collect();
    let trigger = result::trigger_result(rate, summary);
    let worst_gap_ns = threads
        .iter()
        .map(|thread| thread.max_gap_ns)
        .chain(trigger.iter().map(|trigger| trigger.gap_ns))
        .max()
        .unwrap_or(0);
    RunResult {
        schema: result::SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION"),
        target: "user",
        kernel: nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        tsc_hz: rate.hz,
        tsc_warnings,
        max_gap_ns: args.max_gap.as_nanos() as u64,
        log_gap_ns: args.log_gap.as_nanos() as u64,
        gap_floor_ns: GAP_FLOOR_NS,
        cpus: cpus.to_vec(),
        pin: args.pin,
        groups: args.groups,
        threads_per_group: args.threads_per_group,
        core_sched: core_sched.to_string(),
        started_mono_ns,
        elapsed_ns: summary.elapsed.as_nanos() as u64,
        end: result::end_name(summary.end),
        signal: match summary.end {
            RunEnd::Signal(signal) => Some(signal),
            _ => None,
        },
        exceeded: matches!(summary.end, RunEnd::Exceeded(_)),
        trigger,
        worst_gap_ns,
        gap_stats: result::run_gap_stats(&summary.workers),
        threads,
        gaps: result::gap_results(summary),
        gaps_dropped: summary.workers.iter().map(|w| w.gaps_dropped).sum(),
        trace,
    }
}

/// The final lines: schedgaps' `diff:` line on a gap, then one `result:` line always.
fn print_final(summary: &RunSummary, result: &RunResult) {
    if let Some(trigger) = &result.trigger {
        if trigger.unfinished {
            println!(
                "diff: >{}ms (still stalled when the run ended)",
                trigger.gap_ns / 1_000_000
            );
        } else {
            println!("{}", diff_line(trigger.gap_ns));
        }
        let gap = result
            .gaps
            .iter()
            .find(|gap| gap.tid == trigger.tid && gap.gap_ns == trigger.gap_ns);
        let when = gap.map_or(String::new(), |gap| {
            format!(
                ", started at mono {} s, tsc {} at its end",
                seconds(gap.mono_ns),
                gap.tsc
            )
        });
        let how = match summary.end {
            RunEnd::Exceeded(TriggerCause::Stall { .. }) => "caught in progress by the watchdog",
            _ => "measured by the thread when it resumed",
        };
        println!(
            "gap: {} in tid {} on cpu {}{when} ({how})",
            ms(trigger.gap_ns),
            trigger.tid,
            trigger.cpu
        );
        if let Some(trace) = &result.trace {
            let dump = trace.dump.as_deref().unwrap_or("-");
            match &trace.dump_error {
                None => println!("trace: {dump} ({} bytes, complete)", trace.dump_bytes),
                Some(error) => println!(
                    "trace: {dump} ({} bytes, PARTIAL: {error})",
                    trace.dump_bytes
                ),
            }
        }
    }
    let threads = result.threads.len();
    let elapsed = Duration::from_nanos(result.elapsed_ns).as_secs_f64();
    let verdict = match summary.end {
        RunEnd::Duration => format!("no gap over {}", ms(result.max_gap_ns)),
        RunEnd::Exceeded(_) => format!("gap over {}", ms(result.max_gap_ns)),
        RunEnd::Signal(signal) => format!("interrupted by signal {signal}"),
    };
    println!(
        "result: {verdict} in {elapsed:.1} s, {threads} threads, worst gap {}, core scheduling {}",
        ms(result.worst_gap_ns),
        result.core_sched
    );
}
