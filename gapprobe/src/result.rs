//! The machine-readable result of a run (`--json`). The README documents every field; keep
//! the two in step.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::detector::trigger::TriggerCause;
use crate::detector::worker::WorkerReport;
use crate::detector::{RunEnd, RunSummary};
use crate::tsc::TscRate;

/// Bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub schema: u32,
    pub tool_version: &'static str,
    pub target: &'static str,
    pub kernel: String,
    pub tsc_hz: u64,
    pub tsc_warnings: Vec<String>,
    pub max_gap_ns: u64,
    pub log_gap_ns: u64,
    pub gap_floor_ns: u64,
    pub cpus: Vec<usize>,
    pub pin: bool,
    pub groups: u32,
    pub threads_per_group: u32,
    pub core_sched: String,
    pub started_mono_ns: u64,
    pub elapsed_ns: u64,
    pub end: &'static str,
    pub signal: Option<i32>,
    pub exceeded: bool,
    pub trigger: Option<TriggerResult>,
    pub worst_gap_ns: u64,
    /// Over the gaps of all threads together (one merged histogram), so runs can be compared.
    #[serde(flatten)]
    pub gap_stats: GapStats,
    pub threads: Vec<ThreadResult>,
    pub gaps: Vec<GapResult>,
    pub gaps_dropped: u64,
    pub trace: Option<TraceResult>,
}

#[derive(Debug, Serialize)]
pub struct TriggerResult {
    /// `gap`: a thread resumed after a gap over the threshold; `stall`: the watchdog saw one
    /// still in progress.
    pub kind: &'static str,
    pub tid: i32,
    pub cpu: i32,
    /// The gap (for `stall`: the silence when the watchdog fired).
    pub gap_ns: u64,
    /// For `stall`: the thread had still not run when the run ended.
    pub unfinished: bool,
}

#[derive(Debug, Serialize)]
pub struct ThreadResult {
    pub index: usize,
    pub group: usize,
    pub tid: i32,
    pub cpu: i32,
    pub samples: u64,
    pub busy_ns: u64,
    pub max_gap_ns: u64,
    #[serde(flatten)]
    pub gap_stats: GapStats,
    pub tsc_backwards: u64,
}

/// Gaps of at least gap_floor_ns and their HDR histogram percentiles: 3 significant digits
/// from about 0.5 ms up, 512 ns steps below (the workers' histogram bounds start at 1 µs).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct GapStats {
    pub gap_count: u64,
    pub gap_p50_ns: u64,
    pub gap_p90_ns: u64,
    pub gap_p99_ns: u64,
    pub gap_p999_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct GapResult {
    pub gap_ns: u64,
    pub tid: i32,
    pub cpu: i32,
    pub mono_ns: u64,
    /// TSC when the thread ran again.
    pub tsc: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceResult {
    pub instance: String,
    pub events: Vec<String>,
    pub dump: Option<String>,
    pub dump_bytes: u64,
    pub dump_complete: bool,
    pub dump_error: Option<String>,
}

impl GapStats {
    fn of(histogram: &Histogram<u64>) -> Self {
        let percentile = |quantile| {
            if histogram.is_empty() {
                0
            } else {
                histogram.value_at_quantile(quantile)
            }
        };
        Self {
            gap_count: histogram.len(),
            gap_p50_ns: percentile(0.50),
            gap_p90_ns: percentile(0.90),
            gap_p99_ns: percentile(0.99),
            gap_p999_ns: percentile(0.999),
        }
    }
}

/// The run's gap statistics: the workers' histograms merged, since percentiles of separate
/// threads cannot be combined afterwards.
pub fn run_gap_stats(workers: &[WorkerReport]) -> GapStats {
    let Some((first, rest)) = workers.split_first() else {
        return GapStats::default();
    };
    let mut merged = first.histogram.clone();
    for worker in rest {
        // Every worker's histogram has the same bounds, so adding one cannot fail.
        let _ = merged.add(&worker.histogram);
    }
    GapStats::of(&merged)
}

pub fn thread_result(rate: TscRate, worker: &WorkerReport) -> ThreadResult {
    ThreadResult {
        index: worker.plan.index,
        group: worker.plan.group,
        tid: worker.tid,
        cpu: worker.last_cpu,
        samples: worker.samples,
        busy_ns: rate.ticks_to_ns(worker.busy_ticks),
        max_gap_ns: rate.ticks_to_ns(worker.max_gap_ticks),
        gap_stats: GapStats::of(&worker.histogram),
        tsc_backwards: worker.tsc_backwards,
    }
}

/// The gap that ended the run. For a stall the watchdog caught, the whole gap is what the
/// thread measured once it ran again; only a thread that never did is left at the silence.
pub fn trigger_result(rate: TscRate, summary: &RunSummary) -> Option<TriggerResult> {
    let RunEnd::Exceeded(cause) = summary.end else {
        return None;
    };
    Some(match cause {
        TriggerCause::Gap { tid, cpu, gap_ns } => TriggerResult {
            kind: "gap",
            tid,
            cpu,
            gap_ns,
            unfinished: false,
        },
        TriggerCause::Stall {
            index,
            tid,
            cpu,
            silent_ns,
        } => {
            let measured = summary
                .workers
                .iter()
                .find(|worker| worker.plan.index == index)
                .map(|worker| rate.ticks_to_ns(worker.max_gap_ticks));
            TriggerResult {
                kind: "stall",
                tid,
                cpu,
                gap_ns: summary
                    .unfinished_stall_ns
                    .or(measured)
                    .unwrap_or(silent_ns),
                unfinished: summary.unfinished_stall_ns.is_some(),
            }
        }
    })
}

pub fn end_name(end: RunEnd) -> &'static str {
    match end {
        RunEnd::Duration => "duration",
        RunEnd::Exceeded(_) => "exceeded",
        RunEnd::Signal(_) => "signal",
    }
}

