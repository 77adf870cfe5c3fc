//! Dump benchmark: fills a private instance's buffers (sched, irq and timer events plus
//! trace_marker writes from one thread per CPU) until every CPU's ring buffer has wrapped, then
//! times, in the same run and alternating rounds, `cat trace > file` against an in-process
//! single-stream copy of `trace` with big reads and against `Instance::dump_to`. It checks that
//! the dump holds the same header and events as `cat`'s output, in time order, and prints a table.
//!
//! Usage (root): `cargo run --release -p tracefs --example dump_bench -- [MiB_PER_CPU] [ROUNDS]
//! [OUT_DIR]`, defaults 64, 3, /dev/shm.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tracefs::trace_text::parse_line;
use tracefs::{EventSpec, Instance, Marker, Tracefs};

const INSTANCE_PREFIX: &str = "gapprobe-bench-";
const EVENTS: &str = "sched,irq,timer";
/// Longest wait for the buffers to fill.
const FILL_TIMEOUT: Duration = Duration::from_secs(120);
/// Read size of the single-stream copy.
const SINGLE_STREAM_READ_BYTES: usize = 4 << 20;
const MIB: f64 = 1024.0 * 1024.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib_per_cpu: u64 = args.first().map_or(Ok(64), |a| a.parse())?;
    let rounds: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let out_dir = PathBuf::from(args.get(2).map_or("/dev/shm", String::as_str));

    let tracefs = Tracefs::open()?;
    tracefs.remove_stale_instances(INSTANCE_PREFIX)?;
    let instance =
        tracefs.create_instance(&Tracefs::instance_name_for_this_process(INSTANCE_PREFIX))?;
    instance.set_clock("mono")?;
    instance.set_buffer_kb(mib_per_cpu * 1024)?;
    instance.enable_events(&EventSpec::parse_list(EVENTS)?)?;
    instance.set_tracing_on(true)?;
    let marker = instance.marker()?;

    let fill_started = Instant::now();
    fill_until_every_cpu_wrapped(&instance, &marker)?;
    marker.stop()?;
    let header = read_header(&instance.path().join("trace"))?;
    println!(
        "buffer filled in {:.1} s: {mib_per_cpu} MiB per CPU, {EVENTS} + markers; {}",
        fill_started.elapsed().as_secs_f64(),
        header
            .lines()
            .find(|l| l.contains("entries-in-buffer"))
            .unwrap_or("")
            .trim_start_matches("# ")
    );

    let cat_out = out_dir.join("gapprobe-bench-cat");
    let single_out = out_dir.join("gapprobe-bench-single");
    let dump_out = out_dir.join("gapprobe-bench-dump");
    let trace = instance.path().join("trace");
    let mut results = [
        Method::new("cat trace > file"),
        Method::new("read(trace, 4 MiB) > file"),
        Method::new("Instance::dump_to"),
    ];
    for round in 0..rounds {
        let (started, cpu) = (Instant::now(), cpu_seconds(libc::RUSAGE_CHILDREN));
        let status = Command::new("cat")
            .arg(&trace)
            .stdout(Stdio::from(File::create(&cat_out)?))
            .status()?;
        if !status.success() {
            return Err(format!("cat {} failed: {status}", trace.display()).into());
        }
        let bytes = fs::metadata(&cat_out)?.len();
        results[0].record(started, cpu_seconds(libc::RUSAGE_CHILDREN) - cpu, bytes);

        let (started, cpu) = (Instant::now(), cpu_seconds(libc::RUSAGE_SELF));
        let bytes = copy_single_stream(&trace, &single_out)?;
        results[1].record(started, cpu_seconds(libc::RUSAGE_SELF) - cpu, bytes);

        let (started, cpu) = (Instant::now(), cpu_seconds(libc::RUSAGE_SELF));
        let report = instance.dump_to(&dump_out)?;
        if !report.is_complete() {
            return Err(format!("dump incomplete: {:?}", report.completeness).into());
        }
        results[2].record(started, cpu_seconds(libc::RUSAGE_SELF) - cpu, report.bytes);
        println!(
            "round {}: cat {:.3} s, single stream {:.3} s, dump_to {:.3} s (its report: {:.3} s)",
            round + 1,
            results[0].wall[round],
            results[1].wall[round],
            results[2].wall[round],
            report.duration.as_secs_f64()
        );
    }

    let cat_best = best(&results[0].wall);
    println!();
    println!(
        "{:<26} {:>11} {:>8} {:>8} {:>7} {:>10} {:>8}",
        "method", "bytes", "best s", "median s", "MiB/s", "CPU s(med)", "vs cat"
    );
    for method in &results {
        println!(
            "{:<26} {:>11} {:>8.3} {:>8.3} {:>7.1} {:>10.3} {:>8.2}",
            method.name,
            method.bytes,
            best(&method.wall),
            median(&method.wall),
            method.bytes as f64 / MIB / best(&method.wall),
            median(&method.cpu),
            best(&method.wall) / cat_best
        );
    }
    println!("(vs cat: best wall time divided by cat's best; below 1 is faster)");

    let verdict = compare_with_cat(&fs::read(&cat_out)?, &fs::read(&dump_out)?);
    println!();
    println!("dump vs cat: {verdict}");
    for path in [&cat_out, &single_out, &dump_out] {
        fs::remove_file(path)?;
    }
    drop(marker);
    instance.remove()?;
    Ok(())
}

