//! Benchmark of the user target against its baselines, all measured in this one run:
//!
//! 1. cost of one loop iteration: gapprobe's detector, a bare `rdtsc; cmp; max` loop, and
//!    oslat (Debian rt-tests), each alone on the same CPU;
//! 2. an injected 50 ms stall: the gap each tool reports against the off-CPU time that ftrace
//!    (sched_switch, in our own trace instance) shows for the probing thread.
//!
//! Run as root: `cargo bench -p gapprobe --bench user_target`. Prints a table and ratios;
//! asserts nothing (timing claims do not belong in pass/fail tests).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{gapprobe, inject_stall, other_cpu, probe_cpu, require_root};
use tracefs::{trace_text, EventSpec, Tracefs};

const LOOP_SECONDS: u64 = 3;
const STALL: Duration = Duration::from_millis(50);

fn pin_and_renice(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    // SAFETY: plain syscall on this thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) };
}

/// ns per iteration of the cheapest loop that still finds gaps: read, compare, keep the max.
fn bare_rdtsc_loop(cpu: usize) -> f64 {
    std::thread::spawn(move || {
        pin_and_renice(cpu);
        let start = Instant::now();
        let mut iterations = 0u64;
        let mut max = 0u64;
        // SAFETY: RDTSC has no preconditions in user space on Linux.
        let mut prev = unsafe { core::arch::x86_64::_rdtsc() };
        while start.elapsed() < Duration::from_secs(LOOP_SECONDS) {
            for _ in 0..4096 {
                // SAFETY: as above.
                let now = unsafe { core::arch::x86_64::_rdtsc() };
                max = max.max(now.wrapping_sub(prev));
                prev = now;
            }
            iterations += 4096;
        }
        black_box(max);
        start.elapsed().as_nanos() as f64 / iterations as f64
    })
    .join()
    .unwrap()
}

fn gapprobe_args(cpu: usize, max_gap: &str, seconds: u64, json: &std::path::Path) -> Vec<String> {
    let args = format!(
        "--cpus {cpu} --groups 1 --threads-per-group 1 --busy 1h --max-sleep 0 --nice -20 \
         --no-trace --core-sched off --quiet --max-gap {max_gap} --duration {seconds}s --json"
    );
    let mut args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    args.push(json.display().to_string());
    args
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn gapprobe_loop(cpu: usize, dir: &std::path::Path) -> f64 {
    let json = dir.join("loop.json");
    let status = gapprobe()
        .args(gapprobe_args(cpu, "10s", LOOP_SECONDS, &json))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let thread = &read_json(&json)["threads"][0];
    thread["busy_ns"].as_f64().unwrap() / thread["samples"].as_f64().unwrap()
}

fn oslat_command(cpu: usize, seconds: u64, json: &std::path::Path) -> Command {
    let mut command = Command::new("oslat");
    command
        .args([
            "--cpu-list",
            &cpu.to_string(),
            "--duration",
            &seconds.to_string(),
            "--quiet",
        ])
        .arg(format!("--json={}", json.display()))
        .stdout(std::process::Stdio::null());
    command
}

/// oslat's loop cost: its run time divided by the iterations its histogram counted.
fn oslat_loop(cpu: usize, dir: &std::path::Path) -> f64 {
    let json = dir.join("oslat-loop.json");
    assert!(oslat_command(cpu, LOOP_SECONDS, &json)
        .status()
        .unwrap()
        .success());
    let thread = &read_json(&json)["thread"]["0"];
    let iterations: u64 = thread["histogram"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    thread["duration"].as_f64().unwrap() * 1e9 / iterations as f64
}

/// The busiest task of a process: its probing thread.
fn busiest_task(pid: u32) -> u32 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let after_comm = stat.rsplit_once(") ")?.1;
            let utime: u64 = after_comm.split_whitespace().nth(11)?.parse().ok()?;
            Some((utime, tid))
        })
        .max()
        .unwrap()
        .1
}

