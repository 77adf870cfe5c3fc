//! The kvm target with our VMM at both levels, in the virtual bare metal: inside T,
//! `gapprobe boot --nested` boots Debian's kernel as L1 (4 vCPUs, 2 cores x 2 threads) with
//! gapprobe as /init in the `nested` role; L1 loads Debian's KVM modules and starts L2s
//! (Debian's kernel again, gapprobe as /init in the `hwlat` role) through l1-harness, relays
//! their lines and leaves its JSON result (and, after a gap, its trace) in the dump region.
//! scripts/guest/t-nested.sh does T's part; everything is asserted here.

#[allow(dead_code)] // shared helpers; this test uses a subset
#[path = "vbm_harness.rs"]
mod vbm_harness;

use std::sync::Mutex;

use serde_json::Value;
use vbm_harness::{run_in_t, workspace_root, TRun};

/// Both runs keep T's two emulated CPUs busy: one at a time.
static ONE_T_AT_A_TIME: Mutex<()> = Mutex::new(());

/// L1's own limit inside T (`gapprobe boot --timeout`) and T's hard limit around it. An L2
/// reaches userspace about 2-4 minutes after T starts (TCG under two levels of KVM, slower
/// when the host is shared), so L1's `--duration` must leave the L2s time to sample.
const L1_TIMEOUT: &str = "500s";
const T_TIMEOUT_S: u32 = 650;

/// Runs the kvm target in T: `vms` L2s, L1's `--duration` and `--max-gap`, more L1 options.
fn nested_run(vms: u32, duration: &str, max_gap: &str, more: &str) -> TRun {
    let script = workspace_root().join("scripts/guest/t-nested.sh");
    run_in_t(
        &[],
        &[format!("{}=/etc/vbm/nested.sh", script.display())],
        &format!("sh /etc/vbm/nested.sh {vms} {duration} {max_gap} {L1_TIMEOUT} {more}"),
        T_TIMEOUT_S,
    )
}

fn nested_json(run: &TRun) -> Value {
    let text = run
        .after("VBM-NESTED-JSON")
        .unwrap_or_else(|| panic!("no JSON result in the dump file\n{}", run.transcript()));
    serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("JSON result {text:?}: {err}\n{}", run.transcript()))
}

/// Console lines L1 relayed from VM `vm` (without the `vm<i>: ` prefix).
fn relayed(run: &TRun, vm: usize) -> Vec<&str> {
    let prefix = format!("vm{vm}: ");
    run.console
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .collect()
}

fn is_hwlat_sample(line: &str) -> bool {
    line.starts_with('#') && line.contains(" inner/outer(us): ") && line.contains(" ts:")
}

#[test]
#[ignore = "known failure, issue 4: with two L2 guests, L1 crashes (triple fault) or T soft-locks under our VMM (see README, kvm target); run with --ignored"]
fn l1_runs_two_l2s_through_our_vmm_and_relays_their_hwlat_lines() {
    let _serial = ONE_T_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    // --max-gap 10s: this run is about booting and relaying, not about finding a gap.
    let run = nested_run(2, "330s", "10s", "");
    let transcript = run.transcript();
    assert_eq!(
        run.after("VBM-NESTED-BOOT-STATUS"),
        Some("0"),
        "L1 did not power off cleanly\n{transcript}"
    );
    assert!(
        run.console.lines().any(|line| line == "gapprobe-exit: 0"),
        "the nested role did not exit 0\n{transcript}"
    );

    let json = nested_json(&run);
    assert_eq!(json["schema"], 1, "{json}");
    assert_eq!(json["target"], "nested", "{json}");
    assert_eq!(json["l2_vms"], 2, "{json}");
    assert_eq!(json["end"], "duration", "{json}");
    assert_eq!(json["exceeded"], false, "{json}");
    assert!(json["trace"].is_null(), "{json}");
    for vm in 0..2 {
        let started = format!("nested: vm{vm} started, vCPU threads ");
        let placement = run
            .console
            .lines()
            .find_map(|line| line.strip_prefix(&started))
            .unwrap_or_else(|| panic!("no start line for vm{vm}\n{transcript}"));
        assert!(
            placement.ends_with(" on CPUs 2-3"),
            "vm{vm}'s vCPU threads are not on L1's second core: {placement}"
        );

        let lines = relayed(&run, vm);
        assert!(
            lines.iter().any(|line| line.starts_with("hwlat: ready")),
            "vm{vm} never reached its hwlat role\n{transcript}"
        );
        let samples = lines.iter().filter(|line| is_hwlat_sample(line)).count();
        assert!(samples > 0, "no hwlat sample from vm{vm}\n{transcript}");
        let result = &json["vms"][vm];
        assert_eq!(result["vm"], vm, "{json}");
        assert_eq!(result["booted"], true, "{json}");
        assert_eq!(
            result["samples"], samples,
            "vm{vm}: the JSON counts what L1 relayed\n{json}"
        );
        assert!(result["exit"].is_null(), "vm{vm} ended early: {json}");
    }
}

#[test]
#[ignore = "not yet reliable, issue 4: passed 1 of 1 run with one L2, but L1 under our VMM crashed in both two-L2 runs (see README, kvm target); run with --ignored"]
fn a_sample_over_max_gap_marks_and_dumps_l1s_trace() {
    let _serial = ONE_T_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    // Every reported sample is over the L2 threshold (10 us), so over 1 us: the first one
    // ends the run. A small buffer keeps the dump short under emulation.
    let run = nested_run(1, "400s", "1us", "--buffer-kb 1024");
    let transcript = run.transcript();
    assert_eq!(
        run.after("VBM-NESTED-BOOT-STATUS"),
        Some("0"),
        "L1 did not power off cleanly\n{transcript}"
    );
    assert!(
        run.console.lines().any(|line| line == "gapprobe-exit: 1"),
        "the nested role did not report the gap with exit 1\n{transcript}"
    );
    let json = nested_json(&run);
    assert_eq!(json["end"], "exceeded", "{json}");
    assert_eq!(json["exceeded"], true, "{json}");
    assert_eq!(json["trigger"]["vm"], 0, "{json}");
    let samples: Vec<&str> = relayed(&run, 0)
        .into_iter()
        .filter(|line| is_hwlat_sample(line))
        .collect();
    assert_eq!(
        samples.len(),
        1,
        "the run goes on past the first sample\n{transcript}"
    );
    // The trigger is that sample's larger latency.
    let pair = samples[0]
        .split(" inner/outer(us): ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pair| pair.split_once('/'))
        .expect("inner/outer pair");
    let larger_us: u64 = pair.0.parse::<u64>().unwrap().max(pair.1.parse().unwrap());
    assert_eq!(json["trigger"]["gap_ns"], larger_us * 1000, "{json}");

    let trace = &json["trace"];
    let dump_bytes = trace["dump_bytes"].as_u64().expect("trace.dump_bytes");
    assert!(dump_bytes > 0, "{json}");
    assert!(
        run.console
            .lines()
            .any(|line| line.starts_with(&format!("gapprobe-dump: trace={dump_bytes} json="))),
        "the dump line and the JSON disagree on the trace size\n{transcript}"
    );
    assert_eq!(
        run.after("VBM-NESTED-TRACE-MARKERS"),
        Some("1"),
        "the marker is not in the dumped trace\n{transcript}"
    );
}
