//! Building the kernel of the revision under test. `--build CMD` runs `sh -c CMD` in the
//! current directory; the default is scripts/build-kernel.sh with kernels/gapprobe.config,
//! both embedded in this binary (it must work installed alone) and written to a temporary
//! directory for the build. Either way the last non-empty line of the build's stdout is the
//! image path; stdout and stderr reach the terminal as progress.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use super::child::{run_relayed, Relayed};

const BUILD_SCRIPT: &str = include_str!("../../../scripts/build-kernel.sh");
const CONFIG_FRAGMENT: &str = include_str!("../../../kernels/gapprobe.config");
/// build-kernel.sh's override for its fragment (default: next to the script).
const FRAGMENT_ENV: &str = "GAPPROBE_KERNEL_FRAGMENT";
/// build-kernel.sh's exit code for a bad tree, toolchain or cache: the same on every
/// revision, so not a reason to skip one.
const BUILD_SCRIPT_ENVIRONMENT: i32 = 2;

pub enum Built {
    Image(PathBuf),
    /// The build failed at this revision: skip it.
    Failed(String),
}

/// Builds the current directory's revision. An error is a build setup that cannot work on
/// any revision (the bisection must stop).
pub fn build(command: Option<&str>) -> anyhow::Result<Built> {
    let (status, image) = match command {
        Some(command) => {
            eprintln!("bisect-run: build: sh -c {command:?}");
            run_build(Command::new("sh").arg("-c").arg(command))?
        }
        None => {
            let workdir = tempfile::Builder::new()
                .prefix("gapprobe-build-")
                .tempdir()
                .context("creating a directory for the build script")?;
            let script = workdir.path().join("build-kernel.sh");
            let fragment = workdir.path().join("gapprobe.config");
            std::fs::write(&script, BUILD_SCRIPT)
                .and_then(|()| std::fs::write(&fragment, CONFIG_FRAGMENT))
                .with_context(|| {
                    format!("writing the build script to {}", workdir.path().display())
                })?;
            let mut command = Command::new("bash");
            command.arg(&script).arg(".");
            // A fragment the user chose stays theirs.
            if std::env::var_os(FRAGMENT_ENV).is_none() {
                command.env(FRAGMENT_ENV, &fragment);
            }
            eprintln!("bisect-run: build: build-kernel.sh . (embedded)");
            let (status, image) = run_build(&mut command)?;
            if status.code() == Some(BUILD_SCRIPT_ENVIRONMENT) {
                bail!("build-kernel.sh cannot build here (its error is above)");
            }
            (status, image)
        }
    };
    if !status.success() {
        return Ok(Built::Failed(format!("build failed: {status}")));
    }
    match image {
        Some(image) => Ok(Built::Image(PathBuf::from(image.trim()))),
        None => bail!("the build succeeded but printed no image path (the last line of its stdout must be the kernel image)"),
    }
}

fn run_build(command: &mut Command) -> anyhow::Result<(std::process::ExitStatus, Option<String>)> {
    run_relayed(command, Relayed::Stdout, |line| !line.trim().is_empty())
        .context("cannot start the build")
}
