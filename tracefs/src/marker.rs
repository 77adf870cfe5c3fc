//! The urgent path: write a marker into the trace and stop the instance, each with one write(2)
//! on a file descriptor opened before the run (no path lookup, no allocation).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Result, TracefsError};

/// The instance file whose writes become `tracing_mark_write` events.
pub(crate) const TRACE_MARKER: &str = "trace_marker";
/// The instance file that turns recording on (`1`) and off (`0`).
pub(crate) const TRACING_ON: &str = "tracing_on";

/// Open descriptors on an instance's `trace_marker` and `tracing_on`.
///
/// While a `Marker` lives, the kernel refuses to remove its instance (`EBUSY`): drop it before
/// [`crate::Instance::remove`].
#[derive(Debug)]
pub struct Marker {
    trace_marker: File,
    tracing_on: File,
}

impl Marker {
    pub(crate) fn open(instance_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let path = instance_dir.join(name);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| TracefsError::io(path, "opening for writing", e))
        };
        Ok(Marker {
            trace_marker: open(TRACE_MARKER)?,
            tracing_on: open(TRACING_ON)?,
        })
    }

    /// Writes `text` as one marker event (one write(2)). The kernel adds the newline if missing;
    /// a marker longer than the kernel accepts is truncated and reported as `WriteZero`. The
    /// kernel refuses markers (`EBADF`) while the instance's tracing is off.
    pub fn mark(&self, text: &[u8]) -> io::Result<()> {
        write_once(&self.trace_marker, text)
    }

    /// Stops recording in the instance (writes `0` to its `tracing_on`, one write(2)).
    pub fn stop(&self) -> io::Result<()> {
        write_once(&self.tracing_on, b"0")
    }
}

/// One write(2): `&File`'s `write` is a direct system call, it neither buffers nor retries.
fn write_once(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    let written = file.write(bytes)?;
    if written == bytes.len() {
        Ok(())
    } else {
        // A constant-kind error: building it does not allocate.
        Err(io::ErrorKind::WriteZero.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn writes_marker_and_stop_to_the_opened_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TRACE_MARKER), b"").unwrap();
        fs::write(dir.path().join(TRACING_ON), b"").unwrap();
        let marker = Marker::open(dir.path()).unwrap();
        // Renaming the files away shows that no path lookup happens after open.
        fs::rename(dir.path().join(TRACE_MARKER), dir.path().join("m")).unwrap();
        fs::rename(dir.path().join(TRACING_ON), dir.path().join("t")).unwrap();
        marker.mark(b"gap 130ms").unwrap();
        marker.stop().unwrap();
        assert_eq!(fs::read(dir.path().join("m")).unwrap(), b"gap 130ms");
        assert_eq!(fs::read(dir.path().join("t")).unwrap(), b"0");
    }

    #[test]
    fn open_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Marker::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, TracefsError::Io { path, .. } if path == &dir.path().join(TRACE_MARKER)),
            "{err}"
        );
    }
}
