//! The kvm target with our VMM at both levels, in the virtual bare metal: inside T,
//! `gapprobe boot --nested` boots the kernel under test as L1 (2 vCPUs, one core x 2 threads)
//! with gapprobe as /init in the `nested` role; L1 starts L2s (gapprobe as /init in the
//! `hwlat` role) through l1-harness, relays their lines and leaves its JSON result (and,
//! after a gap, its trace) in the dump region. Both levels run Debian's kernel, whose KVM
//! modules L1 loads first (the distribution-kernel path), or the kernel built with
//! kernels/gapprobe.config (KVM built in, core scheduling, the hwlat tracer).
//! scripts/guest/t-nested.sh does T's part; everything is asserted here.

#[allow(dead_code)] // shared helpers; this test uses a subset
#[path = "vbm_harness.rs"]
mod vbm_harness;

use std::sync::Mutex;

use serde_json::Value;
use vbm_harness::{built_kernel, run_in_t, workspace_root, TRun};

/// Both runs keep T's two emulated CPUs busy: one at a time.
static ONE_T_AT_A_TIME: Mutex<()> = Mutex::new(());

/// L1's own limit inside T (`gapprobe boot --timeout`) and T's hard limit around it. With a
/// 2-vCPU L1 an L2 reached its hwlat role 10-40 s after L1 started and a 45 s run powered off
/// after about 50 s (measured; slower when the host is shared), so these only end runs that
/// went wrong, such as one hit by T's emulation fault (README, "The virtual bare metal").
const L1_TIMEOUT: &str = "100s";
const T_TIMEOUT_S: u32 = 180;

/// How long L1 lets the relay tests' two L2s run (booting included). Runs of 45 s gave 21-31
/// samples per VM; 30 s left Debian's L2s without a sample. The longer a run, the likelier
/// T's emulation fault hits it.
const RELAY_DURATION: &str = "45s";

/// L1's vCPUs: one core x 2 threads. T has two CPUs; four `idle=poll` vCPUs on them left the
/// L2s a quarter of the machine.
const L1_VCPUS: u32 = 2;

/// Runs the kvm target in T: `vms` L2s, L1's `--duration` and `--max-gap`, more L1 options.
/// `built`: L1 and the L2s run the kernel built with our fragment, else Debian's (L1 with
/// its KVM modules).
fn nested_run(built: bool, vms: u32, duration: &str, max_gap: &str, more: &str) -> TRun {
    let _serial = ONE_T_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let script = workspace_root().join("scripts/guest/t-nested.sh");
    let mut adds = vec![format!("{}=/etc/vbm/nested.sh", script.display())];
    let mut env = format!("VCPUS={L1_VCPUS}");
    if built {
        adds.push(format!("{}=/kernel-under-test", built_kernel().display()));
        env.push_str(" KERNEL=/kernel-under-test L2_KERNEL=/kernel-under-test");
    }
    run_in_t(
        &[],
        &adds,
        &format!("{env} sh /etc/vbm/nested.sh {vms} {duration} {max_gap} {L1_TIMEOUT} {more}"),
        T_TIMEOUT_S,
    )
}

