//! The chance that a bad commit passes as good. Gaps on a bad commit are modelled as a
//! Poisson process with rate lambda, estimated from the bad steps as (runs that found a gap)
//! / (time those steps measured, each run counted until its gap or its end). A commit tested
//! for time t then shows no gap with probability exp(-lambda * t).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GapRate {
    gaps: u64,
    measured: Duration,
}

impl GapRate {
    /// None when nothing was measured yet on a bad commit (no gap, or no time).
    pub fn estimate(gaps: u64, measured: Duration) -> Option<Self> {
        (gaps > 0 && !measured.is_zero()).then_some(Self { gaps, measured })
    }

    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    pub fn measured(&self) -> Duration {
        self.measured
    }

    /// Gaps per second of measurement on a bad commit.
    pub fn per_second(&self) -> f64 {
        self.gaps as f64 / self.measured.as_secs_f64()
    }

    /// exp(-lambda * t): a bad commit measured for `tested` shows no gap.
    pub fn miss_probability(&self, tested: Duration) -> f64 {
        (-self.per_second() * tested.as_secs_f64()).exp()
    }

    /// The measuring time per commit (--repeat x --duration) that brings the miss
    /// probability down to `miss`: ln(1/miss) / lambda.
    pub fn time_for_miss(&self, miss: f64) -> Duration {
        Duration::from_secs_f64((1.0 / miss).ln() / self.per_second())
    }

    /// The chance that at least one of the good verdicts, each measured for its time, was a
    /// bad commit missed: 1 - prod(1 - exp(-lambda * t_i)).
    pub fn any_missed(&self, good_steps: impl IntoIterator<Item = Duration>) -> f64 {
        1.0 - good_steps
            .into_iter()
            .map(|tested| 1.0 - self.miss_probability(tested))
            .product::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn no_estimate_without_a_gap_or_time() {
        assert_eq!(GapRate::estimate(0, Duration::from_secs(10)), None);
        assert_eq!(GapRate::estimate(3, Duration::ZERO), None);
    }

    #[test]
    fn rate_and_miss_probability() {
        // 2 gaps in 8 s: lambda = 0.25/s; 4 s of testing misses with exp(-1).
        let rate = GapRate::estimate(2, Duration::from_secs(8)).unwrap();
        assert!(close(rate.per_second(), 0.25));
        assert!(close(
            rate.miss_probability(Duration::from_secs(4)),
            (-1.0f64).exp()
        ));
        assert!(close(rate.miss_probability(Duration::ZERO), 1.0));
        // ln(100) / 0.25 = 18.42 s for a 1% miss, and that time gives 1% back.
        let needed = rate.time_for_miss(0.01);
        assert!(close(needed.as_secs_f64(), 100f64.ln() / 0.25));
        assert!((rate.miss_probability(needed) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn chance_that_some_good_verdict_was_wrong() {
        let rate = GapRate::estimate(1, Duration::from_secs(1)).unwrap();
        let one = rate.miss_probability(Duration::from_secs(2));
        let two = rate.miss_probability(Duration::from_secs(3));
        let both = rate.any_missed([Duration::from_secs(2), Duration::from_secs(3)]);
        assert!(close(both, 1.0 - (1.0 - one) * (1.0 - two)));
        assert!(close(rate.any_missed([]), 0.0));
    }
}
