//! The detector's use of tracefs: a private instance with the requested events in the `mono`
//! clock, armed before the run, stopped by the trigger, dumped after.

use std::path::Path;

use anyhow::Context;
use tracefs::{Completeness, EventSpec, Instance, Marker, Tracefs};

use crate::detector::trigger::TraceStopper;
use crate::result::TraceResult;

/// Prefix of our instances; the pid follows so a crashed run's instance can be recognised.
pub const INSTANCE_PREFIX: &str = "gapprobe-";

/// The trace clock that CLOCK_MONOTONIC stamps line up with.
const TRACE_CLOCK: &str = "mono";

pub struct TraceSession {
    tracefs: Tracefs,
    instance: Instance,
    events: Vec<String>,
}

/// Marks and stops the instance; owned by the trigger.
struct MarkerStopper(Marker);

impl TraceStopper for MarkerStopper {
    fn mark_and_stop(&self, marker: &[u8]) {
        // Nothing useful can be done about a failed write on the detection path; the dump
        // report will show the marker missing.
        let _ = self.0.mark(marker);
        let _ = self.0.stop();
    }
}

impl TraceSession {
    /// Finds (or mounts) tracefs, removes instances that crashed runs left, creates ours.
    pub fn start(
        events: &[String],
        buffer_kb: u64,
    ) -> anyhow::Result<(Self, Box<dyn TraceStopper>)> {
        let tracefs = Tracefs::open().context("tracing (use --no-trace to run without)")?;
        tracefs
            .remove_stale_instances(INSTANCE_PREFIX)
            .context("removing trace instances of earlier runs")?;
        let specs = events
            .iter()
            .map(|event| EventSpec::parse(event))
            .collect::<Result<Vec<_>, _>>()
            .context("--events")?;
        let name = Tracefs::instance_name_for_this_process(INSTANCE_PREFIX);
        let instance = tracefs.create_instance(&name)?;
        // Setting the clock clears the buffer: before anything is recorded.
        instance.set_clock(TRACE_CLOCK)?;
        instance.set_buffer_kb(buffer_kb)?;
        instance.enable_events(&specs)?;
        let marker = instance.marker()?;
        instance.set_tracing_on(true)?;
        let session = TraceSession {
            tracefs,
            instance,
            events: events.to_vec(),
        };
        Ok((session, Box::new(MarkerStopper(marker))))
    }

    /// Writes the instance's trace to `path` (only done when a gap was found).
    pub fn dump(&self, path: Option<&Path>) -> TraceResult {
        let mut result = TraceResult {
            instance: self.instance.path().display().to_string(),
            events: self.events.clone(),
            dump: None,
            dump_bytes: 0,
            dump_complete: false,
            dump_error: None,
        };
        if let Some(path) = path {
            result.dump = Some(path.display().to_string());
            match self.instance.dump_to(path) {
                Ok(report) => {
                    result.dump_bytes = report.bytes;
                    result.dump_complete = report.is_complete();
                    if let Completeness::Partial { reason } = report.completeness {
                        result.dump_error = Some(reason);
                    }
                }
                Err(err) => result.dump_error = Some(err.to_string()),
            }
        }
        result
    }

    /// Removes the instance, reporting a failure instead of hiding it. The trigger (which
    /// holds the marker's open files) must be gone by now, or the kernel refuses.
    pub fn finish(self) -> anyhow::Result<()> {
        self.instance
            .remove()
            .context("removing the trace instance")?;
        self.tracefs
            .unmount_if_mounted_here()
            .context("unmounting the tracefs gapprobe mounted")
    }
}
