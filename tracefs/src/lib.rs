//! tracefs: the kernel tracing interface as gapprobe needs it, without touching global state.
//!
//! ```no_run
//! use tracefs::{EventSpec, Tracefs};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tracefs = Tracefs::open()?; // found in /proc/mounts, or mounted when root
//! tracefs.remove_stale_instances("gapprobe-")?; // left by crashed runs
//! let instance = tracefs.create_instance(&Tracefs::instance_name_for_this_process("gapprobe-"))?;
//! instance.set_clock("mono")?; // clears the buffer: before recording
//! instance.set_buffer_kb(65536)?; // per CPU
//! instance.enable_events(&EventSpec::parse_list("sched,irq,timer")?)?;
//! let marker = instance.marker()?; // fds opened before the run
//! // ... on a gap, from the urgent path:
//! marker.mark(b"gapprobe: gap 130ms tid 1234")?;
//! marker.stop()?;
//! let report = instance.dump_to("/dev/shm/log".as_ref())?;
//! println!("{} bytes in {:?}, {:?}", report.bytes, report.duration, report.completeness);
//! drop(marker); // open files keep the kernel from removing the instance
//! instance.remove()?; // also done, errors ignored, on drop
//! # Ok(()) }
//! ```
//!
//! - [`Tracefs`]: `open()`, `at(path)`, `root()`, `create_instance(name)`,
//!   `remove_stale_instances(prefix)`, `instance_name_for_this_process(prefix)`.
//! - [`Instance`]: `path()`, `enable_events`, `set_buffer_kb`, `set_clock`, `set_tracing_on`,
//!   `marker()`, `dump_to(path)` -> [`DumpReport`], `remove()`.
//! - [`EventSpec`]: `system` or `system:event`; `parse`, `parse_list("sched,irq")`.
//! - [`Marker`]: `mark(&[u8])` and `stop()`, one write(2) each, no allocation.
//! - [`trace_text`]: `parse_line`, `find_marker`, `off_cpu_intervals` for tests and benchmarks.
//!
//! Errors are [`TracefsError`] values naming the path and the reason.

mod dump;
mod error;
mod event;
mod instance;
mod marker;
mod mount;
pub mod trace_text;

pub use dump::{Completeness, DumpReport};
pub use error::{Result, TracefsError};
pub use event::EventSpec;
pub use instance::Instance;
pub use marker::Marker;
pub use mount::{Tracefs, DEFAULT_TRACEFS_MOUNT, PROC_MOUNTS};
