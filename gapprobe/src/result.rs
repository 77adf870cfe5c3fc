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
    /// Gaps of at least gap_floor_ns; the percentiles are over these.
    pub gap_count: u64,
    pub gap_p50_ns: u64,
    pub gap_p90_ns: u64,
    pub gap_p99_ns: u64,
    pub gap_p999_ns: u64,
    pub tsc_backwards: u64,
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

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(quantile)
    }
}

pub fn thread_result(rate: TscRate, worker: &WorkerReport) -> ThreadResult {
    let histogram = &worker.histogram;
    ThreadResult {
        index: worker.plan.index,
        group: worker.plan.group,
        tid: worker.tid,
        cpu: worker.last_cpu,
        samples: worker.samples,
        busy_ns: rate.ticks_to_ns(worker.busy_ticks),
        max_gap_ns: rate.ticks_to_ns(worker.max_gap_ticks),
        gap_count: histogram.len(),
        gap_p50_ns: percentile(histogram, 0.50),
        gap_p90_ns: percentile(histogram, 0.90),
        gap_p99_ns: percentile(histogram, 0.99),
        gap_p999_ns: percentile(histogram, 0.999),
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
