//! The watchdog: sees a stall while it is still going on. A worker measures its own gap only
//! once it runs again; a thread starved for good would never report. oslat has this blind
//! spot; gapprobe checks every busy worker's heartbeat from another thread.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::trigger::TriggerCause;
use super::Shared;
use crate::tsc::rdtsc;

/// How often the watchdog looks: a tenth of the threshold, within [1 ms, 50 ms].
pub fn poll_interval(max_gap: Duration) -> Duration {
    (max_gap / 10).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// Fires the trigger for the first busy worker whose heartbeat has been silent for longer
/// than the threshold. Returns whether it did.
pub fn check_once(shared: &Shared) -> bool {
    let now = rdtsc();
    let config = &shared.config;
    for (index, slot) in shared.slots.iter().enumerate() {
        if !slot.busy.load(Relaxed) {
            continue;
        }
        let silent = now.saturating_sub(slot.heartbeat.load(Relaxed));
        if silent > config.max_gap_ticks {
            return shared.trigger.fire(TriggerCause::Stall {
                index,
                tid: slot.tid.load(Relaxed),
                cpu: slot.cpu.load(Relaxed),
                silent_ns: config.rate.ticks_to_ns(silent),
            });
        }
    }
    false
}

/// Priority of the watchdog when it may have one: above every SCHED_OTHER task, so that
/// ordinary load on the other CPUs cannot make it late, and below every real RT task.
const WATCHDOG_FIFO_PRIORITY: i32 = 1;

/// Runs until the run stops or the trigger has fired.
pub fn run(shared: &Shared) {
    let param = libc::sched_param {
        sched_priority: WATCHDOG_FIFO_PRIORITY,
    };
    // SAFETY: plain syscall on this thread. Without privileges it fails and the watchdog
    // stays SCHED_OTHER: later under load, still correct.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    let interval = poll_interval(shared.config.max_gap);
    while !shared.stop.load(Relaxed) && !shared.trigger.has_fired() {
        check_once(shared);
        std::thread::sleep(interval);
    }
}
