//! The `nested` role: L1 of the kvm target. L1 becomes the VMM of `--l2-vms` L2 guests (two
//! vCPUs each, started 0.1-0.3 s apart as schedgaps does), all vCPU threads on one L1 core's
//! two CPUs, each VM's pair sharing one core-scheduling cookie. Each L2 runs the hwlat role;
//! L1 relays its lines as `vm<i>: <line>`, keeps per-VM statistics, and on a sample over
//! `--max-gap` marks and stops its own trace, then puts the trace and the JSON result into
//! the dump region. `--duration` counts from the start of this role (L2 boots included).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use l1_harness::host_topology::{format_cpulist, parse_cpulist, HostTopology};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::dump_region::Region;
use super::l2_vm::{self, CookieSource, L2Launch, NestedEvent, L2_INITRD, L2_KERNEL, L2_VCPUS};
use super::nested_result::{
    NestedResult, NestedTrace, NestedTrigger, NESTED_SCHEMA_VERSION, NESTED_TARGET,
};
use super::role_args;
use super::vm_stats::VmStats;
use crate::boot::parse_size;
use crate::cli::{parse_positive_duration, CpuList};
use crate::coresched::{self, CoreSchedInterface, LegacyGroups};
use crate::detector::trigger::TraceStopper;
use crate::detector::worker::set_affinity;
use crate::exit::{EXIT_CLEAN, EXIT_FAILED, EXIT_USAGE};
use crate::report::ms;
use crate::trace_session::TraceSession;

/// The one-line answer when L1 cannot run guests.
pub const NO_KVM_MESSAGE: &str =
    "L1 kernel has no KVM: build it with kernels/ fragment or pass --modules";
const DEV_KVM: &str = "/dev/kvm";
/// The L2s' hwlat settings: the tracer's defaults (busy half of every second) and
/// schedgaps' 10 µs threshold.
const L2_WIDTH: Duration = Duration::from_millis(500);
const L2_WINDOW: Duration = Duration::from_secs(1);
const L2_THRESHOLD: Duration = Duration::from_micros(10);
/// Start-to-start delay between two L2s, as schedgaps: uniform in 0.1-0.3 s, fixed seed.
const STAGGER_MS: std::ops::RangeInclusive<u64> = 100..=300;
const STAGGER_SEED: u64 = 5;
/// How long a started VM may take to show its vCPU threads.
const VCPU_THREAD_WAIT: Duration = Duration::from_secs(5);
/// How often the watch loop looks at the clock while no L2 says anything.
const EVENT_POLL: Duration = Duration::from_secs(1);
/// Room kept in the dump region for the JSON's own length change when the trace is cut.
const JSON_SLACK_BYTES: usize = 64;

/// The role's arguments (`gapprobe.args=` of L1), as the host's `gapprobe vm --nested` passes them.
#[derive(Debug, Clone, Parser)]
#[command(name = "nested")]
pub struct NestedArgs {
    /// Number of L2 guests.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub l2_vms: u32,
    /// Memory of each L2, e.g. 256M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_l2_mem)]
    pub l2_mem: u64,
    /// An L2 sample over this ends the run: L1's trace marked, stopped and dumped, exit 1.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_positive_duration)]
    pub max_gap: Duration,
    /// Stop after this long without such a gap (exit 0), counted from L1's start of the role.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Trace events of L1's private instance (`system` or `system:event`, comma separated).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "sched,irq,timer,kvm",
        value_delimiter = ','
    )]
    pub events: Vec<String>,
    /// Per-CPU trace buffer of L1's instance, in KiB.
    #[arg(long, value_name = "KB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_kb: u64,
    /// L1 CPUs of every L2 vCPU thread [default: the SMT pair of the first core that is not
    /// CPU 0's; without SMT, the last two CPUs].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub l2_vcpu_cpus: Option<CpuList>,
}

impl NestedArgs {
    pub fn parse_words(words: &[String]) -> anyhow::Result<Self> {
        role_args::parse("nested", words)
    }
}

/// `--l2-mem`: a size as the VMM's `--mem` takes it (`256M`, `1G`), not zero.
fn parse_l2_mem(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err("an L2 needs memory".to_string()),
        bytes => Ok(bytes),
    }
}

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    match parse_cpulist(text) {
        Ok(cpus) if cpus.is_empty() => Err("an empty CPU list".to_string()),
        Ok(cpus) => Ok(CpuList(cpus)),
        Err(err) => Err(err.to_string()),
    }
}

