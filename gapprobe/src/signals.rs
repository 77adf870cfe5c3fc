//! SIGINT and SIGTERM become a flag the reporter polls, so that a Ctrl-C stops the run
//! through the normal path: workers stop, the trace instance is removed, the summary and the
//! JSON are written. A second signal ends the process at once (the next run removes what
//! this one left, see `tracefs` stale instances).

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread spawned after) and starts
/// a thread that waits for them. Call before spawning any other thread.
pub fn watch() -> std::io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("gapprobe-signals".into())
        .spawn(move || loop {
            let Ok(signal) = set.wait() else { continue };
            if RECEIVED.swap(signal as i32, Ordering::AcqRel) != 0 {
                // Second signal: the user does not want to wait for the cleanup.
                // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
                unsafe { libc::_exit(128 + signal as i32) };
            }
        })?;
    Ok(())
}

/// The signal that asked the run to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Acquire) {
        0 => None,
        signal => Some(signal),
    }
}