/// All gaps over --log-gap of all threads, in time order.
pub fn gap_results(summary: &RunSummary) -> Vec<GapResult> {
    let mut gaps: Vec<GapResult> = summary
        .workers
        .iter()
        .flat_map(|worker| worker.gaps.iter())
        .map(|gap| GapResult {
            gap_ns: gap.gap_ns,
            tid: gap.tid,
            cpu: gap.cpu,
            mono_ns: gap.mono_ns,
            tsc: gap.tsc,
        })
        .collect();
    gaps.sort_by_key(|gap| gap.mono_ns);
    gaps
}

/// Writes the result as pretty JSON, through a temporary file so readers never see half.
pub fn write(result: &RunResult, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(result).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text + "\n")?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::worker::WorkerPlan;

    fn worker(index: usize, gaps_ns: &[u64]) -> WorkerReport {
        // The bounds the workers use (worker.rs): 1 µs to an hour.
        let mut histogram = Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).unwrap();
        for &gap in gaps_ns {
            histogram.record(gap).unwrap();
        }
        WorkerReport {
            plan: WorkerPlan {
                index,
                group: index,
                affinity: vec![0],
                nice: 0,
                seed: 5,
            },
            tid: 100 + index as i32,
            last_cpu: 0,
            samples: 1,
            busy_ticks: 1,
            max_gap_ticks: 1,
            histogram,
            gaps: Vec::new(),
            gaps_dropped: 0,
            tsc_backwards: 0,
        }
    }

    #[test]
    fn run_percentiles_come_from_every_thread_together() {
        // Thread 0 saw 98 short gaps, thread 1 two long ones: neither thread's own p99 is the
        // run's p99 (the 99th of 100 gaps is the first long one).
        let short = vec![2_000; 98];
        let workers = [worker(0, &short), worker(1, &[40_000_000, 50_000_000])];
        let run = run_gap_stats(&workers);
        // Below a millisecond these bounds resolve 512 ns, above it 0.1 %.
        let near = |value: u64, expected: u64| value >= expected && value - expected < 600;
        assert_eq!(run.gap_count, 100);
        assert!(near(run.gap_p50_ns, 2_000), "{run:?}");
        assert!(run.gap_p99_ns.abs_diff(40_000_000) <= 40_000, "{run:?}");
        assert!(run.gap_p999_ns.abs_diff(50_000_000) <= 50_000, "{run:?}");
        let alone = thread_result(TscRate { hz: 1 }, &workers[0]).gap_stats;
        assert!(near(alone.gap_p99_ns, 2_000), "{alone:?}");
        assert_eq!(run_gap_stats(&[]), GapStats::default());
    }

    #[test]
    fn run_and_thread_percentiles_are_flat_json_fields() {
        let stats = GapStats {
            gap_count: 3,
            gap_p50_ns: 1_000,
            gap_p90_ns: 2_000,
            gap_p99_ns: 3_000,
            gap_p999_ns: 4_000,
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["gap_p999_ns"], 4_000);
        // 5120 ns is a bucket edge of the workers' histogram: recorded and read back exactly.
        let thread = thread_result(TscRate { hz: 1_000_000_000 }, &worker(3, &[5_119]));
        let json = serde_json::to_string(&thread).unwrap();
        assert!(
            json.contains(r#""max_gap_ns":1,"gap_count":1,"gap_p50_ns":5119,"gap_p90_ns":5119,"gap_p99_ns":5119,"gap_p999_ns":5119,"tsc_backwards":0"#),
            "{json}"
        );
    }
}
