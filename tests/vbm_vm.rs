//! Issue 4's virtual-bare-metal tests of `gapprobe vm`: inside T (Debian's cloud kernel under
//! QEMU TCG, with a real /dev/kvm from kvm-amd), `gapprobe vm` boots the same Debian kernel as
//! the kernel under test (L1) through our VMM, with gapprobe as its whole userspace.
//! scripts/guest/t-vm.sh runs each case and reports, from T's side, the exit status, stderr,
//! the dump file and the JSON result; everything is asserted here, outside.

#[allow(dead_code)] // shared helpers; these tests use a subset
#[path = "vbm_harness.rs"]
mod vbm_harness;

use std::sync::{Mutex, MutexGuard};

use vbm_harness::{run_in_t, workspace_root, TRun};

/// T boots in ~6 s and L1 reaches /init ~15-25 s later (measured); a gap run then takes
/// ~30 s more inside L1. Generous for a loaded CI machine.
const T_TIMEOUT_S: u32 = 300;
/// The kvm target: L1 boots (~45 s with 4 vCPUs), loads KVM, boots two L2 kernels (~60 s
/// with QEMU at both levels, DESIGN.md) and runs them for the rest of --duration.
const NESTED_T_TIMEOUT_S: u32 = 420;
/// Debian's KVM modules as scripts/vbm.sh puts them into T.
const T_MODULES: &str =
    "/lib/modules/vbm/irqbypass.ko,/lib/modules/vbm/kvm.ko,/lib/modules/vbm/kvm-amd.ko";
/// Small L1 trace buffers: allocating and freeing them is slow in an emulated L1, and the
/// tests only need the marker and some context.
const TEST_BUFFER_KB: &str = "2048";
/// The user-target cases boot L1 with one core x 2 threads: T has 2 CPUs, and four `idle=poll`
/// vCPUs floating on them made L1 miss a 120 s boot timeout on a loaded machine.
const USER_L1: &str = "--vcpus 2 --threads-per-core 2 --boot-timeout 200s";

/// One T at a time: two of them on the same CPUs would each take twice as long.
fn one_t_at_a_time() -> MutexGuard<'static, ()> {
    static T: Mutex<()> = Mutex::new(());
    T.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Runs `sh /etc/vbm/vm.sh NAME OPTIONS...` for each case in one T.
fn run_cases(cases: &[(&str, &str)], timeout_s: u32) -> TRun {
    let script = workspace_root().join("scripts/guest/t-vm.sh");
    let command = cases
        .iter()
        .map(|(name, options)| format!("sh /etc/vbm/vm.sh {name} {options}"))
        .collect::<Vec<_>>()
        .join("; ");
    run_in_t(
        &[],
        &[format!("{}=/etc/vbm/vm.sh", script.display())],
        &command,
        timeout_s,
    )
}

/// What t-vm.sh reported about one case.
struct Case<'a> {
    run: &'a TRun,
    name: &'a str,
}

impl<'a> Case<'a> {
    fn field(&self, key: &str) -> Option<&'a str> {
        self.run.after(&format!("VBM-VM-{key} {} ", self.name))
    }

    fn status(&self) -> Option<i32> {
        self.field("STATUS").and_then(|text| text.parse().ok())
    }

    fn stderr(&self) -> Vec<&'a str> {
        let marker = format!("VBM-VM-STDERR {} ", self.name);
        self.run
            .console
            .lines()
            .filter_map(|line| line.find(&marker).map(|at| &line[at + marker.len()..]))
            .collect()
    }

    /// A field of the --json result as t-vm.sh extracted it (JSON text: `"user"`, `true`).
    fn json_field(&self, key: &str) -> Option<&'a str> {
        self.run
            .after(&format!("VBM-VM-FIELD {} {key} ", self.name))
    }

    fn has_json(&self) -> bool {
        self.field("JSON").is_some_and(|text| text != "absent")
    }

    /// `bytes=N markers=M`, or None when the dump file is absent.
    fn dump(&self) -> Option<(u64, u64)> {
        let text = self.field("DUMP")?;
        let mut numbers = text
            .split_whitespace()
            .filter_map(|word| word.split_once('=').and_then(|(_, n)| n.parse().ok()));
        Some((numbers.next()?, numbers.next()?))
    }

    fn nothing_left_running(&self) {
        assert_eq!(
            self.field("LEFT"),
            Some("0"),
            "{}: gapprobe processes left in T\n{}",
            self.name,
            self.run.transcript()
        );
    }
}

#[test]
fn tiny_max_gap_finds_a_gap_and_the_marker_reaches_the_host_dump() {
    let _t = one_t_at_a_time();
    let options = format!("{USER_L1} --max-gap 1ms --buffer-kb {TEST_BUFFER_KB}");
    let run = run_cases(&[("gap", &options)], T_TIMEOUT_S);
    let transcript = run.transcript();
    let case = Case {
        run: &run,
        name: "gap",
    };
    assert_eq!(case.status(), Some(1), "exit status\n{transcript}");
    let (bytes, markers) = case.dump().expect("no dump file in T");
    assert!(
        markers >= 1,
        "no gapprobe: marker in the dump\n{transcript}"
    );
    assert!(case.has_json(), "no --json result\n{transcript}");
    assert_eq!(case.json_field("target"), Some("\"user\""), "{transcript}");
    assert_eq!(case.json_field("exceeded"), Some("true"), "{transcript}");
    // The host cut the JSON off: what is left is exactly the trace L1 dumped.
    assert_eq!(
        case.json_field("dump_bytes"),
        Some(bytes.to_string().as_str()),
        "{transcript}"
    );
    assert!(
        run.console.contains("result: gap of "),
        "no host result line\n{transcript}"
    );
    case.nothing_left_running();
}

