//! Private trace instances (`instances/<name>`): creation, settings, removal, and the start-up
//! sweep that removes instances left behind by crashed runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::dump::{self, DumpReport};
use crate::error::{Result, TracefsError};
use crate::event::EventSpec;
use crate::marker::{Marker, TRACING_ON};
use crate::mount::{Tracefs, INSTANCES_DIR};

/// Instance file: per-CPU ring buffer size in KiB.
const BUFFER_SIZE_KB: &str = "buffer_size_kb";
/// Instance file: the available clocks, the current one in brackets.
const TRACE_CLOCK: &str = "trace_clock";

impl Tracefs {
    /// Creates `instances/<name>`. The kernel gives a new instance its own buffers, events,
    /// clock and `tracing_on` (initially on, with no event enabled).
    pub fn create_instance(&self, name: &str) -> Result<Instance> {
        check_instance_name(name)?;
        let path = self.root().join(INSTANCES_DIR).join(name);
        match fs::create_dir(&path) {
            Ok(()) => Ok(Instance { path }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(TracefsError::InstanceExists { path })
            }
            Err(e) => Err(TracefsError::io(path, "creating the trace instance", e)),
        }
    }

    /// The name of the instance this process should own: `<prefix><pid>`.
    pub fn instance_name_for_this_process(prefix: &str) -> String {
        format!("{prefix}{}", std::process::id())
    }

    /// Removes every `instances/<prefix><pid>` whose process no longer exists, and returns
    /// their paths. Call it at start-up, before creating this process's own instance: an
    /// instance already named after this process comes from an earlier process with the same
    /// pid and is removed too. A pid reused by an unrelated live process keeps its instance
    /// until that process is gone; one whose files are open is in use and is left alone too.
    /// Instances of other names are never touched.
    pub fn remove_stale_instances(&self, prefix: &str) -> Result<Vec<PathBuf>> {
        let dir = self.root().join(INSTANCES_DIR);
        let entries =
            fs::read_dir(&dir).map_err(|e| TracefsError::io(&dir, "listing instances", e))?;
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TracefsError::io(&dir, "listing instances", e))?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| owner_pid(n, prefix))
            else {
                continue;
            };
            if pid == std::process::id() || !process_exists(pid) {
                let path = entry.path();
                match remove_instance_dir(&path) {
                    Ok(()) => removed.push(path),
                    // Open files mean someone uses it (e.g. a run in another pid namespace).
                    Err(TracefsError::InstanceBusy { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

/// A trace instance owned by this process; removed on drop (errors ignored there: call
/// [`Instance::remove`] to see them).
#[derive(Debug)]
pub struct Instance {
    path: PathBuf,
}

impl Instance {
    /// The instance directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Enables events. All specs are checked first, so an unknown one enables nothing.
    pub fn enable_events(&self, specs: &[EventSpec]) -> Result<()> {
        let enable_files = specs
            .iter()
            .map(|spec| spec.validate(&self.path))
            .collect::<Result<Vec<_>>>()?;
        enable_files
            .iter()
            .try_for_each(|file| write_control(file, "1"))
    }

    /// Sets the size of each CPU's ring buffer in KiB (the total is this times the CPU count).
    pub fn set_buffer_kb(&self, kb_per_cpu: u64) -> Result<()> {
        write_control(&self.path.join(BUFFER_SIZE_KB), &kb_per_cpu.to_string())
    }

    /// Selects the trace clock (`mono` lines up with CLOCK_MONOTONIC). The kernel clears the
    /// instance's buffer on a clock change: set it before recording starts.
    pub fn set_clock(&self, clock: &str) -> Result<()> {
        let path = self.path.join(TRACE_CLOCK);
        let offered = fs::read_to_string(&path)
            .map_err(|e| TracefsError::io(&path, "reading the clock list", e))?;
        let mut names = offered
            .split_ascii_whitespace()
            .map(|name| name.trim_start_matches('[').trim_end_matches(']'));
        if !names.any(|name| name == clock) {
            return Err(TracefsError::UnknownClock {
                clock: clock.to_string(),
                path,
                available: offered.trim().to_string(),
            });
        }
        write_control(&path, clock)
    }

    /// Turns recording in this instance on or off.
    pub fn set_tracing_on(&self, on: bool) -> Result<()> {
        write_control(&self.path.join(TRACING_ON), if on { "1" } else { "0" })
    }

    /// Opens the marker and stop descriptors for the urgent path.
    pub fn marker(&self) -> Result<Marker> {
        Marker::open(&self.path)
    }

    /// Writes the instance's trace text, time-ordered, to `target`: created as a new 0600 file
    /// and renamed over it; a symlink or non-regular target is refused. Stop recording first
    /// (the kernel pauses it anyway while the trace files are open). How it is made fast, and
    /// what `Partial` means: [`DumpReport`], `src/dump.rs`.
    pub fn dump_to(&self, target: &Path) -> Result<DumpReport> {
        dump::dump_instance(&self.path, target)
    }

    /// Removes the instance, reporting why if the kernel refuses.
    pub fn remove(mut self) -> Result<()> {
        // An empty path tells Drop that removal was already attempted.
        let path = std::mem::take(&mut self.path);
        remove_instance_dir(&path)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        // Best effort: a failure leaves a stale instance that the next run's
        // `remove_stale_instances` sweeps away once this process is gone.
        let _ = remove_instance_dir(&self.path);
    }
}

/// Writes a value to a tracefs control file in one write.
pub(crate) fn write_control(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| TracefsError::io(path, format!("writing {value:?}"), e))
}

fn remove_instance_dir(path: &Path) -> Result<()> {
    fs::remove_dir(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => TracefsError::InstanceBusy {
            path: path.to_path_buf(),
        },
        _ => TracefsError::io(path, "removing the trace instance", e),
    })
}

/// Instance names are one path component.
fn check_instance_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "not a directory name"
    } else if name.contains(['/', '\0']) {
        "contains '/' or NUL"
    } else {
        return Ok(());
    };
    Err(TracefsError::InvalidInstanceName {
        name: name.to_string(),
        reason,
    })
}

