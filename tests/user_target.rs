//! End-to-end tests of the user target on this machine, as root: real threads, the real
//! tracefs, a real stall injected by a SCHED_FIFO 99 thread on the probed CPU.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::{
    gapprobe, inject_stall, other_cpu, probe_cpu, read_json, require_root, serial,
    single_thread_args, TracingState, Watched,
};

/// `common::single_thread_args` with a threshold, a 30 s limit and both output files.
fn stall_target_args(
    cpu: usize,
    max_gap: &str,
    json: &std::path::Path,
    dump: &std::path::Path,
) -> Vec<String> {
    let mut args = single_thread_args(cpu);
    for arg in [
        "--max-gap",
        max_gap,
        "--duration",
        "30s",
        "--json",
        json.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ] {
        args.push(arg.to_string());
    }
    args
}

#[test]
fn injected_stall_stops_the_run_and_the_trace_holds_the_marker() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (json, dump) = (dir.path().join("result.json"), dir.path().join("log"));
    let before = TracingState::capture();
    let cpu = probe_cpu();

    let mut run = Watched::spawn(&stall_target_args(cpu, "30ms", &json, &dump));
    run.wait_for_line("Max latency", Duration::from_secs(10));
    let stall = Duration::from_millis(50);
    let spun = inject_stall(cpu, other_cpu(cpu), stall, Duration::ZERO)
        .join()
        .unwrap();
    let status = run.wait(Duration::from_secs(20));

    assert_eq!(
        status,
        Some(1),
        "a gap over --max-gap exits 1\n{}",
        run.output()
    );
    let result = read_json(&json);
    assert_eq!(result["exceeded"], true);
    let gap_ns = result["trigger"]["gap_ns"].as_u64().unwrap();
    // The thread is off the CPU for the whole spin plus two context switches; on a shared
    // 2-CPU machine another task may run before it gets the CPU back, so allow 25 ms above.
    let spun_ns = spun.as_nanos() as u64;
    assert!(
        gap_ns >= spun_ns - 500_000 && gap_ns <= spun_ns + 25_000_000,
        "reported gap {gap_ns} ns for a {spun_ns} ns stall\n{}",
        run.output()
    );
    assert!(run
        .output()
        .contains(&format!("diff: {}ms", gap_ns / 1_000_000)));
    let logged = result["gaps"].as_array().unwrap();
    assert!(
        logged
            .iter()
            .any(|gap| gap["gap_ns"].as_u64() == Some(gap_ns)),
        "the gap is in gaps[]: {logged:?}"
    );
    assert_eq!(result["trace"]["dump_complete"], true, "{}", run.output());

    let text = fs::read_to_string(&dump).expect("trace dump");
    assert!(text.contains("gapprobe: "), "marker missing from the dump");
    assert!(
        text.contains("sched_switch"),
        "sched events missing from the dump"
    );
    let mode = fs::metadata(&dump).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    TracingState::capture().assert_same_as(&before);
}

#[test]
fn watchdog_reports_a_stall_while_it_lasts() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (json, dump) = (dir.path().join("result.json"), dir.path().join("log"));
    let cpu = probe_cpu();

    let mut run = Watched::spawn(&stall_target_args(cpu, "50ms", &json, &dump));
    run.wait_for_line("Max latency", Duration::from_secs(10));
    // 600 ms: far longer than the threshold, shorter than RT throttling lets a FIFO spinner run.
    let stall_over = Arc::new(AtomicBool::new(false));
    let injector = {
        let stall_over = stall_over.clone();
        std::thread::spawn(move || {
            let spun = inject_stall(
                cpu,
                other_cpu(cpu),
                Duration::from_millis(600),
                Duration::ZERO,
            )
            .join()
            .unwrap();
            stall_over.store(true, Ordering::SeqCst);
            spun
        })
    };
    run.wait_for_line("watchdog: ", Duration::from_secs(5));
    let reported_during_stall = !stall_over.load(Ordering::SeqCst);
    let spun = injector.join().unwrap();
    let status = run.wait(Duration::from_secs(20));

    assert!(
        reported_during_stall,
        "the watchdog spoke only after the stall\n{}",
        run.output()
    );
    assert_eq!(status, Some(1), "{}", run.output());
    let result = read_json(&json);
    assert_eq!(result["trigger"]["kind"], "stall");
    assert_eq!(result["trigger"]["unfinished"], false);
    let gap_ns = result["trigger"]["gap_ns"].as_u64().unwrap();
    let spun_ns = spun.as_nanos() as u64;
    assert!(
        gap_ns >= spun_ns - 500_000 && gap_ns <= spun_ns + 25_000_000,
        "gap {gap_ns} ns for a {spun_ns} ns stall\n{}",
        run.output()
    );
}

