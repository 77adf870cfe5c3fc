//! The two things a step asks git: where the repository's git directory is (the log lives
//! there) and which revision is being tested.

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {cause} (apt-get install git)")]
    Spawn { cause: std::io::Error },
    #[error(
        "not in a git repository (run it in the kernel tree, e.g. under `git bisect run`): {cause}"
    )]
    NotARepository { cause: String },
    #[error("git {args}: {cause}")]
    Failed { args: String, cause: String },
}

fn git(args: &[&str]) -> Result<Result<String, String>, GitError> {
    let output = Command::new("git")
        .args(args)
        .output()
        .map_err(|cause| GitError::Spawn { cause })?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    Ok(if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    })
}

/// The absolute git directory of the repository around the current directory.
pub fn git_dir() -> Result<PathBuf, GitError> {
    git(&["rev-parse", "--absolute-git-dir"])?
        .map(PathBuf::from)
        .map_err(|cause| GitError::NotARepository { cause })
}

/// The short name of the revision under test: BISECT_HEAD during a `git bisect start
/// --no-checkout` bisection, else HEAD.
pub fn revision_under_test() -> Result<String, GitError> {
    if let Ok(revision) = git(&["rev-parse", "--short", "--verify", "--quiet", "BISECT_HEAD"])? {
        return Ok(revision);
    }
    git(&["rev-parse", "--short", "HEAD"])?.map_err(|cause| GitError::Failed {
        args: "rev-parse --short HEAD".into(),
        cause,
    })
}