/// The L2 command line of the contract: the hwlat role with the tracer's settings.
pub fn l2_cmdline() -> String {
    format!(
        "quiet tsc=reliable gapprobe.role=hwlat gapprobe.args=\"--width {} --window {} --threshold {}\"",
        humantime::format_duration(L2_WIDTH),
        humantime::format_duration(L2_WINDOW),
        humantime::format_duration(L2_THRESHOLD),
    )
}

/// How the watch ended.
enum RunEnd {
    Duration,
    Exceeded(NestedTrigger),
    /// Every L2 ended (or none started) before the run did: nothing left to measure.
    AllEnded,
}

impl RunEnd {
    fn name(&self) -> &'static str {
        match self {
            RunEnd::Duration => "duration",
            RunEnd::Exceeded(_) => "exceeded",
            RunEnd::AllEnded => "error",
        }
    }

    fn code(&self) -> u8 {
        match self {
            RunEnd::Duration => EXIT_CLEAN,
            RunEnd::Exceeded(_) => EXIT_FAILED,
            RunEnd::AllEnded => EXIT_USAGE,
        }
    }
}

/// Runs the role: 0 no gap over --max-gap by --duration, 1 gap, 2 every L2 ended early.
pub fn run(words: &[String], region: Option<Region>) -> anyhow::Result<u8> {
    let started = Instant::now();
    let args = NestedArgs::parse_words(words)?;
    if !Path::new(DEV_KVM).exists() {
        bail!(NO_KVM_MESSAGE);
    }
    check_l2_images()?;
    let topology = HostTopology::from_host().context("L1's CPUs")?;
    let cpus = topology
        .select_cpus(args.l2_vcpu_cpus.as_ref().map(|list| list.0.as_slice()))
        .context("--l2-vcpu-cpus (L1's CPUs)")?;
    // Relaying, statistics and the trace dump run beside the L2s, not on their CPUs.
    let others: Vec<usize> = topology
        .online_cpus()
        .iter()
        .copied()
        .filter(|cpu| !cpus.contains(cpu))
        .collect();
    if !others.is_empty() {
        set_affinity(&others).context("moving L1's init off the L2 CPUs")?;
    }
    let (cookie, core_sched) = core_sched_source(args.l2_vms as usize)?;
    let (trace, stopper) = TraceSession::start(&args.events, args.buffer_kb)?;
    println!(
        "nested: {} L2 VMs x {L2_VCPUS} vCPUs on CPUs {}, core scheduling {core_sched}, max gap {}",
        args.l2_vms,
        format_cpulist(&cpus),
        ms(duration_ns(args.max_gap))
    );

    let (events, received) = channel();
    let mut stats: Vec<VmStats> = (0..args.l2_vms).map(|_| VmStats::default()).collect();
    let l2s = start_l2s(&args, &cpus, &cookie, &events, &mut stats);
    // The VM and relay threads hold the other senders: when all are gone, so are the L2s.
    drop(events);
    let end = watch(&args, started, &received, &mut stats, stopper.as_ref());
    let elapsed = started.elapsed();
    report_silent_l2s(&stats, &l2s);
    stop_l2s(l2s);
    // The marker's files must close before the instance can be removed.
    drop(stopper);

    let mut trace_text = Vec::new();
    let trace_result = match &end {
        RunEnd::Exceeded(_) => {
            // Formatting the trace is slow under emulation: say what L1 is doing meanwhile.
            println!("nested: dumping L1's trace");
            let dumping = Instant::now();
            let dump = trace.dump(Some(Path::new(super::GUEST_TRACE)));
            println!(
                "nested: trace dumped: {} bytes in {:.1} s",
                dump.dump_bytes,
                dumping.elapsed().as_secs_f64()
            );
            if let Some(error) = &dump.dump_error {
                println!("nested: note: trace dump: {error}");
            }
            trace_text = std::fs::read(super::GUEST_TRACE).unwrap_or_default();
            Some(NestedTrace {
                dump_bytes: trace_text.len() as u64,
                dump_complete: dump.dump_complete,
            })
        }
        _ => None,
    };
    let mut result = build_result(&args, &end, elapsed, &stats, trace_result);
    print_end(&end, &result, elapsed);
    match region {
        Some(region) => {
            let json = fit_into_region(&region, &mut trace_text, &mut result)?;
            super::publish_dump(&region, &trace_text, &json)?;
        }
        None => println!("nested: note: no gapprobe.dump= region: the result stays in L1"),
    }
    Ok(end.code())
}