/// Ctrl-C and `kill`: stop, restore tracing, print the summary, write the JSON, exit 128+N.
fn signal_stops_cleanly_and_restores_tracing(signal: Signal) {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let before = TracingState::capture();

    let mut run = Watched::spawn(&[
        "--max-gap".into(),
        "10s".into(),
        "--json".into(),
        json.to_str().unwrap().into(),
    ]);
    run.wait_for_line("Max latency", Duration::from_secs(10));
    assert!(
        TracingState::capture().instances.len() > before.instances.len(),
        "the run has its own trace instance"
    );
    run.signal(signal);
    let status = run.wait(Duration::from_secs(10));

    let number = signal as i32;
    assert_eq!(status, Some(128 + number), "{}", run.output());
    assert!(run
        .output()
        .contains(&format!("result: interrupted by signal {number}")));
    let result = read_json(&json);
    assert_eq!(result["end"], "signal");
    assert_eq!(result["signal"], number);
    assert_eq!(result["threads"].as_array().unwrap().len(), 16);
    TracingState::capture().assert_same_as(&before);
}

#[test]
fn sigint_stops_cleanly_and_restores_tracing() {
    signal_stops_cleanly_and_restores_tracing(Signal::SIGINT);
}

#[test]
fn sigterm_stops_cleanly_and_restores_tracing() {
    signal_stops_cleanly_and_restores_tracing(Signal::SIGTERM);
}

#[test]
fn default_run_has_sixteen_threads_online() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let mut run = Watched::spawn(&[
        "--max-gap".into(),
        "10s".into(),
        "--duration".into(),
        "3s".into(),
        "--busy".into(),
        "300ms".into(),
        "--max-sleep".into(),
        "200ms".into(),
        "--json".into(),
        json.to_str().unwrap().into(),
    ]);
    let status = run.wait(Duration::from_secs(20));
    assert_eq!(status, Some(0), "{}", run.output());
    assert!(run.output().contains(" 16 online)"), "{}", run.output());
    let result = read_json(&json);
    assert_eq!(result["exceeded"], false);
    let threads = result["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 16);
    let groups: std::collections::BTreeSet<u64> = threads
        .iter()
        .map(|t| t["group"].as_u64().unwrap())
        .collect();
    assert_eq!(groups.len(), 8);
    for thread in threads {
        assert!(thread["samples"].as_u64().unwrap() > 0, "{thread}");
        assert!(thread["busy_ns"].as_u64().unwrap() > 0, "{thread}");
    }
    assert!(result["tsc_hz"].as_u64().unwrap() > 100_000_000);
}

#[test]
fn stale_instances_of_crashed_runs_are_removed() {
    require_root();
    let _serial = serial();
    let before = TracingState::capture();
    // No process has PID 2^31-1 (pid_max is at most 2^22): a run that crashed.
    let stale = before.root.join("instances/gapprobe-2147483647");
    fs::create_dir(&stale).expect("mkdir a trace instance");
    let mut run = Watched::spawn(&[
        "--duration".into(),
        "1s".into(),
        "--max-gap".into(),
        "10s".into(),
        "--groups".into(),
        "1".into(),
    ]);
    let status = run.wait(Duration::from_secs(20));
    assert_eq!(status, Some(0), "{}", run.output());
    assert!(!stale.exists(), "stale instance left behind");
}

#[test]
fn no_trace_runs_without_tracefs() {
    let _serial = serial();
    let mut run = Watched::spawn(&[
        "--no-trace".into(),
        "--duration".into(),
        "1s".into(),
        "--max-gap".into(),
        "10s".into(),
        "--groups".into(),
        "2".into(),
        "--core-sched".into(),
        "off".into(),
    ]);
    assert_eq!(
        run.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        run.output()
    );
    assert!(run.output().contains("result: no gap over 10000.000 ms"));
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--max-gap", "soon"], "--max-gap"),
        (&["--max-gap", "0s"], "greater than zero"),
        (&["--cpus", "3-1"], "backwards"),
        (&["--cpus", "4095"], "not online"),
        (&["--groups", "0"], "--groups"),
        (
            &["--events", "nosuchsystem", "--duration", "1s"],
            "nosuchsystem",
        ),
        (&["--core-sched", "sometimes"], "--core-sched"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, expected) in cases {
        let output = gapprobe().args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        let first_line = stderr.lines().next().unwrap_or_default();
        assert!(first_line.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_explains_the_defaults() {
    let output = gapprobe().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--max-gap",
        "100ms",
        "--core-sched",
        "Exit codes",
        "/dev/shm/log",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}