/// The pid in `<prefix><pid>`, if the name is exactly that.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
}

/// kill(pid, 0): delivers nothing, fails with ESRCH when no such process exists (EPERM means
/// it exists but belongs to someone else).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence; pid > 0 names a single process.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tracefs() -> (tempfile::TempDir, Tracefs) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(INSTANCES_DIR)).unwrap();
        let tracefs = Tracefs::at(dir.path()).unwrap();
        (dir, tracefs)
    }

    #[test]
    fn owner_pid_accepts_only_prefix_and_digits() {
        assert_eq!(owner_pid("gapprobe-123", "gapprobe-"), Some(123));
        assert_eq!(owner_pid("gapprobe-", "gapprobe-"), None);
        assert_eq!(owner_pid("gapprobe-12a", "gapprobe-"), None);
        assert_eq!(owner_pid("gapprobe-test-12", "gapprobe-"), None);
        assert_eq!(owner_pid("other-123", "gapprobe-"), None);
        assert_eq!(owner_pid("gapprobe-0", "gapprobe-"), None);
        assert_eq!(owner_pid("gapprobe-4294967295", "gapprobe-"), None);
    }

    #[test]
    fn instance_names_stay_inside_instances() {
        let (_dir, tracefs) = fake_tracefs();
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(
                matches!(
                    tracefs.create_instance(bad),
                    Err(TracefsError::InvalidInstanceName { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn create_remove_and_exists_on_a_fake_tree() {
        let (dir, tracefs) = fake_tracefs();
        let instance = tracefs.create_instance("gapprobe-x").unwrap();
        let path = dir.path().join("instances/gapprobe-x");
        assert_eq!(instance.path(), path);
        assert!(matches!(
            tracefs.create_instance("gapprobe-x"),
            Err(TracefsError::InstanceExists { path: p }) if p == path
        ));
        instance.remove().unwrap();
        assert!(!path.exists());
        drop(tracefs.create_instance("gapprobe-y").unwrap());
        assert!(!dir.path().join("instances/gapprobe-y").exists());
    }

    #[test]
    fn stale_sweep_removes_dead_and_own_pids_only() {
        let (dir, tracefs) = fake_tracefs();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let own = Tracefs::instance_name_for_this_process("gp-");
        for name in [
            format!("gp-{dead_pid}"),
            own.clone(),
            "gp-1".to_string(),
            "other-1".to_string(),
            format!("other-{dead_pid}"),
        ] {
            fs::create_dir(dir.path().join(INSTANCES_DIR).join(name)).unwrap();
        }
        let mut removed = tracefs.remove_stale_instances("gp-").unwrap();
        removed.sort();
        let mut expected = vec![
            dir.path()
                .join(INSTANCES_DIR)
                .join(format!("gp-{dead_pid}")),
            dir.path().join(INSTANCES_DIR).join(own),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = fs::read_dir(dir.path().join(INSTANCES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "gp-1".to_string(),
                "other-1".to_string(),
                format!("other-{dead_pid}")
            ]
        );
    }

    #[test]
    fn settings_validate_and_write_control_files() {
        let (dir, tracefs) = fake_tracefs();
        let instance = tracefs.create_instance("settings").unwrap();
        let p = instance.path().to_path_buf();
        fs::create_dir_all(p.join("events/sched/sched_switch")).unwrap();
        for file in [
            "events/sched/enable",
            "events/sched/sched_switch/enable",
            BUFFER_SIZE_KB,
            TRACING_ON,
        ] {
            fs::write(p.join(file), b"0\n").unwrap();
        }
        fs::write(
            p.join(TRACE_CLOCK),
            b"[local] global counter mono mono_raw\n",
        )
        .unwrap();

        let specs = EventSpec::parse_list("sched:sched_switch,sched:nope").unwrap();
        assert!(matches!(
            instance.enable_events(&specs),
            Err(TracefsError::UnknownEvent { spec, .. }) if spec == "sched:nope"
        ));
        // Validation failed, so nothing was enabled.
        assert_eq!(
            fs::read(p.join("events/sched/sched_switch/enable")).unwrap(),
            b"0\n"
        );
        instance
            .enable_events(&EventSpec::parse_list("sched,sched:sched_switch").unwrap())
            .unwrap();
        assert_eq!(fs::read(p.join("events/sched/enable")).unwrap(), b"1");

        instance.set_buffer_kb(65536).unwrap();
        assert_eq!(fs::read(p.join(BUFFER_SIZE_KB)).unwrap(), b"65536");
        instance.set_tracing_on(false).unwrap();
        assert_eq!(fs::read(p.join(TRACING_ON)).unwrap(), b"0");

        instance.set_clock("mono").unwrap();
        assert_eq!(fs::read(p.join(TRACE_CLOCK)).unwrap(), b"mono");
        fs::write(p.join(TRACE_CLOCK), b"[local] global\n").unwrap();
        match instance.set_clock("mono") {
            Err(TracefsError::UnknownClock {
                clock, available, ..
            }) => {
                assert_eq!(
                    (clock.as_str(), available.as_str()),
                    ("mono", "[local] global")
                );
            }
            other => panic!("expected UnknownClock, got {other:?}"),
        }
        // The fake instance is a plain directory: empty it so that drop can rmdir it.
        fs::remove_dir_all(&p).unwrap();
        fs::create_dir(&p).unwrap();
        drop(instance);
        assert!(!dir.path().join("instances/settings").exists());
    }
}
