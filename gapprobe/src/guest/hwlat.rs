//! The `hwlat` role: what each L2 guest of the kvm target runs. With the kernel's hwlat
//! tracer it configures the tracer and relays its samples; without it (Debian's kernels) it
//! does the same measurement in userspace: busy `--width` of every `--window` on one CPU,
//! round robin over the CPUs, each sample two TSC reads, and one hwlat-format line per window
//! whose largest latency is over `--threshold`. The lines go to the console, where L1 reads
//! them. The role runs until `--duration`, or until L1 tears the guest down.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use l1_harness::host_topology::HostTopology;
use nix::time::ClockId;

use super::hwlat_line::HwlatSample;
use super::role_args;
use crate::cli::{parse_duration, parse_positive_duration};
use crate::detector::worker::set_affinity;
use crate::tsc::{self, clock_ns, TscRate};

/// The tracer's name in `available_tracers`.
const HWLAT_TRACER: &str = "hwlat";
/// Long enough for a few-ppm TSC calibration, short against an L2's boot.
const CALIBRATION_WINDOW: Duration = Duration::from_millis(200);
/// The userspace sampler's priority: above everything else in the guest, as close to the
/// tracer's interrupts-off loop as userspace gets.
const SAMPLER_FIFO_PRIORITY: i32 = 99;
/// How often the kernel-tracer relay looks at the clock while trace_pipe is quiet.
const RELAY_POLL: Duration = Duration::from_secs(1);
const NSEC_PER_USEC: u64 = 1_000;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The role's arguments (`gapprobe.args=` of an L2), named as the hwlat tracer's files.
#[derive(Debug, Clone, Parser)]
#[command(name = "hwlat")]
pub struct HwlatArgs {
    /// Busy time of each window.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_positive_duration)]
    pub width: Duration,
    /// Period of the windows.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub window: Duration,
    /// Report a window whose largest inner or outer latency exceeds this.
    #[arg(long, value_name = "DUR", default_value = "10us", value_parser = parse_duration)]
    pub threshold: Duration,
    /// Stop after this long (default: run until the guest is torn down).
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
}

impl HwlatArgs {
    pub fn parse_words(words: &[String]) -> anyhow::Result<Self> {
        let args: Self = role_args::parse("hwlat", words)?;
        if args.width >= args.window {
            bail!(
                "gapprobe.args: --width {:?} must be shorter than --window {:?}",
                args.width,
                args.window
            );
        }
        Ok(args)
    }
}

/// The largest latencies of one window, in TSC ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowMax {
    /// Between the two reads of one sample.
    pub inner: u64,
    /// Between the second read of a sample and the first of the next.
    pub outer: u64,
}

/// hwlat's sampling loop (kernel/trace/trace_hwlat.c, get_sample) on a clock `read`: pairs
/// of reads until `width` ticks have passed. A clock stepping back gives no negative latency.
pub fn sample_window(mut read: impl FnMut() -> u64, width: u64) -> WindowMax {
    let start = read();
    let mut max = WindowMax::default();
    let mut last_t2: Option<u64> = None;
    loop {
        let t1 = read();
        let t2 = read();
        if let Some(last) = last_t2 {
            max.outer = max.outer.max(t1.saturating_sub(last));
        }
        max.inner = max.inner.max(t2.saturating_sub(t1));
        last_t2 = Some(t2);
        if t2.saturating_sub(start) > width {
            return max;
        }
    }
}

/// Runs the role; its exit status is 0 (the L2 only reports, L1 judges).
pub fn run(words: &[String]) -> anyhow::Result<u8> {
    let args = HwlatArgs::parse_words(words)?;
    let tracefs = tracefs::Tracefs::open().ok();
    let tracer_root = tracefs
        .as_ref()
        .map(|tracefs| tracefs.root().to_path_buf())
        .filter(|root| has_hwlat_tracer(root));
    match tracer_root {
        Some(root) => kernel_tracer(&root, &args)?,
        None => userspace_sampler(&args)?,
    }
    Ok(0)
}

fn has_hwlat_tracer(root: &Path) -> bool {
    fs::read_to_string(root.join("available_tracers"))
        .is_ok_and(|tracers| tracers.split_whitespace().any(|name| name == HWLAT_TRACER))
}

/// Prints a sample and waits until the UART has sent it, so that the console interrupts
/// of this line cannot land in the next busy window.
fn report(sample: &HwlatSample) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{sample}");
    let _ = stdout.flush();
    let _ = nix::sys::termios::tcdrain(&stdout);
}

fn micros(duration: Duration) -> u64 {
    (duration.as_nanos() / u128::from(NSEC_PER_USEC)).min(u128::from(u64::MAX)) as u64
}

