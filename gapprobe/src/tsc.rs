//! The time stamp counter: reading it, checking that it is usable as a clock, and
//! calibrating its rate against CLOCK_MONOTONIC_RAW.

use std::fs;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Reads the TSC. Not serialising on purpose: the detector wants the cheapest read, and an
/// out-of-order read shifts a gap's edges by a few cycles at most.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 (CR4.TSD is clear for Linux user space).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds of a clock, as an integer.
pub fn clock_ns(clock: ClockId) -> u64 {
    let ts = clock_gettime(clock).expect("clock_gettime on a clock every Linux kernel has");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Why the TSC may not be a trustworthy clock on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TscWarning(pub String);

/// Checks what the kernel says about the TSC: `constant_tsc` and `nonstop_tsc` in
/// /proc/cpuinfo (an invariant TSC), and `tsc` still among the clocksources (the kernel drops
/// it from `available_clocksource` when it marks the TSC unstable).
pub fn check_invariant(cpuinfo: &str, available_clocksource: Option<&str>) -> Vec<TscWarning> {
    let flags = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    let mut warnings = Vec::new();
    for flag in ["constant_tsc", "nonstop_tsc"] {
        if !flags.contains(&flag) {
            warnings.push(TscWarning(format!(
                "the CPU does not report {flag}: the TSC rate may change or stop, gap sizes may be wrong"
            )));
        }
    }
    if let Some(sources) = available_clocksource {
        if !sources.split_whitespace().any(|source| source == "tsc") {
            warnings.push(TscWarning(
                "the kernel does not list tsc as a clocksource (marked unstable?): gap sizes may be wrong"
                    .to_string(),
            ));
        }
    }
    warnings
}

/// [`check_invariant`] on the running host.
pub fn check_host() -> Vec<TscWarning> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let sources =
        fs::read_to_string("/sys/devices/system/clocksource/clocksource0/available_clocksource")
            .ok();
    check_invariant(&cpuinfo, sources.as_deref())
}

/// A (TSC, CLOCK_MONOTONIC_RAW) pair taken as close together as the machine allows.
fn paired_read() -> (u64, u64) {
    // Bracket one clock read between two TSC reads and keep the tightest of a few tries, so
    // a preemption between the reads does not skew the pair.
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..16 {
        let before = rdtsc();
        let raw = clock_ns(ClockId::CLOCK_MONOTONIC_RAW);
        let after = rdtsc();
        let width = after.wrapping_sub(before);
        if width < best.0 {
            best = (width, before + width / 2, raw);
        }
    }
    (best.1, best.2)
}

/// Measures TSC ticks per second against CLOCK_MONOTONIC_RAW (never adjusted by NTP) over
/// `window`. A 200 ms window gives a few ppm: far below what gap sizes need.
pub fn calibrate_hz(window: Duration) -> u64 {
    let (tsc0, raw0) = paired_read();
    std::thread::sleep(window);
    let (tsc1, raw1) = paired_read();
    let ticks = tsc1.wrapping_sub(tsc0) as u128;
    let nanos = (raw1 - raw0).max(1) as u128;
    (ticks * 1_000_000_000 / nanos) as u64
}

/// Converts between TSC ticks and nanoseconds at a calibrated rate.
#[derive(Debug, Clone, Copy)]
pub struct TscRate {
    pub hz: u64,
}

impl TscRate {
    pub fn ticks_to_ns(self, ticks: u64) -> u64 {
        (ticks as u128 * 1_000_000_000 / self.hz as u128) as u64
    }

    pub fn ns_to_ticks(self, ns: u64) -> u64 {
        (ns as u128 * self.hz as u128 / 1_000_000_000) as u64
    }

    pub fn duration_to_ticks(self, duration: Duration) -> u64 {
        self.ns_to_ticks(duration.as_nanos().min(u64::MAX as u128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariant_tsc_needs_both_flags_and_the_clocksource() {
        let good = "processor : 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert!(check_invariant(good, Some("tsc hpet acpi_pm\n")).is_empty());
        let no_nonstop = "flags : fpu tsc constant_tsc\n";
        let warnings = check_invariant(no_nonstop, Some("tsc"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].0.contains("nonstop_tsc"));
        let unstable = check_invariant(good, Some("kvm-clock hpet"));
        assert_eq!(unstable.len(), 1);
        assert!(unstable[0].0.contains("unstable"));
    }

    #[test]
    fn calibration_agrees_with_the_kernel_clock() {
        let rate = TscRate {
            hz: calibrate_hz(Duration::from_millis(100)),
        };
        // A second measurement over a different window must agree closely: a wrong formula
        // (window or units) would not.
        let start_tsc = rdtsc();
        let start = clock_ns(ClockId::CLOCK_MONOTONIC_RAW);
        std::thread::sleep(Duration::from_millis(50));
        let elapsed_ns = clock_ns(ClockId::CLOCK_MONOTONIC_RAW) - start;
        let measured_ns = rate.ticks_to_ns(rdtsc() - start_tsc);
        let error = measured_ns.abs_diff(elapsed_ns);
        assert!(
            error < elapsed_ns / 100,
            "{measured_ns} ns vs {elapsed_ns} ns"
        );
    }

    #[test]
    fn tick_conversions_round_trip() {
        let rate = TscRate { hz: 2_445_000_000 };
        assert_eq!(rate.ns_to_ticks(1_000_000_000), 2_445_000_000);
        assert_eq!(rate.ticks_to_ns(rate.ns_to_ticks(100_000_000)), 100_000_000);
    }
}