#[test]
fn large_max_gap_and_short_duration_exit_0_with_16_threads_online() {
    let _t = one_t_at_a_time();
    let options = format!("{USER_L1} --max-gap 30s --duration 3s --buffer-kb {TEST_BUFFER_KB}");
    let run = run_cases(&[("clean", &options)], T_TIMEOUT_S);
    let transcript = run.transcript();
    let case = Case {
        run: &run,
        name: "clean",
    };
    assert_eq!(case.status(), Some(0), "exit status\n{transcript}");
    assert!(
        run.console
            .lines()
            .any(|line| line.starts_with("Max latency: ") && line.ends_with(", 16 online)")),
        "no `16 online` line relayed from L1\n{transcript}"
    );
    assert!(case.has_json(), "no --json result\n{transcript}");
    assert_eq!(case.json_field("exceeded"), Some("false"), "{transcript}");
    assert_eq!(
        case.dump(),
        None,
        "no trace: the dump file the host created must be gone\n{transcript}"
    );
    case.nothing_left_running();
}

#[test]
#[ignore = "known failure, issue 4: with two L2 guests, L1 crashes (triple fault) or T soft-locks under our VMM (see README, kvm target); run with --ignored"]
fn nested_starts_two_real_l2_kernels_and_relays_their_lines() {
    let _t = one_t_at_a_time();
    // Two L1 vCPUs: T has two CPUs, and four idle=poll vCPUs on them leave the L2s a
    // quarter of the machine (their kernels did not reach userspace in 90 s that way).
    let options = format!(
        "--nested --l2-vms 2 --vcpus 2 --modules {T_MODULES} --max-gap 10s --duration 120s \
         --boot-timeout 240s"
    );
    let run = run_cases(&[("nested", &options)], NESTED_T_TIMEOUT_S);
    let transcript = run.transcript();
    let case = Case {
        run: &run,
        name: "nested",
    };
    assert!(
        matches!(case.status(), Some(0 | 1)),
        "exit status (0 no gap, 1 gap)\n{transcript}"
    );
    for vm in 0..2 {
        let relayed = format!("vm{vm}: #");
        assert!(
            run.console
                .lines()
                .any(|line| line.starts_with(&relayed) && line.contains("inner/outer(us): ")),
            "no hwlat line relayed from L2 vm{vm}\n{transcript}"
        );
        assert!(
            run.console
                .lines()
                .any(|line| line.starts_with(&format!("vm{vm}: ")) && line.contains(" gaps over ")),
            "no per-VM summary for vm{vm}\n{transcript}"
        );
    }
    assert!(case.has_json(), "no --json result\n{transcript}");
    assert_eq!(
        case.json_field("target"),
        Some("\"nested\""),
        "{transcript}"
    );
    assert_eq!(case.json_field("l2_vms"), Some("2"), "{transcript}");
    case.nothing_left_running();
}

#[test]
fn bad_input_and_broken_kernels_give_one_line_and_the_documented_code() {
    let _t = one_t_at_a_time();
    let run = run_cases(
        &[
            // No /init where the kernel looks: it panics (cannot mount a root fs).
            (
                "panic",
                "--append rdinit=/nonexistent --max-gap 30s --duration 3s",
            ),
            // L1 cannot reach /init this fast under emulation: stopped, reported as SKIP.
            ("hang", "--boot-timeout 2s --max-gap 30s --duration 3s"),
            ("no-l2-kernel", "--nested --l2-kernel /nonexistent"),
            ("too-small", "--mem 40M"),
            ("not-a-module", "--modules /etc/vbm/command"),
        ],
        T_TIMEOUT_S,
    );
    let transcript = run.transcript();
    let case = |name| Case { run: &run, name };

    for (name, reason) in [
        ("panic", "SKIP: L1 kernel panic: "),
        (
            "hang",
            "SKIP: L1's /init printed nothing within --boot-timeout 2s",
        ),
    ] {
        let case = case(name);
        assert_eq!(
            case.status(),
            Some(125),
            "{name}: exit status\n{transcript}"
        );
        assert!(
            case.stderr().iter().any(|line| line.starts_with(reason)),
            "{name}: no {reason:?} line\n{transcript}"
        );
        assert_eq!(case.dump(), None, "{name}: dump file left\n{transcript}");
        assert!(!case.has_json(), "{name}: --json written\n{transcript}");
        case.nothing_left_running();
    }
    for (name, needle) in [
        ("no-l2-kernel", "/nonexistent: --l2-kernel"),
        ("too-small", "--mem 40M is too small"),
        (
            "not-a-module",
            "/etc/vbm/command: --modules: not an uncompressed kernel module",
        ),
    ] {
        let case = case(name);
        assert_eq!(case.status(), Some(2), "{name}: exit status\n{transcript}");
        let stderr = case.stderr();
        assert_eq!(stderr.len(), 1, "{name}: one line wanted: {stderr:?}");
        assert!(stderr[0].contains(needle), "{name}: {:?}", stderr[0]);
        assert_eq!(case.dump(), None, "{name}: dump file left\n{transcript}");
        case.nothing_left_running();
    }
}