/// L1 powered off cleanly after its nested role printed `gapprobe-exit: <exit>`.
fn l1_powered_off_after(run: &TRun, exit: u8) {
    let transcript = run.transcript();
    assert_eq!(
        run.after("VBM-NESTED-BOOT-STATUS"),
        Some("0"),
        "L1 did not power off cleanly\n{transcript}"
    );
    let exit_line = format!("gapprobe-exit: {exit}");
    assert!(
        run.console.lines().any(|line| line == exit_line),
        "the nested role did not end with {exit_line:?}\n{transcript}"
    );
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
fn l1_runs_two_l2s_through_our_vmm_and_relays_their_hwlat_lines() {
    // Debian's kernels have no CONFIG_SCHED_CORE: L1 places the L2s without cookies, and
    // the L2s (no hwlat tracer either) sample with gapprobe's own detector.
    let run = two_l2s_relay_their_hwlat_lines(false, "none");
    assert!(
        !run.console.contains("core-sched cookies"),
        "cookies reported without core scheduling\n{}",
        run.transcript()
    );
}

#[test]
fn built_kernel_as_l1_runs_two_l2s_with_core_scheduling_cookies() {
    // The built kernel has CONFIG_SCHED_CORE and L1 sees SMT pairs: each L2's vCPU pair
    // gets a real cookie. The L2s run it too (the --l2-kernel default), with its hwlat tracer.
    let run = two_l2s_relay_their_hwlat_lines(true, "prctl");
    let transcript = run.transcript();
    let cookies: Vec<String> = (0..2)
        .map(|vm| {
            let pair = start_line(&run, vm)
                .split_once(", core-sched cookies ")
                .map(|(_, cookies)| cookies)
                .unwrap_or_else(|| panic!("vm{vm}: no cookies reported\n{transcript}"));
            let (first, second) = pair
                .split_once(',')
                .unwrap_or_else(|| panic!("vm{vm}: not two cookies: {pair}"));
            assert_eq!(first, second, "vm{vm}'s vCPU threads do not share a cookie");
            assert_ne!(first, "0x0", "vm{vm}'s vCPU threads have no cookie");
            first.to_string()
        })
        .collect();
    assert_ne!(cookies[0], cookies[1], "the two VMs share a cookie");
    for vm in 0..2 {
        assert!(
            relayed(&run, vm).contains(&"hwlat: ready (kernel tracer)"),
            "vm{vm} did not use the built kernel's hwlat tracer\n{transcript}"
        );
    }
}

/// L1's `nested: vmN started, vCPU threads ...` line, from "vCPU threads" on.
fn start_line(run: &TRun, vm: usize) -> &str {
    let started = format!("nested: vm{vm} started, ");
    run.console
        .lines()
        .find_map(|line| line.strip_prefix(&started))
        .unwrap_or_else(|| panic!("no start line for vm{vm}\n{}", run.transcript()))
}

/// Two L2s under L1 (`built`: both run the kernel built with our fragment, else Debian's):
/// both boot, are placed on L1's core with `core_sched` cookies, and every hwlat line they
/// print reaches the host and L1's JSON result. Returns the run for more checks.
fn two_l2s_relay_their_hwlat_lines(built: bool, core_sched: &str) -> TRun {
    // --max-gap 10s: this run is about booting and relaying, not about finding a gap.
    let run = nested_run(built, 2, RELAY_DURATION, "10s", "");
    let transcript = run.transcript();
    l1_powered_off_after(&run, 0);

    let placed = format!("nested: 2 L2 VMs x 2 vCPUs on CPUs 0-1, core scheduling {core_sched},");
    assert!(
        run.console.lines().any(|line| line.starts_with(&placed)),
        "no {placed:?} line from L1\n{transcript}"
    );
    let json = nested_json(&run);
    assert_eq!(json["schema"], 1, "{json}");
    assert_eq!(json["target"], "nested", "{json}");
    assert_eq!(json["l2_vms"], 2, "{json}");
    assert_eq!(json["end"], "duration", "{json}");
    assert_eq!(json["exceeded"], false, "{json}");
    assert!(json["trace"].is_null(), "{json}");
    for vm in 0..2 {
        let placement = start_line(&run, vm);
        assert!(
            placement.starts_with("vCPU threads ") && placement.contains(" on CPUs 0-1"),
            "vm{vm}'s vCPU threads are not on L1's core: {placement}"
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
    run
}

#[test]
fn a_sample_over_max_gap_marks_and_dumps_l1s_trace() {
    // Every reported sample is over the L2 threshold (10 us), so over 1 us: the first one
    // ends the run. A small buffer keeps the dump short under emulation.
    let run = nested_run(false, 1, "90s", "1us", "--buffer-kb 1024");
    let transcript = run.transcript();
    l1_powered_off_after(&run, 1);
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
