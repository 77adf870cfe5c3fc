//! Every way building an image can fail, each naming the file and the reason.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not an ELF executable ({reason})")]
    NotElf { path: PathBuf, reason: &'static str },
    #[error(
        "{path}: dynamically linked (it has a PT_INTERP program header, interpreter {interpreter}); \
         /init runs in an empty root, build it static (-C target-feature=+crt-static)"
    )]
    DynamicExecutable { path: PathBuf, interpreter: String },
    #[error("{path}: not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("{path}: {size} bytes does not fit a newc entry (at most {max} bytes)")]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("invalid --add {spec:?}: {reason}")]
    InvalidExtraFile { spec: String, reason: &'static str },
    #[error("two entries for /{dest} in the image")]
    DuplicateDestination { dest: String },
    #[error("unknown compression {name:?} (expected gzip or none)")]
    UnknownCompression { name: String },
}

impl InitrdError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        InitrdError::Io {
            path: path.into(),
            cause: source,
        }
    }
}
