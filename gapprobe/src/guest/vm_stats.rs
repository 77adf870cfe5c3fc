//! What L1 learns about one L2 from its console: whether it booted, its hwlat samples and
//! their distribution, and how it ended.

use hdrhistogram::Histogram;

use super::hwlat_line::HwlatSample;
use super::nested_result::VmResult;

/// The line the hwlat role prints once it runs (see hwlat.rs).
pub const READY_PREFIX: &str = "hwlat: ready";
/// Significant figures of the gap histogram: 0.1 % resolution.
const HISTOGRAM_SIGFIG: u8 = 3;

pub struct VmStats {
    booted: bool,
    samples: u64,
    gaps: u64,
    worst_gap_ns: u64,
    histogram: Histogram<u64>,
    exit: Option<String>,
}

impl Default for VmStats {
    fn default() -> Self {
        Self {
            booted: false,
            samples: 0,
            gaps: 0,
            worst_gap_ns: 0,
            histogram: Histogram::new(HISTOGRAM_SIGFIG)
                .expect("3 significant figures is within hdrhistogram's range"),
            exit: None,
        }
    }
}

impl VmStats {
    /// Takes one console line of the guest; returns its sample if it is a hwlat line.
    /// `threshold_ns` is the threshold the L2 was given: a line over it is a gap.
    pub fn on_line(&mut self, line: &str, threshold_ns: u64) -> Option<HwlatSample> {
        if line.starts_with(READY_PREFIX) {
            self.booted = true;
        }
        let sample = HwlatSample::parse(line)?;
        let gap_ns = sample.gap_ns();
        self.booted = true;
        self.samples += 1;
        if gap_ns > threshold_ns {
            self.gaps += 1;
        }
        self.worst_gap_ns = self.worst_gap_ns.max(gap_ns);
        // An auto-resizing histogram only refuses values beyond u64's range.
        let _ = self.histogram.record(gap_ns);
        Some(sample)
    }

    pub fn set_exit(&mut self, exit: &str) {
        self.exit = Some(exit.to_string());
    }

    pub fn has_ended(&self) -> bool {
        self.exit.is_some()
    }

    pub fn result(&self, vm: usize) -> VmResult {
        let quantile = |q: f64| {
            if self.histogram.is_empty() {
                0
            } else {
                self.histogram.value_at_quantile(q)
            }
        };
        VmResult {
            vm,
            booted: self.booted,
            samples: self.samples,
            gaps: self.gaps,
            worst_gap_ns: self.worst_gap_ns,
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
            exit: self.exit.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLD_NS: u64 = 10_000;

    fn line(seq: u64, inner_us: u64, outer_us: u64) -> String {
        HwlatSample {
            seq,
            inner_us,
            outer_us,
            ts_sec: 1_700_000_000,
            ts_nsec: 0,
        }
        .to_string()
    }

    #[test]
    fn counts_samples_gaps_worst_and_percentiles() {
        let mut stats = VmStats::default();
        assert_eq!(
            stats.on_line("[    0.5] Linux version 6.1", THRESHOLD_NS),
            None
        );
        assert!(!stats.result(0).booted);
        assert_eq!(
            stats.on_line("hwlat: ready (gapprobe, 2 cpus)", THRESHOLD_NS),
            None
        );
        assert!(stats.result(0).booted);
        // 98 windows at 12 us, one at 5 us (under the threshold), one at 48.575 ms.
        for seq in 1..=98 {
            stats.on_line(&line(seq, 12, 3), THRESHOLD_NS).unwrap();
        }
        stats.on_line(&line(99, 5, 4), THRESHOLD_NS).unwrap();
        let sample = stats
            .on_line(&line(100, 32_522, 48_575), THRESHOLD_NS)
            .unwrap();
        assert_eq!(sample.gap_ns(), 48_575_000);
        let result = stats.result(3);
        assert_eq!(result.vm, 3);
        assert_eq!((result.samples, result.gaps), (100, 99));
        assert_eq!(result.worst_gap_ns, 48_575_000);
        // hdrhistogram answers within its 0.1 % resolution.
        assert!(result.p50_ns.abs_diff(12_000) <= 12, "{result:?}");
        assert!(result.p99_ns.abs_diff(12_000) <= 12, "{result:?}");
        assert_eq!(result.exit, None);
    }

    #[test]
    fn a_sample_means_booted_and_exit_is_kept() {
        let mut stats = VmStats::default();
        stats.on_line(&line(1, 20, 30), THRESHOLD_NS).unwrap();
        stats.set_exit("panic");
        let result = stats.result(0);
        assert!(result.booted && stats.has_ended());
        assert_eq!(result.exit.as_deref(), Some("panic"));
        assert!(result.p50_ns.abs_diff(30_000) <= 30, "{result:?}");
    }

    #[test]
    fn no_samples_give_zero_percentiles() {
        let result = VmStats::default().result(1);
        assert_eq!((result.samples, result.p50_ns, result.p99_ns), (0, 0, 0));
    }
}
