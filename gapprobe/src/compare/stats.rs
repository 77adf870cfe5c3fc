//! The exact two-sided Mann-Whitney U (Wilcoxon rank-sum) test on one value per run.
//!
//! Exact means the null distribution is counted, not approximated: every way of choosing
//! which of the pooled runs belong to the smaller set is equally likely when both sets come
//! from the same distribution. Tied values get their mean rank, and the distribution is
//! counted with those same mean ranks (the test is conditional on the ties), so ties never
//! make a difference look surer than it is.

use serde::Serialize;

/// Pooled runs one test takes: the count table grows with the cube of this (200 runs: about
/// 32 MB and well under a second).
pub const MAX_POOLED_RUNS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankSumTest {
    /// Mann-Whitney U of the second set: pairs (baseline, other) in which the other run has
    /// the larger value, a tie counting one half. Its mean under the null is n1 * n2 / 2.
    pub u: f64,
    /// Two-sided: twice the smaller tail probability of the observed rank sum, at most 1.
    pub p: f64,
    /// The smallest p any outcome could give with these set sizes and ties: when it is not
    /// below the significance level, no result could ever be called a difference.
    pub min_p: f64,
}

impl RankSumTest {
    /// Whether the other set tends to have the larger values.
    pub fn direction(&self, baseline_runs: usize, other_runs: usize) -> Direction {
        let mean = (baseline_runs * other_runs) as f64 / 2.0;
        if self.u > mean {
            Direction::Higher
        } else if self.u < mean {
            Direction::Lower
        } else {
            Direction::Same
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Higher,
    Lower,
    Same,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Higher => "higher",
            Direction::Lower => "lower",
            Direction::Same => "same",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("a set with no runs cannot be tested")]
    NoRuns,
    #[error(
        "{pooled} runs in one comparison; the exact test here takes at most {MAX_POOLED_RUNS}"
    )]
    TooManyRuns { pooled: usize },
}

/// Tests whether `other` differs from `baseline`; one value per run in each.
pub fn rank_sum_test(baseline: &[f64], other: &[f64]) -> Result<RankSumTest, StatsError> {
    if baseline.is_empty() || other.is_empty() {
        return Err(StatsError::NoRuns);
    }
    let pooled_runs = baseline.len() + other.len();
    if pooled_runs > MAX_POOLED_RUNS {
        return Err(StatsError::TooManyRuns {
            pooled: pooled_runs,
        });
    }
    let pooled: Vec<f64> = baseline.iter().chain(other).copied().collect();
    let ranks = doubled_midranks(&pooled);
    let (baseline_ranks, other_ranks) = ranks.split_at(baseline.len());

    let other_sum: u64 = other_ranks.iter().sum();
    let n_other = other.len() as u64;
    // U = rank sum - n(n+1)/2; with doubled ranks both terms are doubled.
    let u = (other_sum - n_other * (n_other + 1)) as f64 / 2.0;

    // The two-sided p is the same whichever set's rank sum is counted; count the smaller set
    // to keep the table small.
    let smaller = if other_ranks.len() <= baseline_ranks.len() {
        other_ranks
    } else {
        baseline_ranks
    };
    let observed = smaller.iter().sum::<u64>() as usize;
    let counts = rank_sum_counts(&ranks, smaller.len());
    let total: f64 = counts.iter().sum();
    let at_most = |sum: usize| counts[..=sum].iter().sum::<f64>() / total;
    let at_least = |sum: usize| counts[sum..].iter().sum::<f64>() / total;
    let two_sided = |lower: f64, upper: f64| (2.0 * lower.min(upper)).min(1.0);

    let p = two_sided(at_most(observed), at_least(observed));
    // The most extreme outcomes are the smallest and the largest possible rank sums.
    let possible = |(sum, count): (usize, &f64)| (*count > 0.0).then_some(sum);
    let lowest = counts.iter().enumerate().find_map(possible).unwrap_or(0);
    let highest = counts
        .iter()
        .enumerate()
        .rev()
        .find_map(possible)
        .unwrap_or(0);
    let min_p = two_sided(counts[lowest] / total, counts[highest] / total);
    Ok(RankSumTest { u, p, min_p })
}

/// Ranks 1..=n of the values, ties sharing their mean rank; doubled so they stay integers
/// (ranks 4 and 5 tied: 4.5 each, doubled 9).
fn doubled_midranks(values: &[f64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let tied = order[start..]
            .iter()
            .take_while(|&&index| values[index].total_cmp(&values[order[start]]).is_eq())
            .count();
        let end = start + tied;
        // Positions start..end hold ranks start+1..=end; twice their mean is start+1+end.
        let doubled = (start + 1 + end) as u64;
        for &index in &order[start..end] {
            ranks[index] = doubled;
        }
        start = end;
    }
    ranks
}

