//! Shared by the vbm_* tests: builds busybox test initramfs images with `gapprobe initrd`
//! and runs commands inside T, the virtual bare metal of `scripts/vbm.sh`.
//! Included with `#[path]`, so it is not a test target of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is gapprobe/; the scripts live at the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gapprobe/ has a parent")
        .to_path_buf()
}

/// The kernel under test built with kernels/gapprobe.config from Debian's linux-source-6.12
/// (scripts/build-kernel.sh; scripts/test.sh builds it first, so this is a cache hit).
pub fn built_kernel() -> PathBuf {
    let cache = std::env::var("GAPPROBE_TEST_CACHE")
        .unwrap_or_else(|_| "/var/cache/gapprobe-test".to_string());
    let output = Command::new(workspace_root().join("scripts/build-kernel.sh"))
        .arg(Path::new(&cache).join("linux-source-6.12"))
        .output()
        .expect("running scripts/build-kernel.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/build-kernel.sh failed (scripts/install-test-deps.sh installs the source): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build-kernel.sh printed no image path"),
    )
}

pub fn gapprobe_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gapprobe")
}

/// Writes `out`: /init = busybox-static running `rc` (a path under scripts/guest/).
pub fn busybox_initrd(out: &Path, rc: &str, extra: &[String]) {
    let root = workspace_root();
    let output = Command::new(root.join("scripts/busybox-initrd.sh"))
        .arg(out)
        .arg(root.join("scripts/guest").join(rc))
        .args(extra)
        .env("GAPPROBE", gapprobe_bin())
        .output()
        .expect("running scripts/busybox-initrd.sh");
    assert!(
        output.status.success(),
        "scripts/busybox-initrd.sh {} failed: {}{}",
        out.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One run of T: its console (stdout) and the harness's own lines (stderr), and the
/// harness's exit status (the command's, or its documented failure codes).
pub struct TRun {
    pub console: String,
    pub harness: String,
    pub status: Option<i32>,
}

impl TRun {
    /// Everything, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- T console ---\n{}\n--- harness ---\n{}",
            self.console, self.harness
        )
    }

    /// The rest of the first console line containing `marker`, after the marker.
    pub fn after<'a>(&'a self, marker: &str) -> Option<&'a str> {
        self.console
            .lines()
            .find_map(|line| line.find(marker).map(|at| line[at + marker.len()..].trim()))
    }
}

/// scripts/vbm.sh's status when T itself ended without reporting the command's status.
const VBM_EXIT_NO_RESULT: i32 = 4;

/// Runs `command` in T with `adds` (SRC=DEST) copied in. Fails the test with the harness's
/// message when T itself fails: a missing prerequisite (scripts/install-test-deps.sh
/// installs them), T's timeout, or T ending without the command's status. The last one is
/// T's own kernel crashing under QEMU TCG (seen in CI: "TASK stack guard page was hit"), not
/// something under test: that run is shown and T is run once more; a second crash fails.
pub fn run_in_t(options: &[&str], adds: &[String], command: &str, timeout_s: u32) -> TRun {
    let first = run_t_once(options, adds, command, timeout_s);
    let run = if first.status == Some(VBM_EXIT_NO_RESULT) {
        // Straight to stderr, past the test runner's capture: a passing test shows it too.
        let _ = writeln!(
            std::io::stderr(),
            "note: T itself crashed (QEMU TCG) before the command's status came; running T once more"
        );
        run_t_once(options, adds, command, timeout_s)
    } else {
        first
    };
    // The harness's own failures (not the command's status) come with a FAIL line.
    assert!(
        !run.harness.contains("vbm: FAIL:"),
        "the virtual bare metal failed (status {:?}):\n{}",
        run.status,
        run.harness
    );
    run
}

fn run_t_once(options: &[&str], adds: &[String], command: &str, timeout_s: u32) -> TRun {
    let mut harness = Command::new(workspace_root().join("scripts/vbm.sh"));
    harness
        .arg("--gapprobe")
        .arg(gapprobe_bin())
        .arg("--timeout")
        .arg(timeout_s.to_string())
        .args(options);
    for add in adds {
        harness.arg("--add").arg(add);
    }
    let output = harness
        .arg("--")
        .arg(command)
        .output()
        .expect("running scripts/vbm.sh");
    let run = TRun {
        console: String::from_utf8_lossy(&output.stdout).into_owned(),
        harness: String::from_utf8_lossy(&output.stderr).into_owned(),
        status: output.status.code(),
    };
    // Shown by the test runner when the test fails: the whole nested console.
    println!("{}", run.transcript());
    run
}
