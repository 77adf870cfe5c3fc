//! The moment a run exceeds its threshold: mark the trace and stop it, exactly once, from
//! whichever thread saw it first (a worker that resumed after a gap, or the watchdog that
//! sees a stall still in progress).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What crossed the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerCause {
    /// A worker resumed after a gap longer than the threshold.
    Gap { tid: i32, cpu: i32, gap_ns: u64 },
    /// The watchdog saw a busy worker's heartbeat silent for longer than the threshold; the
    /// worker had not run again yet.
    Stall {
        index: usize,
        tid: i32,
        cpu: i32,
        silent_ns: u64,
    },
}

/// Writes the marker and stops the trace (both through fds opened before the run).
pub trait TraceStopper: Send + Sync {
    fn mark_and_stop(&self, marker: &[u8]);
}

pub struct Trigger {
    fired: AtomicBool,
    stopper: Option<Box<dyn TraceStopper>>,
    cause: Mutex<Option<TriggerCause>>,
}

/// Room for one marker line; trace_marker takes up to a page anyway.
const MARKER_BUFFER: usize = 192;

impl Trigger {
    pub fn new(stopper: Option<Box<dyn TraceStopper>>) -> Self {
        Self {
            fired: AtomicBool::new(false),
            stopper,
            cause: Mutex::new(None),
        }
    }

    /// Fires once; later calls return false and change nothing.
    pub fn fire(&self, cause: TriggerCause) -> bool {
        if self.fired.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(stopper) = &self.stopper {
            let mut buffer = [0u8; MARKER_BUFFER];
            let length = format_marker(&mut buffer, cause);
            stopper.mark_and_stop(&buffer[..length]);
        }
        *self
            .cause
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(cause);
        true
    }

    pub fn has_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub fn cause(&self) -> Option<TriggerCause> {
        *self
            .cause
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Formats the trace marker into a stack buffer: this runs on the detection path, which must
/// not allocate. `gapprobe:` starts every marker so that `grep gapprobe: /dev/shm/log` finds it.
fn format_marker(buffer: &mut [u8], cause: TriggerCause) -> usize {
    let mut cursor = std::io::Cursor::new(buffer);
    let _ = match cause {
        TriggerCause::Gap { tid, cpu, gap_ns } => writeln!(
            cursor,
            "gapprobe: gap of {}.{:03} ms, tid {tid} resumed on cpu {cpu}",
            gap_ns / 1_000_000,
            gap_ns / 1_000 % 1_000
        ),
        TriggerCause::Stall {
            tid,
            cpu,
            silent_ns,
            ..
        } => writeln!(
            cursor,
            "gapprobe: stall in progress, tid {tid} last ran on cpu {cpu}, silent for {}.{:03} ms",
            silent_ns / 1_000_000,
            silent_ns / 1_000 % 1_000
        ),
    };
    cursor.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl TraceStopper for Recorder {
        fn mark_and_stop(&self, marker: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(marker).into_owned());
        }
    }

    #[test]
    fn fires_once_and_keeps_the_first_cause() {
        let marks = Arc::new(Mutex::new(Vec::new()));
        let trigger = Trigger::new(Some(Box::new(Recorder(marks.clone()))));
        let first = TriggerCause::Gap {
            tid: 7,
            cpu: 1,
            gap_ns: 130_250_000,
        };
        assert!(trigger.fire(first));
        assert!(!trigger.fire(TriggerCause::Stall {
            index: 0,
            tid: 8,
            cpu: 0,
            silent_ns: 1
        }));
        assert_eq!(trigger.cause(), Some(first));
        assert_eq!(
            *marks.lock().unwrap(),
            vec!["gapprobe: gap of 130.250 ms, tid 7 resumed on cpu 1\n".to_string()]
        );
    }

    #[test]
    fn marker_is_truncated_not_overflowed() {
        let mut small = [0u8; 10];
        let length = format_marker(
            &mut small,
            TriggerCause::Stall {
                index: 0,
                tid: 1,
                cpu: 0,
                silent_ns: 5,
            },
        );
        assert_eq!(&small[..length], b"gapprobe: ");
    }
}
