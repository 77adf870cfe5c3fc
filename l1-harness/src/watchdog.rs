//! Decides when a run is over: on the first terminating event, on a kernel panic (after a
//! short grace so the panic message reaches the console), or when the timeout expires.

use std::time::{Duration, Instant};

use crate::exits::VmEvent;
use crate::vm::VmExit;

/// After a panic line, keep the console open this long for the rest of the message.
pub const PANIC_GRACE: Duration = Duration::from_secs(2);
/// Without a timeout, wake up this often anyway (there is nothing to do but wait).
const IDLE_WAKEUP: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub(crate) struct Watchdog {
    start: Instant,
    timeout: Option<Duration>,
    panic: Option<(String, Instant)>,
}

impl Watchdog {
    pub(crate) fn new(start: Instant, timeout: Option<Duration>) -> Self {
        Self {
            start,
            timeout,
            panic: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let timeout = self.timeout.map(|timeout| self.start + timeout);
        let panic = self.panic.as_ref().map(|(_, at)| *at + PANIC_GRACE);
        match (timeout, panic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long to wait for the next event.
    pub(crate) fn wait_budget(&self, now: Instant) -> Duration {
        self.deadline().map_or(IDLE_WAKEUP, |deadline| {
            deadline.saturating_duration_since(now)
        })
    }

    /// Takes an event; returns how the run ended if it did.
    pub(crate) fn on_event(&mut self, event: VmEvent, now: Instant) -> Option<VmExit> {
        if let Some((line, _)) = &self.panic {
            // Whatever follows a panic (reboot, power-off) is part of it.
            return matches!(event, VmEvent::Panic(_))
                .then_some(())
                .map_or(Some(VmExit::Panic(line.clone())), |()| None);
        }
        match event {
            VmEvent::Panic(line) => {
                self.panic = Some((line, now));
                None
            }
            VmEvent::PowerOff => Some(VmExit::PowerOff),
            VmEvent::Reset => Some(VmExit::Reset),
            VmEvent::Crash(reason) => Some(VmExit::Crash(reason)),
            // Not the guest's end: `Vm::run` takes it before the watchdog sees events.
            VmEvent::Stop => None,
        }
    }

    /// Called when `wait_budget` elapsed with no event.
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<VmExit> {
        if let Some((line, at)) = &self.panic {
            if now >= *at + PANIC_GRACE {
                return Some(VmExit::Panic(line.clone()));
            }
        }
        match self.timeout {
            Some(timeout) if now >= self.start + timeout => Some(VmExit::Timeout(timeout)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_fires_only_after_the_deadline() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(start, Some(Duration::from_secs(10)));
        assert_eq!(watchdog.wait_budget(start), Duration::from_secs(10));
        assert_eq!(watchdog.on_deadline(start + Duration::from_secs(9)), None);
        assert_eq!(
            watchdog.on_deadline(start + Duration::from_secs(10)),
            Some(VmExit::Timeout(Duration::from_secs(10)))
        );
    }

    #[test]
    fn panic_wins_over_what_follows_it() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(start, None);
        let line = "Kernel panic - not syncing: Attempted to kill init!".to_string();
        assert_eq!(watchdog.on_event(VmEvent::Panic(line.clone()), start), None);
        assert_eq!(watchdog.wait_budget(start), PANIC_GRACE);
        assert_eq!(
            watchdog.on_event(VmEvent::Reset, start),
            Some(VmExit::Panic(line.clone()))
        );
        let mut quiet = Watchdog::new(start, None);
        quiet.on_event(VmEvent::Panic(line.clone()), start);
        assert_eq!(quiet.on_deadline(start + PANIC_GRACE / 2), None);
        assert_eq!(
            quiet.on_deadline(start + PANIC_GRACE),
            Some(VmExit::Panic(line))
        );
    }

    #[test]
    fn clean_events_end_the_run() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(start, None);
        assert_eq!(watchdog.wait_budget(start), IDLE_WAKEUP);
        assert_eq!(
            watchdog.on_event(VmEvent::PowerOff, start),
            Some(VmExit::PowerOff)
        );
        let mut other = Watchdog::new(start, None);
        assert_eq!(other.on_event(VmEvent::Reset, start), Some(VmExit::Reset));
    }
}
