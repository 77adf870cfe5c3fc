//! One busy thread: the hwlat-style TSC loop, its bursty busy/sleep schedule, and what it
//! learns about the gaps in its own execution.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::time::ClockId;
use nix::unistd::Pid;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::trigger::TriggerCause;
use super::Shared;
use crate::tsc::{clock_ns, rdtsc};

/// Loop iterations between two heartbeats (about 50 µs at 12 ns an iteration): rare enough
/// to keep the shared-line traffic negligible, frequent enough for a millisecond watchdog.
pub const HEARTBEAT_EVERY: u64 = 4096;

/// Deltas between two TSC reads below this are the loop itself; from here on they are gaps
/// (interrupts, preemption, VM exits) and go into the histogram.
pub const GAP_FLOOR_NS: u64 = 1_000;

/// Largest gap the histogram tracks exactly: an hour.
const HISTOGRAM_MAX_NS: u64 = 3_600_000_000_000;

/// Gaps kept for the JSON per thread; more are counted, not stored (no allocation in the loop).
pub const GAP_RECORDS_PER_THREAD: usize = 8192;

/// What a worker publishes to the reporter and the watchdog. Aligned to its own pair of cache
/// lines (the adjacent-line prefetcher pairs them) so workers never share a written line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerSlot {
    /// TSC at the worker's last heartbeat.
    pub heartbeat: AtomicU64,
    /// The worker is in a busy phase: a silent heartbeat means it is not running.
    pub busy: AtomicBool,
    /// Largest gap in ticks since the reporter last took it.
    pub window_max: AtomicU64,
    pub tid: AtomicI32,
    /// CPU seen at the last heartbeat.
    pub cpu: AtomicI32,
}

/// What one worker is asked to do.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    pub index: usize,
    pub group: usize,
    pub affinity: Vec<usize>,
    pub nice: i32,
    pub seed: u64,
}

/// One gap above `--log-gap`.
#[derive(Debug, Clone, Copy)]
pub struct GapRecord {
    pub gap_ns: u64,
    pub tid: i32,
    /// CPU the thread resumed on.
    pub cpu: i32,
    /// CLOCK_MONOTONIC at the gap's start (the clock the trace uses).
    pub mono_ns: u64,
    /// TSC at the gap's end.
    pub tsc: u64,
}

/// Everything a worker measured, handed back when it exits.
pub struct WorkerReport {
    pub plan: WorkerPlan,
    pub tid: i32,
    pub last_cpu: i32,
    pub samples: u64,
    pub busy_ticks: u64,
    pub max_gap_ticks: u64,
    pub histogram: Histogram<u64>,
    pub gaps: Vec<GapRecord>,
    pub gaps_dropped: u64,
    /// Times the TSC went backwards between two reads (unsynchronised TSCs across CPUs).
    pub tsc_backwards: u64,
}

pub fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

fn current_cpu() -> i32 {
    // SAFETY: sched_getcpu has no preconditions; glibc answers from rseq or the vDSO.
    unsafe { libc::sched_getcpu() }
}

pub fn set_affinity(cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Sets one thread's nice value (on Linux, PRIO_PROCESS with a TID applies to that thread).
fn set_nice(tid: i32, nice: i32) -> Result<(), String> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        let err = std::io::Error::last_os_error();
        Err(format!(
            "--nice {nice}: setpriority: {err} (negative values need root)"
        ))
    }
}

/// The worker's state while it runs; lives on its own stack.
struct Worker<'a> {
    shared: &'a Shared,
    slot: &'a WorkerSlot,
    report: WorkerReport,
}

/// When a worker takes its core-scheduling cookie: group leaders create theirs before the
/// first start barrier, members copy their leader's between the two barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPhase {
    Create,
    Share,
}

