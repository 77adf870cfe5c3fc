//! The hwlat tracer's sample line, `#N inner/outer(us): I/O ts:S.N`: what every L2 prints
//! and what L1 parses. The kernel's own tracer pads the fields and appends `count:` (and NMI
//! counts) behind a trace_pipe prefix (kernel/trace/trace_output.c, trace_hwlat_print); the
//! parser accepts that, and the L2s print the short form because every console character
//! costs an L2 milliseconds.

use std::fmt;

/// Marker of the inner/outer pair in the kernel's format.
const INNER_OUTER: &str = "inner/outer(us):";
/// Marker of the sample's CLOCK_REALTIME stamp.
const TIMESTAMP: &str = "ts:";
const NSEC_PER_USEC: u64 = 1_000;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// One reported sample: the largest inner (between two clock reads) and outer (between two
/// loop iterations) latency of a window, in microseconds as hwlat prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwlatSample {
    /// The tracer's sequence number of reported samples, from 1.
    pub seq: u64,
    pub inner_us: u64,
    pub outer_us: u64,
    /// CLOCK_REALTIME of the sample.
    pub ts_sec: u64,
    pub ts_nsec: u32,
}

impl HwlatSample {
    /// The sample's gap: the larger of inner and outer, in nanoseconds.
    pub fn gap_ns(&self) -> u64 {
        self.inner_us.max(self.outer_us) * NSEC_PER_USEC
    }

    /// Finds a sample in `line`, wherever it starts (a trace_pipe line has a task/CPU/time
    /// prefix; a relayed one has none). None when the line is not a hwlat sample.
    pub fn parse(line: &str) -> Option<Self> {
        let pair_at = line.find(INNER_OUTER)?;
        let before = &line[..pair_at];
        let hash = before.rfind('#')?;
        let seq = before[hash + 1..].trim().parse().ok()?;
        let rest = &line[pair_at + INNER_OUTER.len()..];
        let (pair, rest) = rest.split_once(TIMESTAMP)?;
        let (inner, outer) = pair.split_once('/')?;
        let stamp = rest.split_whitespace().next()?;
        let (sec, nsec) = stamp.split_once('.')?;
        if nsec.len() != 9 {
            return None;
        }
        let ts_nsec: u32 = nsec.parse().ok()?;
        if u64::from(ts_nsec) >= NSEC_PER_SEC {
            return None;
        }
        Some(Self {
            seq,
            inner_us: inner.trim().parse().ok()?,
            outer_us: outer.trim().parse().ok()?,
            ts_sec: sec.parse().ok()?,
            ts_nsec,
        })
    }
}

/// The short form: `#1 inner/outer(us): 32522/48575 ts:1598486359.129995457`.
impl fmt::Display for HwlatSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {INNER_OUTER} {}/{} {TIMESTAMP}{}.{:09}",
            self.seq, self.inner_us, self.outer_us, self.ts_sec, self.ts_nsec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line schedgaps' README shows.
    const SCHEDGAPS_LINE: &str = "#1 inner/outer(us): 32522/48575 ts:1598486359.129995457";

    #[test]
    fn short_form_round_trips() {
        let sample = HwlatSample::parse(SCHEDGAPS_LINE).unwrap();
        assert_eq!(
            sample,
            HwlatSample {
                seq: 1,
                inner_us: 32522,
                outer_us: 48575,
                ts_sec: 1_598_486_359,
                ts_nsec: 129_995_457,
            }
        );
        assert_eq!(sample.to_string(), SCHEDGAPS_LINE);
        assert_eq!(sample.gap_ns(), 48_575_000);
    }

    #[test]
    fn kernel_trace_pipe_line_with_padding_and_counts() {
        let line = "          <idle>-0       [001] d...   123.456789: #12    inner/outer(us):   11/9     ts:1700000000.000000042 count:3 nmi-total:0 nmi-count:0";
        let sample = HwlatSample::parse(line).unwrap();
        assert_eq!((sample.seq, sample.inner_us, sample.outer_us), (12, 11, 9));
        assert_eq!((sample.ts_sec, sample.ts_nsec), (1_700_000_000, 42));
        assert_eq!(sample.gap_ns(), 11_000);
    }

    #[test]
    fn relayed_line_keeps_parsing_behind_a_prefix() {
        let line = format!("vm3: {SCHEDGAPS_LINE}");
        assert_eq!(HwlatSample::parse(&line).unwrap().inner_us, 32522);
    }

    #[test]
    fn other_lines_are_not_samples() {
        for line in [
            "",
            "hwlat: ready",
            "[    1.234] Run /init as init process",
            "#1 inner/outer(us): 12 ts:1.000000000",
            "#x inner/outer(us): 1/2 ts:1.000000000",
            "#1 inner/outer(us): 1/2 ts:1.5",
            "#1 inner/outer(us): 1/2",
            "inner/outer(us): 1/2 ts:1.000000000",
        ] {
            assert_eq!(HwlatSample::parse(line), None, "{line:?}");
        }
    }
}
