//! Locating tracefs: through /proc/mounts (it is not always at /sys/kernel/tracing), through
//! debugfs's `tracing` directory as a fallback, or by mounting it when we are root.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, TracefsError};

/// The file listing the mounts of the calling process's namespace.
pub const PROC_MOUNTS: &str = "/proc/mounts";
/// Where the kernel expects tracefs (the directory exists whenever tracefs is built in).
pub const DEFAULT_TRACEFS_MOUNT: &str = "/sys/kernel/tracing";
/// Directory of trace instances inside a tracefs mount; its presence marks a tracefs root.
pub(crate) const INSTANCES_DIR: &str = "instances";

/// A tracefs mount point. Nothing in this crate writes to its global files; all work happens in
/// instances created under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracefs {
    root: PathBuf,
    /// `open()` mounted it: the host had no tracefs, and [`Tracefs::unmount_if_mounted_here`]
    /// puts it back that way.
    mounted_here: bool,
}

impl Tracefs {
    /// Finds tracefs in /proc/mounts (fstype `tracefs`, else debugfs's `tracing` directory); if
    /// none is mounted and we are root, mounts it at [`DEFAULT_TRACEFS_MOUNT`].
    pub fn open() -> Result<Self> {
        let mounts = fs::read_to_string(PROC_MOUNTS)
            .map_err(|e| TracefsError::io(PROC_MOUNTS, "reading the mount table", e))?;
        if let Some(root) = find_tracefs_root(&mounts) {
            return Self::at(root);
        }
        let target = Path::new(DEFAULT_TRACEFS_MOUNT);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(TracefsError::NotRoot {
                path: target.to_path_buf(),
                reason: "tracefs is not mounted and mounting it needs root",
            });
        }
        mount_tracefs(target)?;
        let mut tracefs = Self::at(target)?;
        tracefs.mounted_here = true;
        Ok(tracefs)
    }

    /// Unmounts tracefs if `open()` mounted it, leaving the host's mounts as they were. Call
    /// after every instance is removed.
    pub fn unmount_if_mounted_here(&self) -> Result<()> {
        if !self.mounted_here {
            return Ok(());
        }
        let c_target = CString::new(self.root.as_os_str().as_bytes()).map_err(|_| {
            TracefsError::io(&self.root, "unmounting", io::ErrorKind::InvalidInput.into())
        })?;
        // SAFETY: a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::umount(c_target.as_ptr()) } != 0 {
            let err = io::Error::last_os_error();
            return Err(TracefsError::io(&self.root, "unmounting", err));
        }
        Ok(())
    }

    /// Uses the tracefs mounted at `root`, checking that it looks like one (and that we may
    /// enter it: tracefs is mode 0700).
    pub fn at(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        match fs::metadata(root.join(INSTANCES_DIR)) {
            Ok(md) if md.is_dir() => Ok(Tracefs {
                root,
                mounted_here: false,
            }),
            Ok(_) => Err(TracefsError::NotMounted {
                path: root,
                reason: format!("{INSTANCES_DIR} is not a directory"),
            }),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(TracefsError::NotRoot {
                path: root,
                reason: "tracefs is accessible only to root",
            }),
            Err(e) => Err(TracefsError::NotMounted {
                path: root,
                reason: format!("no {INSTANCES_DIR} directory ({e})"),
            }),
        }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The tracefs root named by a /proc/mounts text: the first `tracefs` mount, else the first
/// debugfs mount's `tracing` subdirectory.
fn find_tracefs_root(mounts: &str) -> Option<PathBuf> {
    let entries: Vec<(&str, PathBuf)> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _source = fields.next()?;
            let mount_point = unescape_mount_field(fields.next()?);
            let fstype = fields.next()?;
            Some((fstype, mount_point))
        })
        .collect();
    if let Some((_, dir)) = entries.iter().find(|(fstype, _)| *fstype == "tracefs") {
        return Some(dir.clone());
    }
    entries
        .iter()
        .find(|(fstype, _)| *fstype == "debugfs")
        .map(|(_, dir)| dir.join("tracing"))
}

/// Decodes the octal escapes (`\040` for a space, ...) that the kernel's `mangle()` puts in
/// /proc/mounts fields.
fn unescape_mount_field(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                // Three octal digits above \377 are not a byte: keep them as text.
                match u8::try_from(value) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// `mount -t tracefs nodev <target>` without needing a mount binary (we may be PID 1 of a guest).
fn mount_tracefs(target: &Path) -> Result<()> {
    let mount_error = |cause| TracefsError::Mount {
        path: target.to_path_buf(),
        cause,
    };
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| mount_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call; the
    // data argument may be NULL.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c_target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => TracefsError::NotMounted {
                path: target.to_path_buf(),
                reason: format!("cannot mount tracefs here, the kernel may lack it ({err})"),
            },
            _ => mount_error(err),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS_WITH_TRACEFS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
debugfs /sys/kernel/debug debugfs rw,relatime 0 0
nodev /mnt/my\\040trace tracefs rw,relatime 0 0
nodev /sys/kernel/tracing tracefs rw,relatime 0 0
";

    #[test]
    fn first_tracefs_mount_wins_and_escapes_are_decoded() {
        assert_eq!(
            find_tracefs_root(MOUNTS_WITH_TRACEFS),
            Some(PathBuf::from("/mnt/my trace"))
        );
    }

    #[test]
    fn debugfs_tracing_is_the_fallback() {
        let mounts = "proc /proc proc rw 0 0\ndebugfs /dbg debugfs rw,relatime 0 0\n";
        assert_eq!(
            find_tracefs_root(mounts),
            Some(PathBuf::from("/dbg/tracing"))
        );
    }

    #[test]
    fn no_tracefs_and_no_debugfs_gives_none() {
        let mounts = "proc /proc proc rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n\ngarbage\n";
        assert_eq!(find_tracefs_root(mounts), None);
    }

    #[test]
    fn unescape_keeps_plain_text_and_invalid_escapes() {
        assert_eq!(unescape_mount_field("/a\\011b"), PathBuf::from("/a\tb"));
        assert_eq!(unescape_mount_field("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape_mount_field("/a\\9x"), PathBuf::from("/a\\9x"));
        assert_eq!(unescape_mount_field("/a\\777"), PathBuf::from("/a\\777"));
        assert_eq!(unescape_mount_field("/end\\"), PathBuf::from("/end\\"));
    }

    #[test]
    fn at_accepts_a_tree_with_instances_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tracefs::at(dir.path()).unwrap_err();
        assert!(
            matches!(&err, TracefsError::NotMounted { path, .. } if path == dir.path()),
            "{err}"
        );
        fs::write(dir.path().join(INSTANCES_DIR), b"").unwrap();
        assert!(matches!(
            Tracefs::at(dir.path()),
            Err(TracefsError::NotMounted { .. })
        ));
        fs::remove_file(dir.path().join(INSTANCES_DIR)).unwrap();
        fs::create_dir(dir.path().join(INSTANCES_DIR)).unwrap();
        let tracefs = Tracefs::at(dir.path()).unwrap();
        assert_eq!(tracefs.root(), dir.path());
    }
}