/// counts[s]: how many ways `size` of the pooled runs can be chosen so that their doubled
/// ranks add up to s. Counted in f64: exact up to 2^53 ways, and beyond that off by far less
/// than anything a p value is read for.
fn rank_sum_counts(ranks: &[u64], size: usize) -> Vec<f64> {
    let mut largest_first = ranks.to_vec();
    largest_first.sort_unstable_by(|a, b| b.cmp(a));
    let max_sum = largest_first[..size].iter().sum::<u64>() as usize;
    // ways[k][s]: subsets of k of the runs seen so far with rank sum s.
    let mut ways = vec![vec![0.0f64; max_sum + 1]; size + 1];
    ways[0][0] = 1.0;
    let mut seen_sum = 0;
    for (seen, &rank) in ranks.iter().enumerate() {
        let rank = rank as usize;
        seen_sum += rank;
        let reachable = seen_sum.min(max_sum);
        // Larger subsets first, so each run joins a subset at most once.
        for k in (1..=size.min(seen + 1)).rev() {
            let (smaller, larger) = ways.split_at_mut(k);
            let (from, to) = (&smaller[k - 1], &mut larger[0]);
            for sum in rank..=reachable {
                to[sum] += from[sum - rank];
            }
        }
    }
    ways.swap_remove(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(baseline: &[f64], other: &[f64]) -> RankSumTest {
        rank_sum_test(baseline, other).unwrap()
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-12
    }

    #[test]
    fn complete_separation_of_four_against_four() {
        // Only 2 of the C(8,4) = 70 splits are this extreme: p = 2/70.
        let result = test(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(result.u, 16.0);
        assert!(close(result.p, 2.0 / 70.0), "{result:?}");
        assert!(close(result.min_p, 2.0 / 70.0));
        assert_eq!(result.direction(4, 4), Direction::Higher);

        let reversed = test(&[5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(reversed.u, 0.0);
        assert!(close(reversed.p, 2.0 / 70.0));
        assert_eq!(reversed.direction(4, 4), Direction::Lower);
    }

    #[test]
    fn interleaved_sets_are_not_different() {
        // U = 10 pairs; the U distribution of 4 and 4 runs (counts 1 1 2 3 5 5 7 7 8 ...
        // over the 70 splits) gives P(U >= 10) = P(U <= 6) = 24/70.
        let result = test(&[1.0, 3.0, 5.0, 7.0], &[2.0, 4.0, 6.0, 8.0]);
        assert_eq!(result.u, 10.0);
        assert!(close(result.p, 48.0 / 70.0), "{result:?}");
    }

    #[test]
    fn unequal_sizes_count_the_smaller_set() {
        // Other = ranks {3, 5}: of the 10 pairs from 1..=5, sums >= 8 are {3,5}, {4,5}.
        let result = test(&[1.0, 2.0, 4.0], &[3.0, 5.0]);
        assert_eq!(result.u, 5.0);
        assert!(close(result.p, 0.4), "{result:?}");
        // Three against five, separated: 2 / C(8,3).
        let separated = test(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(separated.u, 15.0);
        assert!(close(separated.p, 2.0 / 56.0));
        let swapped = test(&[4.0, 5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0]);
        assert!(close(swapped.p, 2.0 / 56.0));
    }

    #[test]
    fn too_few_runs_can_never_reach_five_percent() {
        assert!(close(test(&[1.0], &[2.0]).min_p, 1.0));
        assert!(close(test(&[1.0, 2.0], &[3.0, 4.0]).min_p, 2.0 / 6.0));
        // Three against three: at best 2 / C(6,3) = 0.1.
        let three = test(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
        assert!(close(three.p, 0.1) && close(three.min_p, 0.1));
    }

    #[test]
    fn ties_get_mean_ranks_and_a_conditional_distribution() {
        // All tied: every split has the same rank sum, nothing can differ.
        let tied = test(&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]);
        assert_eq!(tied.u, 4.5);
        assert!(close(tied.p, 1.0) && close(tied.min_p, 1.0));

        // Ties within each set only: as separated as without ties, p = 2/70.
        let within = test(&[1.0, 1.0, 1.0, 1.0], &[2.0, 2.0, 2.0, 2.0]);
        assert_eq!(within.u, 16.0);
        assert!(close(within.p, 2.0 / 70.0));

        // One tie across the sets (ranks 4.5, 4.5): U = 15.5, and the largest rank sum is
        // reached by 2 of the 70 splits (either 4.5), so p = 4/70 and nothing lower is possible.
        let across = test(&[1.0, 2.0, 3.0, 4.0], &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(across.u, 15.5);
        assert!(close(across.p, 4.0 / 70.0), "{across:?}");
        assert!(close(across.min_p, 4.0 / 70.0));

        // Seven quiet runs and one outlier: half of all splits hold the outlier, p = 1.
        let outlier = test(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 5.0]);
        assert_eq!(outlier.u, 10.0);
        assert!(close(outlier.p, 1.0) && close(outlier.min_p, 1.0));
    }

    #[test]
    fn midranks_are_doubled_integers() {
        assert_eq!(doubled_midranks(&[3.0, 1.0, 3.0, 2.0]), vec![7, 2, 7, 4]);
    }

    #[test]
    fn large_sets_stay_exact_and_bounded() {
        let baseline: Vec<f64> = (0..100).map(f64::from).collect();
        let other: Vec<f64> = (100..200).map(f64::from).collect();
        let result = test(&baseline, &other);
        assert_eq!(result.u, 10_000.0);
        assert!(result.p > 0.0 && result.p < 1e-50, "{result:?}");
        assert_eq!(
            rank_sum_test(&baseline, &[1.0; 101]),
            Err(StatsError::TooManyRuns { pooled: 201 })
        );
        assert_eq!(rank_sum_test(&[], &[1.0]), Err(StatsError::NoRuns));
    }
}
