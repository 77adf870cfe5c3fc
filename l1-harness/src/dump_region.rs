//! The dump region: a host file mapped MAP_SHARED into guest-physical memory, so what the
//! guest writes there is in the file with no copy (and survives the guest).

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vm_memory::{FileOffset, MmapRegion};

use crate::error::VmmError;

/// Only the owner may read what the guest dumped (it may be a kernel trace).
const DUMP_FILE_MODE: u32 = 0o600;

#[derive(Debug)]
pub(crate) struct DumpRegion {
    pub(crate) mapping: MmapRegion,
}

/// Creates (or empties) the dump file and maps it. Refuses symlinks, non-regular files and
/// files of other users, so a predictable path in /dev/shm cannot be turned against us.
pub(crate) fn map_dump_file(path: &Path, size: u64) -> Result<DumpRegion, VmmError> {
    let fail = |reason: String| VmmError::DumpRegion {
        path: path.to_path_buf(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(DUMP_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| fail(format!("cannot open: {err}")))?;
    check_ownership(&file, path)?;
    file.set_permissions(Permissions::from_mode(DUMP_FILE_MODE))
        .map_err(|err| fail(format!("cannot chmod: {err}")))?;
    // Empty, then grow: the guest starts from zeroes, not from an earlier run's dump.
    file.set_len(0)
        .and_then(|()| file.set_len(size))
        .map_err(|err| fail(format!("cannot size to {size} bytes: {err}")))?;
    let length = usize::try_from(size).map_err(|_| fail(format!("{size} bytes is too large")))?;
    let mapping = MmapRegion::from_file(FileOffset::new(file, 0), length)
        .map_err(|err| fail(format!("cannot map: {err}")))?;
    Ok(DumpRegion { mapping })
}

fn check_ownership(file: &File, path: &Path) -> Result<(), VmmError> {
    let fail = |reason: String| VmmError::DumpRegion {
        path: PathBuf::from(path),
        reason,
    };
    let metadata = file
        .metadata()
        .map_err(|err| fail(format!("cannot stat: {err}")))?;
    if !metadata.file_type().is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if metadata.uid() != euid {
        return Err(fail(format!(
            "owned by uid {}, not by us (uid {euid})",
            metadata.uid()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_zeroed_file_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"stale data from an earlier run").unwrap();
        let region = map_dump_file(&path, 8192).unwrap();
        assert_eq!(region.mapping.size(), 8192);
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), 8192);
        assert_eq!(metadata.mode() & 0o777, DUMP_FILE_MODE);
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_symlinks_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
        let err = map_dump_file(&link, 4096).unwrap_err().to_string();
        assert!(err.contains("link"), "{err}");
        assert!(!dir.path().join("target").exists());
        assert!(map_dump_file(Path::new("/dev/null"), 4096).is_err());
    }
}
