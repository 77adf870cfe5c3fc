//! Text reports on stdout, line-compatible with schedgaps where schedgaps had a line.

use crate::tsc::TscRate;

/// schedgaps' periodic line: `Max latency: 47 ms (119754120 ticks, 16 online)`.
pub fn max_latency_line(rate: TscRate, max_ticks: u64, online: usize) -> String {
    format!(
        "Max latency: {} ms ({max_ticks} ticks, {online} online)",
        rate.ticks_to_ns(max_ticks) / 1_000_000
    )
}

/// schedgaps' gap line: `diff: 130ms`.
pub fn diff_line(gap_ns: u64) -> String {
    format!("diff: {}ms", gap_ns / 1_000_000)
}

/// Milliseconds with microsecond precision, for the lines schedgaps did not have.
pub fn ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// Seconds with nanosecond precision, as the trace prints its `mono` timestamps.
pub fn seconds(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedgaps_lines() {
        let rate = TscRate { hz: 2_500_000_000 };
        assert_eq!(
            max_latency_line(rate, 119_754_120, 16),
            "Max latency: 47 ms (119754120 ticks, 16 online)"
        );
        assert_eq!(diff_line(130_999_999), "diff: 130ms");
    }

    #[test]
    fn precise_units() {
        assert_eq!(ms(50_187_432), "50.187 ms");
        assert_eq!(ms(999), "0.000 ms");
        assert_eq!(seconds(12_000_000_345), "12.000000345");
    }
}