/// How long the thread was off the CPU across `at` (CLOCK_MONOTONIC ns), from the bench's own
/// sched_switch trace.
fn off_cpu_at(trace: &str, tid: u32, at: u64) -> u64 {
    trace_text::off_cpu_intervals(trace, tid)
        .iter()
        .find(|interval| {
            interval.switched_out_ns <= at && interval.switched_in_ns.is_some_and(|end| end >= at)
        })
        .and_then(|interval| interval.duration_ns())
        .unwrap_or(0)
}

/// Runs `command` (a probe on `cpu`), injects a stall 1.5 s in, and returns what the probe
/// reported (read by `reported` from its JSON) and the off-CPU time ftrace saw.
fn stall_case(
    cpu: usize,
    dir: &std::path::Path,
    name: &str,
    mut command: Command,
    reported: impl Fn() -> u64,
) -> (u64, u64) {
    let tracefs = Tracefs::open().unwrap();
    let instance = tracefs
        .create_instance(&format!("gapprobe-bench-{}-{name}", std::process::id()))
        .unwrap();
    instance.set_clock("mono").unwrap();
    instance
        .enable_events(&EventSpec::parse_list("sched:sched_switch").unwrap())
        .unwrap();
    instance.set_tracing_on(true).unwrap();
    let mut child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let tid = busiest_task(child.id());
    let stall = inject_stall(cpu, other_cpu(cpu), STALL, Duration::from_millis(10));
    // The stall starts 10 ms from now and lasts 50: its middle is well inside.
    let during = clock_mono_ns() + 10_000_000 + STALL.as_nanos() as u64 / 2;
    stall.join().unwrap();
    let _ = child.wait();
    instance.set_tracing_on(false).unwrap();
    let dump = dir.join(format!("{name}.trace"));
    instance.dump_to(&dump).unwrap();
    instance.remove().unwrap();
    let trace = fs::read_to_string(&dump).unwrap();
    (reported(), off_cpu_at(&trace, tid, during))
}

fn clock_mono_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn main() {
    require_root();
    let cpu = probe_cpu();
    let dir = tempfile::tempdir().unwrap();
    println!("gapprobe user-target benchmark on CPU {cpu} ({LOOP_SECONDS} s per loop measurement)");

    let bare = bare_rdtsc_loop(cpu);
    let ours = gapprobe_loop(cpu, dir.path());
    let oslat = oslat_loop(cpu, dir.path());
    println!("\nloop cost          ns/iteration   x bare rdtsc loop");
    for (name, ns) in [
        ("bare rdtsc loop", bare),
        ("gapprobe", ours),
        ("oslat", oslat),
    ] {
        println!("{name:<18} {ns:>12.2}   {:>8.2}", ns / bare);
    }

    let gap_json = dir.path().join("stall.json");
    let mut ours_command = gapprobe();
    ours_command.args(gapprobe_args(cpu, "30ms", 4, &gap_json));
    let (ours_reported, ours_off) = stall_case(cpu, dir.path(), "gapprobe", ours_command, || {
        read_json(&gap_json)["trigger"]["gap_ns"].as_u64().unwrap()
    });
    let oslat_json = dir.path().join("oslat-stall.json");
    let (oslat_reported, oslat_off) = stall_case(
        cpu,
        dir.path(),
        "oslat",
        oslat_command(cpu, 3, &oslat_json),
        || {
            read_json(&oslat_json)["thread"]["0"]["max"]
                .as_u64()
                .unwrap()
                * 1_000
        },
    );
    println!(
        "\ninjected {} ms stall   reported ms   off-CPU ms (ftrace)   reported - off-CPU   ratio\n\
         (oslat reports only its run's maximum, in whole microseconds)",
        STALL.as_millis()
    );
    for (name, reported, off) in [
        ("gapprobe", ours_reported, ours_off),
        ("oslat", oslat_reported, oslat_off),
    ] {
        println!(
            "{name:<22} {:>11.3}   {:>19.3}   {:>15.1} us   {:.4}",
            reported as f64 / 1e6,
            off as f64 / 1e6,
            (reported as f64 - off as f64) / 1e3,
            reported as f64 / off.max(1) as f64
        );
    }
}