fn build_result(
    args: &NestedArgs,
    end: &RunEnd,
    elapsed: Duration,
    stats: &[VmStats],
    trace: Option<NestedTrace>,
) -> NestedResult {
    NestedResult {
        schema: NESTED_SCHEMA_VERSION,
        target: NESTED_TARGET.to_string(),
        kernel: nix::sys::utsname::uname()
            .map(|uts| uts.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        l2_vms: args.l2_vms,
        max_gap_ns: duration_ns(args.max_gap),
        elapsed_ns: duration_ns(elapsed),
        exceeded: matches!(end, RunEnd::Exceeded(_)),
        end: end.name().to_string(),
        trigger: match end {
            RunEnd::Exceeded(trigger) => Some(*trigger),
            _ => None,
        },
        vms: stats
            .iter()
            .enumerate()
            .map(|(vm, stats)| stats.result(vm))
            .collect(),
        trace,
    }
}

fn duration_ns(duration: Duration) -> u64 {
    duration.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Both L2 images must be in L1's initramfs (the host puts them there).
fn check_l2_images() -> anyhow::Result<()> {
    for (path, what) in [(L2_KERNEL, "L2 kernel"), (L2_INITRD, "L2 initramfs")] {
        std::fs::File::open(path)
            .with_context(|| format!("{what} {path} (the host puts it into L1's initramfs)"))?;
    }
    Ok(())
}

/// The cookie interface L1's kernel offers, with the legacy cgroups made; running without
/// cookies is a note (Debian's kernels have no CONFIG_SCHED_CORE).
fn core_sched_source(vms: usize) -> anyhow::Result<(CookieSource, &'static str)> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    match coresched::detect(&mounts) {
        Ok(CoreSchedInterface::Prctl) => Ok((CookieSource::Prctl, "prctl")),
        Ok(CoreSchedInterface::LegacyCgroup { cpu_root, file }) => {
            coresched::remove_stale_cgroups(&cpu_root);
            let groups = LegacyGroups::create(&cpu_root, file, vms)?;
            Ok((CookieSource::Legacy(Arc::new(groups)), file))
        }
        Err(reason) => {
            println!("nested: note: no core-scheduling cookies: {reason}");
            Ok((CookieSource::None, "none"))
        }
    }
}

/// A started L2 and the L1 threads running its vCPUs.
struct StartedL2 {
    vm: l2_vm::RunningL2,
    vcpu_threads: Vec<i32>,
}

/// Starts the L2s one after the other and reports where each one's vCPU threads landed;
/// returns the started ones (None for an L2 that could not start), in VM order.
fn start_l2s(
    args: &NestedArgs,
    cpus: &[usize],
    cookie: &CookieSource,
    events: &std::sync::mpsc::Sender<NestedEvent>,
    stats: &mut [VmStats],
) -> Vec<Option<StartedL2>> {
    let mut started = Vec::new();
    let cmdline = l2_cmdline();
    let mut rng = SmallRng::seed_from_u64(STAGGER_SEED);
    let mut known_vcpu_threads = BTreeSet::new();
    let count = stats.len();
    for (index, vm_stats) in stats.iter_mut().enumerate() {
        let launch = L2Launch {
            index,
            cmdline: &cmdline,
            mem_bytes: args.l2_mem,
            cpus,
            cookie,
            events: events.clone(),
        };
        match l2_vm::start(launch) {
            Ok(vm) => {
                let vcpu_threads = l2_vm::wait_for_new_vcpu_threads(
                    &mut known_vcpu_threads,
                    L2_VCPUS as usize,
                    VCPU_THREAD_WAIT,
                );
                println!(
                    "nested: vm{index} started, {}",
                    describe_placement(&vcpu_threads, cookie)
                );
                started.push(Some(StartedL2 { vm, vcpu_threads }));
            }
            Err(err) => {
                println!("nested: vm{index} not started: {err:#}");
                vm_stats.set_exit("error");
                started.push(None);
            }
        }
        if index + 1 < count {
            std::thread::sleep(Duration::from_millis(rng.random_range(STAGGER_MS)));
        }
    }
    started
}

/// Stops every L2 and waits for its vCPU threads. Dumping or removing L1's trace and writing
/// the dump region need every L1 CPU to answer IPIs, which vCPU threads in KVM_RUN on the
/// L2 CPUs delayed by minutes in the virtual bare metal: they must be gone first.
fn stop_l2s(l2s: Vec<Option<StartedL2>>) {
    let stopping = Instant::now();
    let l2s: Vec<StartedL2> = l2s.into_iter().flatten().collect();
    for l2 in &l2s {
        l2.vm.stop();
    }
    let count = l2s.len();
    for l2 in l2s {
        l2.vm.join();
    }
    println!(
        "nested: {count} L2 VMs stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
}

/// For each L2 still running that never reached its hwlat role: what its vCPU threads did
/// (spinning in the boot, or waiting).
fn report_silent_l2s(stats: &[VmStats], l2s: &[Option<StartedL2>]) {
    for (vm, (stats, l2)) in stats.iter().zip(l2s).enumerate() {
        let result = stats.result(vm);
        let Some(l2) = l2 else { continue };
        if result.booted || result.exit.is_some() {
            continue;
        }
        let threads: Vec<String> = l2
            .vcpu_threads
            .iter()
            .map(|&tid| l2_vm::thread_cpu_summary(tid))
            .collect();
        println!(
            "nested: vm{vm} never reached its hwlat role; vCPU threads: {}",
            threads.join(", ")
        );
    }
}

/// `vCPU threads 301,302 on CPUs 2-3`, from what the kernel says about each thread, and with
/// prctl cookies `, core-sched cookies 0x5e1f,0x5e1f` (PR_SCHED_CORE_GET per thread).
fn describe_placement(tids: &[i32], cookie: &CookieSource) -> String {
    if tids.len() < L2_VCPUS as usize {
        return format!(
            "warning: found {} of its {L2_VCPUS} vCPU threads within {VCPU_THREAD_WAIT:?}",
            tids.len()
        );
    }
    let list = tids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let masks: BTreeSet<String> = tids
        .iter()
        .map(|&tid| match l2_vm::thread_affinity(tid) {
            Ok(cpus) => format_cpulist(&cpus),
            Err(err) => format!("unknown ({err})"),
        })
        .collect();
    let masks: Vec<String> = masks.into_iter().collect();
    let mut placement = format!("vCPU threads {list} on CPUs {}", masks.join(" / "));
    // The prctl's view of each thread's cookie: equal within a VM, different across VMs.
    if matches!(cookie, CookieSource::Prctl) {
        let cookies: Vec<String> = tids
            .iter()
            .map(|&tid| match coresched::prctl_get(tid) {
                Ok(value) => format!("{value:#x}"),
                Err(err) => format!("unknown ({err})"),
            })
            .collect();
        placement.push_str(&format!(", core-sched cookies {}", cookies.join(",")));
    }
    placement
}

/// Relays L2 lines and keeps statistics until a gap over --max-gap, --duration, or the end
/// of every L2.
fn watch(
    args: &NestedArgs,
    started: Instant,
    received: &Receiver<NestedEvent>,
    stats: &mut [VmStats],
    stopper: &dyn TraceStopper,
) -> RunEnd {
    let deadline = args.duration.map(|duration| started + duration);
    let max_gap_ns = duration_ns(args.max_gap);
    let threshold_ns = duration_ns(L2_THRESHOLD);
    if stats.iter().all(VmStats::has_ended) {
        return RunEnd::AllEnded;
    }
    loop {
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(EVENT_POLL),
                _ => return RunEnd::Duration,
            },
            None => EVENT_POLL,
        };
        match received.recv_timeout(wait) {
            Ok(NestedEvent::Line(vm, line)) => {
                println!("vm{vm}: {line}");
                let Some(sample) = stats[vm].on_line(&line, threshold_ns) else {
                    continue;
                };
                if sample.gap_ns() > max_gap_ns {
                    let marker = format!("gapprobe: vm{vm} gap of {}", ms(sample.gap_ns()));
                    stopper.mark_and_stop(marker.as_bytes());
                    return RunEnd::Exceeded(NestedTrigger {
                        vm,
                        gap_ns: sample.gap_ns(),
                    });
                }
            }
            Ok(NestedEvent::Ended(vm, exit, detail)) => {
                println!("nested: vm{vm} ended: {exit}: {detail}");
                stats[vm].set_exit(exit);
                if stats.iter().all(VmStats::has_ended) {
                    return RunEnd::AllEnded;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return RunEnd::AllEnded,
        }
    }
}

fn print_end(end: &RunEnd, result: &NestedResult, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let worst = result.vms.iter().max_by_key(|vm| vm.worst_gap_ns);
    let worst = worst.map_or("no samples".to_string(), |vm| {
        format!("worst gap {} (vm{})", ms(vm.worst_gap_ns), vm.vm)
    });
    match end {
        RunEnd::Duration => println!("nested: no gap over the max after {seconds:.1} s, {worst}"),
        RunEnd::Exceeded(trigger) => println!(
            "nested: vm{} gap of {} after {seconds:.1} s",
            trigger.vm,
            ms(trigger.gap_ns)
        ),
        RunEnd::AllEnded => println!("nested: every L2 ended after {seconds:.1} s, {worst}"),
    }
}

/// Serialises the result, first cutting the trace (and saying so in the JSON) when both do
/// not fit the dump region.
fn fit_into_region(
    region: &Region,
    trace: &mut Vec<u8>,
    result: &mut NestedResult,
) -> anyhow::Result<Vec<u8>> {
    let json = serde_json::to_vec(result).context("serialising the nested result")?;
    let room = (region.size as usize).saturating_sub(json.len() + JSON_SLACK_BYTES);
    if trace.len() <= room {
        return Ok(json);
    }
    println!(
        "nested: note: trace cut to {room} of {} bytes (dump region too small)",
        trace.len()
    );
    trace.truncate(room);
    if let Some(info) = result.trace.as_mut() {
        info.dump_bytes = room as u64;
        info.dump_complete = false;
    }
    serde_json::to_vec(result).context("serialising the nested result")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cmdline;
    use crate::guest::hwlat::HwlatArgs;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_l1_command_line_of_the_contract() {
        let args = NestedArgs::parse_words(&words(
            "--l2-vms 2 --l2-mem 512M --max-gap 20ms --duration 60s --events sched,kvm --buffer-kb 1024 --l2-vcpu-cpus 2,3",
        ))
        .unwrap();
        assert_eq!(args.l2_vms, 2);
        assert_eq!(args.l2_mem, 512 << 20);
        assert_eq!(args.max_gap, Duration::from_millis(20));
        assert_eq!(args.duration, Some(Duration::from_secs(60)));
        assert_eq!(args.events, ["sched", "kvm"]);
        assert_eq!(args.buffer_kb, 1024);
        assert_eq!(args.l2_vcpu_cpus.unwrap().0, [2, 3]);

        let defaults =
            NestedArgs::parse_words(&words("--l2-vms 8 --l2-mem 1G --max-gap 100ms")).unwrap();
        assert_eq!(defaults.l2_mem, 1 << 30);
        assert_eq!(defaults.duration, None);
        assert_eq!(defaults.events, ["sched", "irq", "timer", "kvm"]);
        assert!(defaults.l2_vcpu_cpus.is_none());
    }

    #[test]
    fn bad_l1_arguments_are_one_line_errors() {
        for (text, needle) in [
            ("--l2-vms 0", "--l2-vms"),
            ("--l2-mem 12X", "--l2-mem"),
            ("--l2-mem 0G", "needs memory"),
            ("--max-gap 0s", "--max-gap"),
            ("--l2-vcpu-cpus 3-1", "--l2-vcpu-cpus"),
            ("--width 1s", "--width"),
        ] {
            let err = NestedArgs::parse_words(&words(text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert_eq!(err.lines().count(), 1, "{text}: {err}");
        }
    }

    #[test]
    fn l2_command_line_runs_the_hwlat_role_as_the_contract_says() {
        let line = l2_cmdline();
        assert_eq!(
            line,
            r#"quiet tsc=reliable gapprobe.role=hwlat gapprobe.args="--width 500ms --window 1s --threshold 10us""#
        );
        assert_eq!(cmdline::value(&line, "role").as_deref(), Some("hwlat"));
        let args = cmdline::args(&cmdline::value(&line, "args").unwrap());
        let hwlat = HwlatArgs::parse_words(&args).unwrap();
        assert_eq!(
            (hwlat.width, hwlat.window, hwlat.threshold),
            (L2_WIDTH, L2_WINDOW, L2_THRESHOLD)
        );
    }

    fn sample_result() -> NestedResult {
        NestedResult {
            schema: NESTED_SCHEMA_VERSION,
            target: NESTED_TARGET.to_string(),
            kernel: String::new(),
            l2_vms: 1,
            max_gap_ns: 1,
            elapsed_ns: 1,
            exceeded: true,
            end: "exceeded".to_string(),
            trigger: None,
            vms: Vec::new(),
            trace: Some(NestedTrace {
                dump_bytes: 10_000,
                dump_complete: true,
            }),
        }
    }

    #[test]
    fn a_trace_too_large_for_the_region_is_cut_and_marked_incomplete() {
        let region = Region {
            address: 0,
            size: 4096,
        };
        let mut trace = vec![b'x'; 10_000];
        let mut result = sample_result();
        let json = fit_into_region(&region, &mut trace, &mut result).unwrap();
        assert!(trace.len() + json.len() <= 4096);
        let info = result.trace.unwrap();
        assert_eq!(info.dump_bytes, trace.len() as u64);
        assert!(!info.dump_complete);
        let back: NestedResult = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.trace, Some(info));

        let mut small = vec![b'x'; 100];
        let mut fits = sample_result();
        fits.trace.as_mut().unwrap().dump_bytes = 100;
        fit_into_region(&region, &mut small, &mut fits).unwrap();
        assert_eq!(small.len(), 100);
        assert!(fits.trace.unwrap().dump_complete);
    }

    struct RecordingStopper(std::sync::Mutex<Vec<String>>);

    impl TraceStopper for RecordingStopper {
        fn mark_and_stop(&self, marker: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(marker).into_owned());
        }
    }

    fn hwlat_line(seq: u64, us: u64) -> String {
        format!("#{seq} inner/outer(us): {us}/1 ts:1700000000.000000000")
    }

    #[test]
    fn watch_marks_the_trace_on_the_first_sample_over_max_gap() {
        let args = NestedArgs::parse_words(&words("--l2-vms 2 --max-gap 20ms")).unwrap();
        let (events, received) = channel();
        events
            .send(NestedEvent::Line(
                0,
                "hwlat: ready (gapprobe, 2 cpus)".into(),
            ))
            .unwrap();
        events
            .send(NestedEvent::Line(0, hwlat_line(1, 15)))
            .unwrap();
        events
            .send(NestedEvent::Line(1, hwlat_line(1, 20_001)))
            .unwrap();
        events
            .send(NestedEvent::Line(0, hwlat_line(2, 90_000)))
            .unwrap();
        let mut stats: Vec<VmStats> = (0..2).map(|_| VmStats::default()).collect();
        let stopper = RecordingStopper(Default::default());
        let end = watch(&args, Instant::now(), &received, &mut stats, &stopper);
        match end {
            RunEnd::Exceeded(trigger) => {
                assert_eq!(
                    trigger,
                    NestedTrigger {
                        vm: 1,
                        gap_ns: 20_001_000
                    }
                )
            }
            _ => panic!("expected a gap, got {}", end.name()),
        }
        assert_eq!(
            *stopper.0.lock().unwrap(),
            ["gapprobe: vm1 gap of 20.001 ms"]
        );
        assert_eq!(stats[0].result(0).samples, 1, "stops at the trigger");
    }

    #[test]
    fn watch_ends_at_duration_or_when_every_l2_ended() {
        let args = NestedArgs::parse_words(&words("--l2-vms 2 --duration 50ms")).unwrap();
        let (events, received) = channel();
        let mut stats: Vec<VmStats> = (0..2).map(|_| VmStats::default()).collect();
        let stopper = RecordingStopper(Default::default());
        let begun = Instant::now();
        let end = watch(&args, begun, &received, &mut stats, &stopper);
        assert!(matches!(end, RunEnd::Duration));
        assert!(begun.elapsed() >= Duration::from_millis(50));

        let forever = NestedArgs::parse_words(&words("--l2-vms 2")).unwrap();
        events
            .send(NestedEvent::Ended(0, "panic", "Kernel panic".into()))
            .unwrap();
        events
            .send(NestedEvent::Ended(1, "poweroff", "powered off".into()))
            .unwrap();
        let end = watch(&forever, Instant::now(), &received, &mut stats, &stopper);
        assert!(matches!(end, RunEnd::AllEnded));
        assert_eq!(end.code(), EXIT_USAGE);
        assert_eq!(stats[0].result(0).exit.as_deref(), Some("panic"));
        assert!(stopper.0.lock().unwrap().is_empty());
    }
}
