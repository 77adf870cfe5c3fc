//! The image's entries: a fixed skeleton for /init, /init itself and the extra files,
//! in sorted path order (a parent always sorts before its children).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::elf_static::check_static_executable;
use crate::error::InitrdError;
use crate::spec::InitrdSpec;

/// Major of /dev/console (include/uapi/linux/major.h).
const TTYAUX_MAJOR: u32 = 5;
/// Major of the memory devices (drivers/char/mem.c: 1 mem, 3 null).
const MEM_MAJOR: u32 = 1;
const MEM_MINOR_MEM: u32 = 1;
const MEM_MINOR_NULL: u32 = 3;
const CONSOLE_MINOR: u32 = 1;

const DIR_MODE: u32 = 0o755;
const INIT_MODE: u32 = 0o755;
const PERMISSION_BITS: u32 = 0o7777;

/// Mount points /init needs; /tmp is world-writable and sticky as everywhere.
const SKELETON_DIRS: &[(&str, u32)] = &[
    ("dev", DIR_MODE),
    ("proc", 0o555),
    ("run", DIR_MODE),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// Nodes needed before devtmpfs is mounted: the kernel opens /dev/console as init's
/// stdin/stdout/stderr, and /dev/mem reaches the VMM's dump region.
const SKELETON_NODES: &[(&str, u32, u32, u32)] = &[
    ("dev/console", TTYAUX_MAJOR, CONSOLE_MINOR, 0o600),
    ("dev/mem", MEM_MAJOR, MEM_MINOR_MEM, 0o640),
    ("dev/null", MEM_MAJOR, MEM_MINOR_NULL, 0o666),
];

/// Largest file a newc header can describe (c_filesize is 8 hex digits).
pub(crate) const NEWC_MAX_FILE_SIZE: u64 = u32::MAX as u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    Directory,
    CharDevice { major: u32, minor: u32 },
    File { source: PathBuf, size: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path inside the image, relative to its root.
    pub path: String,
    /// Permission bits only; the file type comes from `content`.
    pub permissions: u32,
    pub content: Content,
}

/// Checks every input and lists the entries in archive order.
pub(crate) fn plan(spec: &InitrdSpec) -> Result<Vec<Entry>, InitrdError> {
    check_static_executable(&spec.init)?;
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for &(path, permissions) in SKELETON_DIRS {
        insert(&mut entries, path, permissions, Content::Directory)?;
    }
    for &(path, major, minor, permissions) in SKELETON_NODES {
        insert(
            &mut entries,
            path,
            permissions,
            Content::CharDevice { major, minor },
        )?;
    }
    let (_, init_size) = regular_file(&spec.init)?;
    insert(
        &mut entries,
        "init",
        INIT_MODE,
        Content::File {
            source: spec.init.clone(),
            size: init_size,
        },
    )?;
    for extra in &spec.extra_files {
        let (permissions, size) = regular_file(&extra.source)?;
        add_parent_dirs(&mut entries, &extra.dest)?;
        insert(
            &mut entries,
            &extra.dest,
            permissions,
            Content::File {
                source: extra.source.clone(),
                size,
            },
        )?;
    }
    Ok(entries.into_values().collect())
}

fn insert(
    entries: &mut BTreeMap<String, Entry>,
    path: &str,
    permissions: u32,
    content: Content,
) -> Result<(), InitrdError> {
    if entries.contains_key(path) {
        return Err(InitrdError::DuplicateDestination {
            dest: path.to_string(),
        });
    }
    let entry = Entry {
        path: path.to_string(),
        permissions,
        content,
    };
    entries.insert(path.to_string(), entry);
    Ok(())
}

fn add_parent_dirs(entries: &mut BTreeMap<String, Entry>, dest: &str) -> Result<(), InitrdError> {
    let mut end = 0;
    while let Some(slash) = dest[end..].find('/') {
        let parent = &dest[..end + slash];
        match entries.get(parent).map(|entry| &entry.content) {
            Some(Content::Directory) => {}
            // A file or device where a directory is needed.
            Some(_) => {
                return Err(InitrdError::DuplicateDestination {
                    dest: parent.to_string(),
                })
            }
            None => insert(entries, parent, DIR_MODE, Content::Directory)?,
        }
        end += slash + 1;
    }
    Ok(())
}

/// Permission bits and size of a regular file (symlinks followed).
fn regular_file(path: &Path) -> Result<(u32, u32), InitrdError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = fs::metadata(path).map_err(|e| InitrdError::io(path, e))?;
    if !metadata.is_file() {
        return Err(InitrdError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let size = u32::try_from(metadata.len()).map_err(|_| InitrdError::FileTooLarge {
        path: path.to_path_buf(),
        size: metadata.len(),
        max: NEWC_MAX_FILE_SIZE,
    })?;
    Ok((metadata.permissions().mode() & PERMISSION_BITS, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Compression;

    fn spec_with(extra: &[&str]) -> InitrdSpec {
        InitrdSpec {
            init: std::env::current_exe().unwrap(),
            extra_files: extra.iter().map(|s| s.parse().unwrap()).collect(),
            compression: Compression::None,
        }
    }

    #[test]
    fn skeleton_init_and_parents_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        fs::write(&kernel, b"kernel").unwrap();
        let spec = spec_with(&[&format!("{}=/l2/boot/vmlinuz", kernel.display())]);
        let entries = plan(&spec).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "dev/mem",
                "dev/null",
                "init",
                "l2",
                "l2/boot",
                "l2/boot/vmlinuz",
                "proc",
                "run",
                "sys",
                "tmp"
            ]
        );
        let console = &entries[1];
        assert_eq!(
            console.content,
            Content::CharDevice {
                major: TTYAUX_MAJOR,
                minor: CONSOLE_MINOR
            }
        );
        assert_eq!(
            entries[7].content,
            Content::File {
                source: kernel,
                size: 6
            }
        );
    }

    #[test]
    fn refuses_collisions_with_init_skeleton_and_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        let f = file.display();
        for (adds, clash) in [
            (vec![format!("{f}=/init")], "init"),
            (vec![format!("{f}=dev/null")], "dev/null"),
            (vec![format!("{f}=a"), format!("{f}=a/b")], "a"),
            (vec![format!("{f}=x/y"), format!("{f}=x/y")], "x/y"),
        ] {
            let adds: Vec<&str> = adds.iter().map(String::as_str).collect();
            let err = plan(&spec_with(&adds)).unwrap_err();
            match &err {
                InitrdError::DuplicateDestination { dest } => assert_eq!(dest, clash),
                other => panic!("expected a duplicate {clash}, got {other}"),
            }
        }
    }

    #[test]
    fn refuses_missing_and_non_regular_sources() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = plan(&spec_with(&[&format!("{}=m", missing.display())])).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = plan(&spec_with(&[&format!("{}=d", dir.path().display())])).unwrap_err();
        assert!(matches!(err, InitrdError::NotRegularFile { .. }), "{err}");
    }

    #[test]
    fn refuses_a_dynamic_init() {
        let mut spec = spec_with(&[]);
        spec.init = PathBuf::from("/bin/ls");
        let err = plan(&spec).unwrap_err();
        assert!(
            matches!(err, InitrdError::DynamicExecutable { .. }),
            "{err}"
        );
    }
}