/// One marker-writing thread pinned to each CPU plus a thread that sleeps 50 µs in a loop (for
/// sched_switch, wakeup and hrtimer events), until every CPU's buffer has overwritten events.
fn fill_until_every_cpu_wrapped(instance: &Instance, marker: &Marker) -> Result<(), BoxError> {
    let cpus = thread::available_parallelism()?.get();
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        for cpu in 0..cpus {
            let done = &done;
            scope.spawn(move || {
                pin_to_cpu(cpu);
                let mut text = [0u8; 64];
                let mut n: u64 = 0;
                while !done.load(Ordering::Relaxed) {
                    let mut cursor = &mut text[..];
                    let _ = write!(cursor, "gapprobe bench cpu {cpu} marker {n}");
                    let len = 64 - cursor.len();
                    if marker.mark(&text[..len]).is_err() {
                        break;
                    }
                    n += 1;
                }
            });
        }
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_micros(50));
            }
        });
        let started = Instant::now();
        let result = loop {
            thread::sleep(Duration::from_millis(100));
            match all_cpus_overran(instance.path(), cpus) {
                Ok(true) => break Ok(()),
                Ok(false) if started.elapsed() < FILL_TIMEOUT => {}
                Ok(false) => break Err("buffers did not fill in time".into()),
                Err(e) => break Err(e),
            }
        };
        done.store(true, Ordering::Relaxed);
        result
    })
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < CPU_SETSIZE, and a
    // failed sched_setaffinity only leaves the thread unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Reads `per_cpu/cpuN/stats`: `overrun:` counts events overwritten because the buffer was full.
fn all_cpus_overran(instance: &Path, cpus: usize) -> Result<bool, BoxError> {
    for cpu in 0..cpus {
        let stats = fs::read_to_string(instance.join(format!("per_cpu/cpu{cpu}/stats")))?;
        let overrun: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("overrun:"))
            .ok_or("no overrun line in stats")?
            .trim()
            .parse()?;
        if overrun == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_header(trace: &Path) -> Result<String, BoxError> {
    let mut first = vec![0u8; 64 * 1024];
    let n = File::open(trace)?.read(&mut first)?;
    let text = String::from_utf8_lossy(&first[..n]);
    Ok(text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The kernel's merged `trace` file copied with big reads in this process.
fn copy_single_stream(trace: &Path, out: &Path) -> Result<u64, BoxError> {
    let mut input = File::open(trace)?;
    let mut output = File::create(out)?;
    let mut buf = vec![0u8; SINGLE_STREAM_READ_BYTES];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        output.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Same header, same event lines, and both in time order. Two time-ordered texts with the same
/// lines can differ only in the order of lines that print the same microsecond (the kernel
/// orders those by nanoseconds, which the text does not show).
fn compare_with_cat(cat: &[u8], dump: &[u8]) -> String {
    fn header(text: &str) -> Vec<&str> {
        text.lines().take_while(|l| l.starts_with('#')).collect()
    }
    fn cpu_start_marks(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("##### CPU"))
            .collect()
    }
    fn events(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        lines.sort_unstable();
        lines
    }
    fn time_ordered(text: &str) -> bool {
        let timestamps: Vec<u64> = text
            .lines()
            .filter_map(parse_line)
            .map(|l| l.timestamp_ns)
            .collect();
        timestamps.windows(2).all(|w| w[0] <= w[1])
    }
    let cat = String::from_utf8_lossy(cat);
    let dump = String::from_utf8_lossy(dump);
    let same_header = header(&cat) == header(&dump);
    let same_marks = cpu_start_marks(&cat) == cpu_start_marks(&dump);
    let same_events = events(&cat) == events(&dump);
    let (cat_ordered, dump_ordered) = (time_ordered(&cat), time_ordered(&dump));
    let moved = cat
        .lines()
        .zip(dump.lines())
        .filter(|(a, b)| a != b)
        .count();
    format!(
        "same header: {same_header}, same `##### CPU N buffer started` marks: {same_marks}, \
         same event lines: {same_events} ({} lines), time-ordered: \
         dump {dump_ordered}, cat {cat_ordered}; byte-identical: {} ({moved} lines placed \
         differently among lines of the same microsecond)",
        dump.lines().count(),
        cat == dump
    )
}

/// Timings of one dump method over the rounds.
struct Method {
    name: &'static str,
    wall: Vec<f64>,
    cpu: Vec<f64>,
    bytes: u64,
}

impl Method {
    fn new(name: &'static str) -> Self {
        Method {
            name,
            wall: Vec::new(),
            cpu: Vec::new(),
            bytes: 0,
        }
    }

    fn record(&mut self, started: Instant, cpu_seconds: f64, bytes: u64) {
        self.wall.push(started.elapsed().as_secs_f64());
        self.cpu.push(cpu_seconds);
        self.bytes = bytes;
    }
}

/// User plus system CPU time of this process (all threads) or of its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