fn write_tracefs(root: &Path, file: &str, value: &str) -> anyhow::Result<()> {
    let path = root.join(file);
    fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// The kernel's tracer: width/window (µs; the kernel insists width < window after each
/// write, so the order depends on the current values), tracing_thresh (µs), then the relay.
fn kernel_tracer(root: &Path, args: &HwlatArgs) -> anyhow::Result<()> {
    let width = micros(args.width).to_string();
    let window = micros(args.window).to_string();
    let current_width: u64 = fs::read_to_string(root.join("hwlat_detector/width"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(u64::MAX);
    if micros(args.window) > current_width {
        write_tracefs(root, "hwlat_detector/window", &window)?;
        write_tracefs(root, "hwlat_detector/width", &width)?;
    } else {
        write_tracefs(root, "hwlat_detector/width", &width)?;
        write_tracefs(root, "hwlat_detector/window", &window)?;
    }
    write_tracefs(root, "tracing_thresh", &micros(args.threshold).to_string())?;
    write_tracefs(root, "current_tracer", HWLAT_TRACER)?;
    write_tracefs(root, "tracing_on", "1")?;
    println!("hwlat: ready (kernel tracer)");

    let pipe_path = root.join("trace_pipe");
    let pipe =
        fs::File::open(&pipe_path).with_context(|| format!("opening {}", pipe_path.display()))?;
    let (lines, received) = channel();
    // trace_pipe blocks until there is data; a reader thread lets the relay keep time.
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = args.duration.map(|duration| Instant::now() + duration);
    loop {
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) => left.min(RELAY_POLL),
                None => break,
            },
            None => RELAY_POLL,
        };
        match received.recv_timeout(wait) {
            Ok(line) => {
                if let Some(sample) = HwlatSample::parse(&line) {
                    report(&sample);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("{} closed", pipe_path.display()),
        }
    }
    write_tracefs(root, "current_tracer", "nop")
}

/// The tracer's measurement in userspace, on a SCHED_FIFO thread that visits each CPU in turn.
fn userspace_sampler(args: &HwlatArgs) -> anyhow::Result<()> {
    let cpus = HostTopology::from_host()
        .context("the guest's CPUs")?
        .online_cpus()
        .to_vec();
    let param = libc::sched_param {
        sched_priority: SAMPLER_FIFO_PRIORITY,
    };
    // SAFETY: plain syscall on the calling thread with a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        println!(
            "hwlat: note: SCHED_FIFO {SAMPLER_FIFO_PRIORITY} refused: {}",
            std::io::Error::last_os_error()
        );
    }
    let rate = TscRate {
        hz: tsc::calibrate_hz(CALIBRATION_WINDOW),
    };
    let width = rate.duration_to_ticks(args.width);
    let threshold_ns = args.threshold.as_nanos().min(u128::from(u64::MAX)) as u64;
    println!("hwlat: ready (gapprobe, {} cpus)", cpus.len());

    let started = Instant::now();
    let mut seq = 0;
    for window in 0.. {
        let window_start = Instant::now();
        if args
            .duration
            .is_some_and(|duration| window_start - started >= duration)
        {
            break;
        }
        let cpu = cpus[window % cpus.len()];
        set_affinity(&[cpu]).with_context(|| format!("moving the sampler to CPU {cpu}"))?;
        let max = sample_window(tsc::rdtsc, width);
        let inner_ns = rate.ticks_to_ns(max.inner);
        let outer_ns = rate.ticks_to_ns(max.outer);
        if inner_ns.max(outer_ns) > threshold_ns {
            seq += 1;
            let now = clock_ns(ClockId::CLOCK_REALTIME);
            report(&HwlatSample {
                seq,
                inner_us: inner_ns / NSEC_PER_USEC,
                outer_us: outer_ns / NSEC_PER_USEC,
                ts_sec: now / NSEC_PER_SEC,
                ts_nsec: (now % NSEC_PER_SEC) as u32,
            });
        }
        std::thread::sleep((window_start + args.window).saturating_duration_since(Instant::now()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_l2_command_line_of_the_contract() {
        let args =
            HwlatArgs::parse_words(&words("--width 500ms --window 1s --threshold 10us")).unwrap();
        assert_eq!(args.width, Duration::from_millis(500));
        assert_eq!(args.window, Duration::from_secs(1));
        assert_eq!(args.threshold, Duration::from_micros(10));
        assert_eq!(args.duration, None);
        let timed = HwlatArgs::parse_words(&words("--duration 30s")).unwrap();
        assert_eq!(timed.duration, Some(Duration::from_secs(30)));
    }

    #[test]
    fn refuses_a_width_that_fills_the_window_and_unknown_flags() {
        let err = HwlatArgs::parse_words(&words("--width 1s --window 1s")).unwrap_err();
        assert!(err.to_string().contains("--width"), "{err}");
        let err = HwlatArgs::parse_words(&words("--max-gap 1ms")).unwrap_err();
        assert!(err.to_string().contains("--max-gap"), "{err}");
    }

    /// A clock that returns `ticks` in order, then counts up by one per read.
    fn scripted(ticks: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut next = 0;
        move || {
            let value = ticks
                .get(next)
                .copied()
                .unwrap_or_else(|| ticks[ticks.len() - 1] + (next - ticks.len() + 1) as u64);
            next += 1;
            value
        }
    }

    #[test]
    fn window_keeps_the_largest_inner_and_outer_latency() {
        // start, then (t1, t2) pairs: inner 2, 40, 1; outer 3 and 500.
        let clock = scripted(&[0, 10, 12, 15, 55, 555, 556]);
        let max = sample_window(clock, 550);
        assert_eq!(
            max,
            WindowMax {
                inner: 40,
                outer: 500
            }
        );
    }

    #[test]
    fn window_ends_once_width_has_passed() {
        let mut reads = 0u64;
        let max = sample_window(
            || {
                reads += 1;
                reads * 10
            },
            100,
        );
        assert_eq!(
            max,
            WindowMax {
                inner: 10,
                outer: 10
            }
        );
        // Start at 10, pairs end at 30, 50, ..., 110 (exactly the width), 130 (past it).
        assert_eq!(reads, 13);
    }

    #[test]
    fn real_tsc_window_lasts_its_width() {
        let rate = TscRate {
            hz: tsc::calibrate_hz(Duration::from_millis(50)),
        };
        let started = Instant::now();
        let max = sample_window(
            tsc::rdtsc,
            rate.duration_to_ticks(Duration::from_millis(20)),
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(19),
            "a 20 ms window took {took:?}"
        );
        assert!(max.inner > 0, "two TSC reads cannot take zero ticks");
    }
}
