//! The detector engine: N busy workers grouped in "VMs", a watchdog, and the reporter loop
//! that prints schedgaps' `Max latency` lines and decides when the run ends.

pub mod trigger;
pub mod watchdog;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::tsc::{rdtsc, TscRate};
use trigger::{Trigger, TriggerCause};
use worker::{WorkerPlan, WorkerReport, WorkerSlot};

/// Everything the engine needs, in TSC ticks where the hot loop uses it.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    pub rate: TscRate,
    pub max_gap: Duration,
    pub max_gap_ticks: u64,
    pub log_gap_ticks: u64,
    pub floor_ticks: u64,
    pub busy_ticks: u64,
    pub max_sleep: Duration,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub quiet: bool,
}

/// State shared by the workers, the watchdog and the reporter.
pub struct Shared {
    pub config: DetectorConfig,
    pub slots: Vec<WorkerSlot>,
    pub stop: AtomicBool,
    pub trigger: Trigger,
    /// The first thread setup failure (affinity, cookie), if any.
    pub setup_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(config: DetectorConfig, workers: usize, trigger: Trigger) -> Self {
        Self {
            config,
            slots: (0..workers).map(|_| WorkerSlot::default()).collect(),
            stop: AtomicBool::new(false),
            trigger,
            setup_error: Mutex::new(None),
        }
    }

    pub fn record_setup_error(&self, message: &str) {
        let mut first = self.setup_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| message.to_string());
    }

    fn take_setup_error(&self) -> Option<String> {
        self.setup_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Duration,
    Exceeded(TriggerCause),
    Signal(i32),
}

/// What the engine hands back.
pub struct RunSummary {
    pub end: RunEnd,
    pub elapsed: Duration,
    pub workers: Vec<WorkerReport>,
    /// Length of a watchdog-detected stall that had not ended when the run stopped.
    pub unfinished_stall_ns: Option<u64>,
}

/// How a thread joins its core-scheduling group (called on the worker, around the first
/// start barrier; see [`worker::GroupPhase`]).
pub type GroupJoiner =
    dyn Fn(&WorkerPlan, i32, worker::GroupPhase) -> Result<(), String> + Sync + Send;

/// Runs the workers until the duration ends, the threshold is exceeded, or a signal arrives.
pub fn run(
    shared: Arc<Shared>,
    plans: Vec<WorkerPlan>,
    join_group: Arc<GroupJoiner>,
    reporter_cpus: &[usize],
) -> Result<RunSummary, String> {
    // Workers + this thread meet twice: after setup (cookies), and at the start line.
    let start = Arc::new(Barrier::new(plans.len() + 1));
    let mut handles = Vec::new();
    for plan in plans {
        let (shared, start, join_group) = (shared.clone(), start.clone(), join_group.clone());
        let name = format!("gapprobe-w{}", plan.index);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                worker::run(plan, &shared, &start, |plan, tid, phase| {
                    join_group(plan, tid, phase)
                })
            })
            .map_err(|err| format!("cannot start a worker thread: {err}"))?;
        handles.push(handle);
    }
    if !reporter_cpus.is_empty() {
        // Keep the reporter and watchdog off the probed CPUs where the host has others.
        let _ = worker::set_affinity(reporter_cpus);
    }
    start.wait();
    start.wait();
    let started = Instant::now();
    if let Some(message) = shared.take_setup_error() {
        stop_and_join(&shared, handles);
        return Err(message);
    }
    let watchdog = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("gapprobe-watchdog".into())
            .spawn(move || watchdog::run(&shared))
            .map_err(|err| format!("cannot start the watchdog thread: {err}"))?
    };

    let end = report_until_end(&shared, started);
    let unfinished_stall_ns = match end {
        RunEnd::Exceeded(TriggerCause::Stall { index, .. }) => wait_for_resume(&shared, index),
        _ => None,
    };
    let workers = stop_and_join(&shared, handles);
    let _ = watchdog.join();
    Ok(RunSummary {
        end,
        elapsed: started.elapsed(),
        workers,
        unfinished_stall_ns,
    })
}

type WorkerHandle = std::thread::JoinHandle<Result<WorkerReport, String>>;

/// Stops every worker (waking the sleeping ones) and collects the reports of those that ran.
fn stop_and_join(shared: &Shared, handles: Vec<WorkerHandle>) -> Vec<WorkerReport> {
    shared.stop.store(true, Relaxed);
    for handle in &handles {
        handle.thread().unpark();
    }
    handles
        .into_iter()
        .filter_map(|handle| handle.join().ok().and_then(Result::ok))
        .collect()
}

/// The reporter loop: a `Max latency` line every interval; ends on the first stop reason.
fn report_until_end(shared: &Shared, started: Instant) -> RunEnd {
    let config = &shared.config;
    let tick = Duration::from_millis(10).min(config.interval);
    let mut next_report = started + config.interval;
    loop {
        if let Some(cause) = shared.trigger.cause() {
            if let TriggerCause::Stall {
                tid,
                cpu,
                silent_ns,
                ..
            } = cause
            {
                // Said now, while the stall may still be going on; the thread's own
                // measurement of the whole gap follows when it runs again.
                println!(
                    "watchdog: tid {tid} (last on cpu {cpu}) has not run for {}, stall in progress, trace stopped",
                    crate::report::ms(silent_ns)
                );
            }
            return RunEnd::Exceeded(cause);
        }
        if let Some(signal) = crate::signals::received() {
            return RunEnd::Signal(signal);
        }
        let now = Instant::now();
        if config
            .duration
            .is_some_and(|duration| now >= started + duration)
        {
            // The end of the run checks every worker once more, as the watchdog does.
            if watchdog::check_once(shared) {
                continue;
            }
            return RunEnd::Duration;
        }
        if now >= next_report {
            next_report += config.interval;
            let max_ticks = shared
                .slots
                .iter()
                .map(|slot| slot.window_max.swap(0, Relaxed))
                .max()
                .unwrap_or(0);
            if !config.quiet {
                println!(
                    "{}",
                    crate::report::max_latency_line(config.rate, max_ticks, shared.slots.len())
                );
            }
        }
        std::thread::sleep(tick);
    }
}

/// After the watchdog caught a stall in progress, give the stalled worker time to run again
/// so its own measurement of the whole gap lands in the report. Returns the silence so far if
/// it never came back.
fn wait_for_resume(shared: &Shared, index: usize) -> Option<u64> {
    let config = &shared.config;
    let slot = &shared.slots[index];
    let grace = config.max_gap.max(Duration::from_secs(1));
    let deadline = Instant::now() + grace;
    let silent_since = slot.heartbeat.load(Relaxed);
    while Instant::now() < deadline {
        if slot.heartbeat.load(Relaxed) != silent_since {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Some(
        config
            .rate
            .ticks_to_ns(rdtsc().saturating_sub(silent_since)),
    )
}
