//! `gapprobe bisect-run` on this host, with real git and real child runs: what a step logs,
//! what `--summary` prints, and which exit codes `git bisect run` gets for skips, aborts,
//! interruptions and bad usage. No kernel boots on this host (its /dev/kvm cannot run
//! Linux), so the good/bad bisection itself is tested in the virtual bare metal
//! (tests/vbm_bisect.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXIT_ABORT_BISECTION: i32 = 128;

fn gapprobe(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gapprobe"));
    command.current_dir(dir);
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts the exit code and a piece of stderr; returns stderr for more checks.
fn expect_exit(output: &Output, code: i32, needle: &str) -> String {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains(needle),
        "wanted {needle:?}: {}",
        text(output)
    );
    stderr
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("running git (apt-get install git)");
    assert!(output.status.success(), "git {args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A repository with `commits` empty commits.
fn repository(commits: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "--template=", "."]);
    for n in 1..=commits {
        git(
            dir.path(),
            &["commit", "-q", "--allow-empty", "-m", &format!("c{n}")],
        );
    }
    dir
}

fn log_path(repo: &Path) -> PathBuf {
    repo.join(".git/gapprobe-bisect.log")
}

fn log_lines(repo: &Path) -> Vec<String> {
    std::fs::read_to_string(log_path(repo))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn failed_build_skips_and_the_summary_shows_the_step() {
    let repo = repository(1);
    let head = git(repo.path(), &["rev-parse", "--short", "HEAD"]);

    let output = gapprobe(repo.path())
        .args([
            "bisect-run",
            "--build",
            "false",
            "--repeat",
            "2",
            "--duration",
            "5s",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125), "{}", text(&output));
    let lines = log_lines(repo.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        words[1..4],
        [head.as_str(), "skip", "runs=0/2"],
        "{lines:?}"
    );
    assert!(lines[0].contains(" duration=5.000s "), "{lines:?}");
    assert!(
        lines[0].ends_with("reason=build failed: exit status: 1"),
        "{lines:?}"
    );

    let summary = gapprobe(repo.path())
        .args(["bisect-run", "--summary"])
        .output()
        .unwrap();
    assert_eq!(summary.status.code(), Some(0), "{}", text(&summary));
    let stdout = String::from_utf8_lossy(&summary.stdout);
    assert!(
        stdout.lines().any(|line| line == lines[0]),
        "{}",
        text(&summary)
    );
    assert!(
        stdout.contains("1 steps: 0 good, 0 bad, 1 skip, 0 abort"),
        "{}",
        text(&summary)
    );
    assert!(
        stdout.contains("no bad step in the log yet"),
        "{}",
        text(&summary)
    );
}

#[test]
fn summary_without_a_log_or_a_repository_is_one_clear_error() {
    let repo = repository(1);
    let output = gapprobe(repo.path())
        .args(["bisect-run", "--summary"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("gapprobe: error: no bisect-run log at "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let plain = tempfile::tempdir().unwrap();
    for (args, code) in [
        (&["bisect-run", "--summary"][..], 2),
        (
            &["bisect-run", "--build", "echo x"][..],
            EXIT_ABORT_BISECTION,
        ),
    ] {
        let output = gapprobe(plain.path())
            .env("GIT_CEILING_DIRECTORIES", plain.path().parent().unwrap())
            .args(args)
            .output()
            .unwrap();
        expect_exit(&output, code, "gapprobe: error: not in a git repository");
    }
}

#[test]
fn bad_usage_aborts_the_bisection() {
    let repo = repository(1);
    for args in [
        &["bisect-run", "--repeat", "0"][..],
        &["bisect-run", "--duration", "0s"],
        &["bisect-run", "--summary", "--repeat", "3"],
        &["bisect-run", "--summary", "--", "--max-gap", "1ms"],
        &["bisect-run", "--no-such-option"],
    ] {
        let output = gapprobe(repo.path()).args(args).output().unwrap();
        // 2 would make `git bisect run` mark the revision bad.
        assert_eq!(
            output.status.code(),
            Some(EXIT_ABORT_BISECTION),
            "{args:?}: {}",
            text(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("error: "),
            "{args:?}: {}",
            text(&output)
        );
    }
    assert!(
        log_lines(repo.path()).is_empty(),
        "usage errors are not steps"
    );
}

#[test]
fn a_run_with_bad_input_aborts_the_bisection() {
    let repo = repository(1);
    // The build "succeeds" with an image that does not exist: gapprobe vm exits 2.
    let output = gapprobe(repo.path())
        .args([
            "bisect-run",
            "--build",
            "echo /nonexistent/bzImage",
            "--repeat",
            "3",
        ])
        .args(["--duration", "1s", "--", "--max-gap", "1ms"])
        .output()
        .unwrap();
    // The run's command line is printed.
    let stderr = expect_exit(
        &output,
        EXIT_ABORT_BISECTION,
        "gapprobe vm --kernel /nonexistent/bzImage --duration 1s --json ",
    );
    assert!(
        stderr.contains("/nonexistent/bzImage: --kernel"),
        "{stderr}"
    );
    assert!(
        stderr.contains("aborting the bisection (exit 128)"),
        "{stderr}"
    );
    let lines = log_lines(repo.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" abort runs=1/3 "),
        "stops at the first run: {lines:?}"
    );
    assert!(
        lines[0].contains("reason=gapprobe vm exited 2"),
        "{lines:?}"
    );

    // Options gapprobe vm would refuse are refused before the (long) build runs.
    let output = gapprobe(repo.path())
        .args([
            "bisect-run",
            "--build",
            "touch built; echo x",
            "--",
            "--vcpus",
            "many",
        ])
        .output()
        .unwrap();
    expect_exit(
        &output,
        EXIT_ABORT_BISECTION,
        "gapprobe vm options after --: invalid value 'many'",
    );
    assert!(!repo.path().join("built").exists(), "the build ran");
    for ours in ["--kernel", "--json", "--duration"] {
        let output = gapprobe(repo.path())
            .args(["bisect-run", "--build", "echo x", "--", ours, "x"])
            .output()
            .unwrap();
        expect_exit(&output, EXIT_ABORT_BISECTION, "bisect-run sets --kernel");
    }
}

#[test]
fn build_without_an_image_path_aborts() {
    let repo = repository(1);
    let output = gapprobe(repo.path())
        .args(["bisect-run", "--build", "true"])
        .output()
        .unwrap();
    expect_exit(&output, EXIT_ABORT_BISECTION, "printed no image path");
}

#[test]
fn sigterm_during_the_build_is_passed_up_and_logged() {
    let repo = repository(1);
    let mut child = gapprobe(repo.path())
        .args(["bisect-run", "--build", "sleep 60; echo x"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it reach the build.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the build was not stopped: {:?}",
        started.elapsed()
    );
    let lines = log_lines(repo.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" abort runs=0/3 "), "{lines:?}");
    assert!(
        lines[0].ends_with("reason=interrupted by SIGTERM"),
        "{lines:?}"
    );
}

#[test]
fn git_bisect_run_stops_on_an_abort_without_marking_the_commit() {
    let repo = repository(5);
    git(repo.path(), &["bisect", "start", "HEAD", "HEAD~4"]);
    let tested = git(repo.path(), &["rev-parse", "HEAD"]);
    let gapprobe = env!("CARGO_BIN_EXE_gapprobe");
    let output = Command::new("git")
        .args([
            "bisect",
            "run",
            gapprobe,
            "bisect-run",
            "--build",
            "echo /nonexistent",
        ])
        .current_dir(repo.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bisect run failed"), "{}", text(&output));
    // Still on the same commit, and it was marked neither good nor bad.
    assert_eq!(git(repo.path(), &["rev-parse", "HEAD"]), tested);
    let bisect_log = git(repo.path(), &["bisect", "log"]);
    assert!(!bisect_log.contains(&tested), "{bisect_log}");
    assert_eq!(log_lines(repo.path()).len(), 1);
}

#[test]
fn a_damaged_log_costs_the_estimate_not_the_verdict() {
    let repo = repository(1);
    std::fs::write(log_path(repo.path()), "edited by hand\n").unwrap();
    let output = gapprobe(repo.path())
        .args(["bisect-run", "--build", "false"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: no miss-probability estimate: ") && stderr.contains("line 1"),
        "{stderr}"
    );
    assert_eq!(log_lines(repo.path()).len(), 2);
    let summary = gapprobe(repo.path())
        .args(["bisect-run", "--summary"])
        .output()
        .unwrap();
    assert_eq!(summary.status.code(), Some(2), "{}", text(&summary));
    assert!(
        String::from_utf8_lossy(&summary.stderr).contains("\"edited by hand\""),
        "{}",
        text(&summary)
    );
}
