//! The one error type of the crate: every variant names the path involved and the reason.

use std::io;
use std::path::PathBuf;

/// Errors of the tracefs library.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// Only root may mount tracefs here, or open the tracefs mounted here.
    #[error("{path}: {reason}: run as root")]
    NotRoot { path: PathBuf, reason: &'static str },

    /// The path is not a tracefs mount (or the kernel has no tracefs).
    #[error("{path} is not a mounted tracefs: {reason}")]
    NotMounted { path: PathBuf, reason: String },

    /// mount(2) of tracefs failed.
    #[error("mounting tracefs at {path} failed: {cause}")]
    Mount { path: PathBuf, cause: io::Error },

    /// A file or directory operation on a tracefs or dump path failed.
    #[error("{path}: {action}: {cause}")]
    Io {
        path: PathBuf,
        action: String,
        cause: io::Error,
    },

    /// An event spec that is not `system` or `system:event` with plain names.
    #[error("invalid event spec {spec:?}: {reason}")]
    InvalidEventSpec { spec: String, reason: &'static str },

    /// An event spec that the instance does not offer.
    #[error("unknown trace event {spec:?}: {path} does not exist")]
    UnknownEvent { spec: String, path: PathBuf },

    /// A trace clock missing from the instance's `trace_clock` list.
    #[error("trace clock {clock:?} is not offered by {path} (it offers: {available})")]
    UnknownClock {
        clock: String,
        path: PathBuf,
        available: String,
    },

    /// An instance name that is empty or would leave the `instances` directory.
    #[error("invalid instance name {name:?}: {reason}")]
    InvalidInstanceName { name: String, reason: &'static str },

    /// The instance directory exists already (another run, or a stale one).
    #[error("trace instance {path} already exists")]
    InstanceExists { path: PathBuf },

    /// rmdir of an instance failed because files in it are still open.
    #[error("trace instance {path} is busy (a Marker or another reader still has files open)")]
    InstanceBusy { path: PathBuf },

    /// The dump target is a symlink, not a regular file, or has no file name.
    #[error("refusing to dump the trace to {path}: {reason}")]
    UnsafeDumpTarget { path: PathBuf, reason: &'static str },
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, TracefsError>;

impl TracefsError {
    /// Wraps an I/O error with the path and what was being done to it.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        cause: io::Error,
    ) -> Self {
        TracefsError::Io {
            path: path.into(),
            action: action.into(),
            cause,
        }
    }
}
