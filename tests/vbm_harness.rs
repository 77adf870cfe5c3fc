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
/// scripts/vbm.sh: T did not finish within its timeout.
const VBM_EXIT_TIMEOUT: i32 = 124;

/// How l1-harness reports a guest's triple fault (KVM_EXIT_SHUTDOWN).
const GUEST_TRIPLE_FAULT: &str = "triple fault (KVM_EXIT_SHUTDOWN)";

/// The kernel's soft-lockup watchdog (kernel/watchdog.c).
const SOFT_LOCKUP: &str = "watchdog: BUG: soft lockup";

/// The most runs of T one test makes when T's emulation fails under it. The SVM fault hit
/// 4 of 11 nested runs of 45 s by hand, and three in a row once in CI (README, "The virtual
/// bare metal").
const T_RUNS_AFTER_EMULATION_FAULTS: u32 = 4;

/// Runs `command` in T with `adds` (SRC=DEST) copied in. Fails the test with the harness's
/// message when T itself fails: a missing prerequisite (scripts/install-test-deps.sh
/// installs them) or T's timeout. A fault of the emulation ([`emulation_fault`]: T's kernel
/// crashed, seen in CI as "TASK stack guard page was hit", froze or locked up, or its SVM gave
/// a guest T's own state) is not something under test: that run is shown and T is run again, up to
/// [`T_RUNS_AFTER_EMULATION_FAULTS`] times in all; the last run's result stands.
pub fn run_in_t(options: &[&str], adds: &[String], command: &str, timeout_s: u32) -> TRun {
    let mut run = run_t_once(options, adds, command, timeout_s);
    for attempt in 2..=T_RUNS_AFTER_EMULATION_FAULTS {
        let Some(fault) = emulation_fault(&run) else {
            break;
        };
        // Straight to stderr, past the test runner's capture: a passing test shows it too.
        let _ = writeln!(
            std::io::stderr(),
            "note: {fault}; running T again (run {attempt} of at most {T_RUNS_AFTER_EMULATION_FAULTS})"
        );
        run = run_t_once(options, adds, command, timeout_s);
    }
    // The harness's own failures (not the command's status) come with a FAIL line.
    assert!(
        !run.harness.contains("vbm: FAIL:"),
        "the virtual bare metal failed (status {:?}):\n{}",
        run.status,
        run.harness
    );
    run
}

/// A fault of T itself (QEMU TCG), not of what runs in it: T's kernel died before the
/// command's status came, froze as it started or locked up, or T's emulated SVM gave a guest
/// vCPU T's own state, which l1-harness recognises when the guest then hangs, and which a
/// guest's triple fault is taken for (README, "The virtual bare metal").
fn emulation_fault(run: &TRun) -> Option<String> {
    if run.status == Some(VBM_EXIT_NO_RESULT) {
        // The kernel's or QEMU's first words about the crash, as evidence in the note; with
        // neither (QEMU exits silently on a triple fault: -no-reboot), the last line.
        let oops = first_console_line(run, |line| {
            line.contains("BUG:")
                || line.contains("Kernel panic")
                || line.starts_with("qemu-system-x86_64:")
        })
        .or_else(|| {
            run.console
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
        })
        .map_or("an empty console".to_string(), |line| {
            format!("console: {}", line.trim())
        });
        return Some(format!(
            "T itself crashed (QEMU TCG) before the command's status came ({oops})"
        ));
    }
    if run.status == Some(VBM_EXIT_TIMEOUT) {
        if t_went_silent(run) {
            return Some(
                "T froze as the command started: not one console line until its timeout".into(),
            );
        }
        // Every guest in T has a timeout of its own, shorter than T's: a soft lockup that
        // outlives them all is T's kernel stuck.
        if let Some(lockup) = first_console_line(run, |line| line.contains(SOFT_LOCKUP)) {
            return Some(format!(
                "T's own kernel locked up and T did not finish ({lockup})"
            ));
        }
    }
    // The same fault can make the guest triple-fault instead, and KVM then resets the vCPU
    // before anyone can look at it: a triple fault in T is counted as the fault too. One that
    // a guest really makes every time still fails, on the last run.
    if let Some(shutdown) = first_console_line(run, |line| line.contains(GUEST_TRIPLE_FAULT)) {
        return Some(format!(
            "a guest in T triple-faulted, which T's SVM fault also causes ({shutdown})"
        ));
    }
    let evidence = first_console_line(run, |line| line.contains(l1_harness::HOST_STATE_IN_GUEST))?;
    Some(format!(
        "T's emulated SVM (QEMU TCG) gave a guest vCPU T's own state and the guest hung ({evidence})"
    ))
}

/// The first line of T's console that `matches`, trimmed: the evidence a note quotes.
fn first_console_line(run: &TRun, matches: impl Fn(&str) -> bool) -> Option<&str> {
    run.console
        .lines()
        .find(|line| matches(line))
        .map(str::trim)
}

/// Nothing on T's console between its rc starting the command and QEMU being killed: T's
/// own kernel stopped, since everything under test prints within seconds.
fn t_went_silent(run: &TRun) -> bool {
    run.console
        .lines()
        .skip_while(|line| !line.contains("VBM-T-READY"))
        .skip(1)
        .all(|line| line.starts_with("qemu-system-x86_64: terminating on signal"))
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