/// Runs one worker until the run stops.
pub fn run(
    plan: WorkerPlan,
    shared: &Shared,
    start: &Barrier,
    join_group: impl Fn(&WorkerPlan, i32, GroupPhase) -> Result<(), String>,
) -> Result<WorkerReport, String> {
    let slot = &shared.slots[plan.index];
    let tid = gettid();
    slot.tid.store(tid, Relaxed);
    let created = set_affinity(&plan.affinity)
        .map_err(|err| format!("thread {}: sched_setaffinity: {err}", plan.index))
        .and_then(|()| set_nice(tid, plan.nice))
        .and_then(|()| join_group(&plan, tid, GroupPhase::Create));
    // Wait at both barriers even after an error, so that no other thread waits forever.
    start.wait();
    let setup = created.and_then(|()| join_group(&plan, tid, GroupPhase::Share));
    if let Err(message) = &setup {
        // The reporter looks here after the start line and stops the run at once.
        shared.record_setup_error(message);
    }
    start.wait();
    setup?;

    let histogram = Histogram::new_with_bounds(GAP_FLOOR_NS, HISTOGRAM_MAX_NS, 3)
        .map_err(|err| format!("histogram: {err}"))?;
    let mut rng = SmallRng::seed_from_u64(plan.seed.wrapping_add(plan.index as u64));
    let mut worker = Worker {
        shared,
        slot,
        report: WorkerReport {
            plan,
            tid,
            last_cpu: current_cpu(),
            samples: 0,
            busy_ticks: 0,
            max_gap_ticks: 0,
            histogram,
            gaps: Vec::with_capacity(GAP_RECORDS_PER_THREAD),
            gaps_dropped: 0,
            tsc_backwards: 0,
        },
    };
    let config = &shared.config;
    while !shared.stop.load(Relaxed) {
        let start_tsc = rdtsc();
        worker.busy_phase(start_tsc + config.busy_ticks);
        worker.report.busy_ticks += rdtsc() - start_tsc;
        if shared.stop.load(Relaxed) || config.max_sleep.is_zero() {
            continue;
        }
        let nanos = rng.random_range(0..config.max_sleep.as_nanos() as u64);
        sleep_unless_stopped(shared, Duration::from_nanos(nanos));
    }
    Ok(worker.report)
}

/// Sleeps, but wakes as soon as the run stops (the reporter unparks every worker then).
fn sleep_unless_stopped(shared: &Shared, duration: Duration) {
    let deadline = Instant::now() + duration;
    while !shared.stop.load(Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::park_timeout(deadline - now);
    }
}

impl Worker<'_> {
    /// The hot loop: read the TSC, compare the step with the gap floor, repeat. Everything
    /// else (heartbeat, end of phase, stop flag) happens once every HEARTBEAT_EVERY steps.
    #[inline(never)]
    fn busy_phase(&mut self, until_tsc: u64) {
        let floor_ticks = self.shared.config.floor_ticks;
        let mut prev = rdtsc();
        self.heartbeat(prev);
        self.slot.busy.store(true, Relaxed);
        loop {
            for _ in 0..HEARTBEAT_EVERY {
                let now = rdtsc();
                let step = now.wrapping_sub(prev);
                if step >= floor_ticks {
                    self.on_gap(prev, now);
                }
                prev = now;
            }
            self.report.samples += HEARTBEAT_EVERY;
            self.heartbeat(prev);
            if prev >= until_tsc || self.shared.stop.load(Relaxed) {
                break;
            }
        }
        self.slot.busy.store(false, Relaxed);
    }

    fn heartbeat(&mut self, tsc: u64) {
        self.slot.heartbeat.store(tsc, Relaxed);
        let cpu = current_cpu();
        self.report.last_cpu = cpu;
        self.slot.cpu.store(cpu, Relaxed);
    }

    #[cold]
    #[inline(never)]
    fn on_gap(&mut self, before: u64, after: u64) {
        if after < before {
            self.report.tsc_backwards += 1;
            return;
        }
        let config = &self.shared.config;
        let ticks = after - before;
        if ticks > config.max_gap_ticks {
            // First the marker and the trace stop, so the trace ends as close to the gap as
            // possible; bookkeeping can wait.
            self.shared.trigger.fire(TriggerCause::Gap {
                tid: self.report.tid,
                cpu: current_cpu(),
                gap_ns: config.rate.ticks_to_ns(ticks),
            });
        }
        let gap_ns = config.rate.ticks_to_ns(ticks);
        let _ = self.report.histogram.record(gap_ns.min(HISTOGRAM_MAX_NS));
        self.report.max_gap_ticks = self.report.max_gap_ticks.max(ticks);
        self.slot.window_max.fetch_max(ticks, Relaxed);
        if ticks >= config.log_gap_ticks {
            let cpu = current_cpu();
            let record = GapRecord {
                gap_ns,
                tid: self.report.tid,
                cpu,
                mono_ns: clock_ns(ClockId::CLOCK_MONOTONIC).saturating_sub(gap_ns),
                tsc: after,
            };
            if self.report.gaps.len() < GAP_RECORDS_PER_THREAD {
                self.report.gaps.push(record);
            } else {
                self.report.gaps_dropped += 1;
            }
        }
    }
}
