//! What compare found: per set and unit the gap figures, and for every set after the first
//! the rank-sum tests against it. This is also the `--json` document (README: "Comparing two
//! kernels").

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::{Comparable, RunSet, Unit, UnitSample};
use super::stats::{self, Direction, StatsError};

/// A p value below this is called a difference.
pub const SIGNIFICANCE: f64 = 0.05;

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: &'static str,
    /// User runs: gaps per minute counts gaps of at least this (--log-gap). Nested runs: null,
    /// they count L2 samples over the L2's hwlat threshold.
    pub counted_gap_ns: Option<u64>,
    pub significance: f64,
    pub sets: Vec<SetReport>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Serialize)]
pub struct SetReport {
    /// A, B, C... in command-line order; A is the baseline.
    pub name: String,
    pub path: String,
    pub runs: usize,
    /// Distinct kernel releases of its runs.
    pub kernels: Vec<String>,
    pub units: Vec<UnitReport>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct UnitReport {
    /// `all` (the whole run), or `vmN` (one L2 VM of nested runs).
    pub unit: String,
    /// Runs in which this unit measured (a VM that did not boot did not).
    pub runs: usize,
    pub elapsed_ns: u64,
    pub gaps: u64,
    /// All counted gaps over all run time.
    pub gaps_per_min: f64,
    /// The worst gap of any run.
    pub worst_gap_ns: u64,
    /// The median over runs of each run's worst gap.
    pub median_worst_gap_ns: u64,
    /// Medians over runs of each run's percentile; null when no run has it.
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub p999_ns: Option<u64>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub set: String,
    pub baseline: String,
    pub unit: String,
    pub metric: Metric,
    pub baseline_runs: usize,
    pub runs: usize,
    pub baseline_median: f64,
    pub median: f64,
    pub u: f64,
    pub p: f64,
    pub min_p: f64,
    /// Where this set's runs tend, from U against n1*n2/2.
    pub direction: Direction,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// p is below the significance level.
    #[serde(rename = "differs")]
    Differs,
    #[serde(rename = "no difference shown")]
    NoDifferenceShown,
    /// Not even the most extreme outcome could reach the significance level (min_p).
    #[serde(rename = "too few runs")]
    TooFewRuns,
}

#[derive(Debug, thiserror::Error)]
#[error("{set} against {baseline}, unit {unit}: {cause}")]
pub struct CompareError {
    set: String,
    baseline: String,
    unit: Unit,
    cause: StatsError,
}

/// The per-run values the test ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Metric {
    #[serde(rename = "worst_gap_ns")]
    WorstGap,
    #[serde(rename = "gaps_per_min")]
    GapsPerMinute,
}

impl Metric {
    const ALL: [Metric; 2] = [Metric::WorstGap, Metric::GapsPerMinute];

    fn value(self, measured: &Measured) -> f64 {
        match self {
            Metric::WorstGap => measured.sample.worst_gap_ns as f64,
            Metric::GapsPerMinute => per_minute(measured.sample.gaps, measured.elapsed_ns),
        }
    }
}

/// One unit of one run, with the length of that run.
struct Measured<'a> {
    elapsed_ns: u64,
    sample: &'a UnitSample,
}

type UnitRuns<'a> = BTreeMap<Unit, Vec<Measured<'a>>>;

fn by_unit(set: &RunSet) -> UnitRuns<'_> {
    let mut units = UnitRuns::new();
    for run in &set.runs {
        for sample in &run.units {
            units.entry(sample.unit).or_default().push(Measured {
                elapsed_ns: run.elapsed_ns,
                sample,
            });
        }
    }
    units
}

fn set_name(index: usize) -> String {
    char::from(b'A' + index as u8).to_string()
}

pub fn build(sets: &[RunSet], comparable: Comparable) -> Result<Report, CompareError> {
    let units: Vec<UnitRuns> = sets.iter().map(by_unit).collect();
    let set_reports = sets
        .iter()
        .zip(&units)
        .enumerate()
        .map(|(index, (set, units))| set_report(index, set, units))
        .collect();
    let mut comparisons = Vec::new();
    if let Some((baseline, others)) = units.split_first() {
        for (offset, other) in others.iter().enumerate() {
            let names = (set_name(0), set_name(offset + 1));
            for (unit, runs) in other {
                // A unit the baseline never measured has nothing to be compared with.
                if let Some(baseline_runs) = baseline.get(unit) {
                    for metric in Metric::ALL {
                        comparisons.push(compare(&names, *unit, metric, baseline_runs, runs)?);
                    }
                }
            }
        }
    }
    Ok(Report {
        target: comparable.target.name(),
        counted_gap_ns: comparable.counted_gap_ns,
        significance: SIGNIFICANCE,
        sets: set_reports,
        comparisons,
    })
}

fn set_report(index: usize, set: &RunSet, units: &UnitRuns) -> SetReport {
    let mut kernels: Vec<String> = set.runs.iter().map(|run| run.kernel.clone()).collect();
    kernels.sort();
    kernels.dedup();
    SetReport {
        name: set_name(index),
        path: set.argument.display().to_string(),
        runs: set.runs.len(),
        kernels,
        units: units
            .iter()
            .map(|(unit, runs)| unit_report(*unit, runs))
            .collect(),
    }
}

fn unit_report(unit: Unit, runs: &[Measured]) -> UnitReport {
    let elapsed_ns = runs.iter().map(|run| run.elapsed_ns).sum();
    let gaps = runs.iter().map(|run| run.sample.gaps).sum();
    let median_of = |field: fn(&UnitSample) -> Option<u64>| {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|run| field(run.sample))
            .map(|value| value as f64)
            .collect();
        median(&values).map(|value| value.round() as u64)
    };
    UnitReport {
        unit: unit.to_string(),
        runs: runs.len(),
        elapsed_ns,
        gaps,
        gaps_per_min: per_minute(gaps, elapsed_ns),
        worst_gap_ns: runs
            .iter()
            .map(|run| run.sample.worst_gap_ns)
            .max()
            .unwrap_or(0),
        median_worst_gap_ns: median_of(|sample| Some(sample.worst_gap_ns)).unwrap_or(0),
        p50_ns: median_of(|sample| sample.p50_ns),
        p99_ns: median_of(|sample| sample.p99_ns),
        p999_ns: median_of(|sample| sample.p999_ns),
    }
}

fn compare(
    (baseline_name, name): &(String, String),
    unit: Unit,
    metric: Metric,
    baseline_runs: &[Measured],
    runs: &[Measured],
) -> Result<Comparison, CompareError> {
    let values =
        |runs: &[Measured]| -> Vec<f64> { runs.iter().map(|run| metric.value(run)).collect() };
    let (baseline_values, other_values) = (values(baseline_runs), values(runs));
    let test =
        stats::rank_sum_test(&baseline_values, &other_values).map_err(|cause| CompareError {
            set: name.clone(),
            baseline: baseline_name.clone(),
            unit,
            cause,
        })?;
    let verdict = if test.min_p >= SIGNIFICANCE {
        Verdict::TooFewRuns
    } else if test.p < SIGNIFICANCE {
        Verdict::Differs
    } else {
        Verdict::NoDifferenceShown
    };
    Ok(Comparison {
        set: name.clone(),
        baseline: baseline_name.clone(),
        unit: unit.to_string(),
        metric,
        baseline_runs: baseline_runs.len(),
        runs: runs.len(),
        // Both sets are non-empty here: the test refused empty ones.
        baseline_median: median(&baseline_values).unwrap_or(0.0),
        median: median(&other_values).unwrap_or(0.0),
        u: test.u,
        p: test.p,
        min_p: test.min_p,
        direction: test.direction(baseline_runs.len(), runs.len()),
        verdict,
    })
}

fn per_minute(gaps: u64, elapsed_ns: u64) -> f64 {
    gaps as f64 * 60e9 / elapsed_ns as f64
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

#[cfg(test)]
pub mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::compare::load::{self, Target};

    fn set(name: &str, texts: &[String]) -> RunSet {
        let dir = tempfile::tempdir().unwrap();
        let runs = texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let path = dir.path().join(format!("{index}.json"));
                std::fs::write(&path, text).unwrap();
                let mut run = load::load_run(&path).unwrap();
                run.path = Path::new(name).join(format!("{index}.json"));
                run
            })
            .collect();
        RunSet {
            argument: PathBuf::from(name),
            runs,
        }
    }

    /// Four quiet one-minute user runs against four with a 40 ms gap each.
    pub fn user_report() -> Report {
        let quiet: Vec<String> = [2_100_000, 1_300_000, 3_000_000, 900_000]
            .iter()
            .map(|&worst| load::tests::user_json(60_000_000_000, worst, 1))
            .collect();
        let stalled: Vec<String> = [40_400_000, 41_000_000, 40_200_000, 44_000_000]
            .iter()
            .map(|&worst| load::tests::user_json(60_000_000_000, worst, 2))
            .collect();
        let sets = [set("quiet", &quiet), set("stalled", &stalled)];
        build(&sets, load::check_comparable(&sets).unwrap()).unwrap()
    }

    #[test]
    fn user_sets_side_by_side_and_tested() {
        let report = user_report();
        assert_eq!(report.target, "user");
        assert_eq!(report.counted_gap_ns, Some(1_000_000));
        assert_eq!(report.sets[1].name, "B");
        assert_eq!(report.sets[1].kernels, vec!["6.12.0".to_string()]);
        assert_eq!(
            report.sets[0].units,
            vec![UnitReport {
                unit: "all".to_string(),
                runs: 4,
                elapsed_ns: 240_000_000_000,
                // One logged and three dropped gaps per run.
                gaps: 16,
                gaps_per_min: 4.0,
                worst_gap_ns: 3_000_000,
                median_worst_gap_ns: 1_700_000,
                p50_ns: Some(2100),
                p99_ns: Some(9000),
                p999_ns: Some(40000),
            }]
        );
        let worst = &report.comparisons[0];
        assert_eq!((worst.set.as_str(), worst.metric), ("B", Metric::WorstGap));
        assert_eq!((worst.baseline_runs, worst.runs), (4, 4));
        assert_eq!(worst.u, 16.0);
        assert!((worst.p - 2.0 / 70.0).abs() < 1e-12);
        assert_eq!(
            (worst.direction, worst.verdict),
            (Direction::Higher, Verdict::Differs)
        );
        assert_eq!(worst.median, 40_700_000.0);
        let rate = &report.comparisons[1];
        assert_eq!(rate.metric, Metric::GapsPerMinute);
        assert_eq!((rate.baseline_median, rate.median), (4.0, 5.0));
        assert_eq!(
            (rate.direction, rate.verdict),
            (Direction::Higher, Verdict::Differs)
        );
        // The JSON document spells them as the README says.
        let json = serde_json::to_value(worst).unwrap();
        assert_eq!(
            (&json["metric"], &json["direction"], &json["verdict"]),
            (
                &serde_json::json!("worst_gap_ns"),
                &serde_json::json!("higher"),
                &serde_json::json!("differs")
            )
        );
    }

    #[test]
    fn verdicts_name_too_few_runs_and_no_difference() {
        let run = |worst| load::tests::user_json(1_000_000_000, worst, 0);
        let pair = [set("a", &[run(1), run(2)]), set("b", &[run(30), run(40)])];
        let report = build(&pair, load::check_comparable(&pair).unwrap()).unwrap();
        assert_eq!(report.comparisons[0].verdict, Verdict::TooFewRuns);
        assert!((report.comparisons[0].min_p - 1.0 / 3.0).abs() < 1e-12);

        let mixed = [
            set("a", &[run(1), run(4), run(5), run(8)]),
            set("b", &[run(2), run(3), run(6), run(7)]),
        ];
        let report = build(&mixed, load::check_comparable(&mixed).unwrap()).unwrap();
        assert_eq!(report.comparisons[0].verdict, Verdict::NoDifferenceShown);
        assert_eq!(report.comparisons[0].direction, Direction::Same);
        // Zero gaps everywhere: all tied.
        assert_eq!(report.comparisons[1].verdict, Verdict::TooFewRuns);
        let json = serde_json::to_value(&report.comparisons[1]).unwrap();
        assert_eq!(json["verdict"], "too few runs");
    }

    #[test]
    fn nested_sets_compare_each_vm_that_both_measured() {
        let runs = |count: u64, worst: &[u64]| -> Vec<String> {
            (0..count)
                .map(|i| {
                    let worst: Vec<u64> = worst.iter().map(|w| w + i).collect();
                    load::tests::nested_json(10_000_000_000, &worst)
                })
                .collect()
        };
        // Only VM 0 booted in the baseline runs: `all` and vm0 are compared, vm1 is not.
        let sets = [
            set("base", &runs(4, &[40_000])),
            set("slower", &runs(5, &[50_000, 200_000_000])),
        ];
        let comparable = load::check_comparable(&sets).unwrap();
        assert_eq!(comparable.target, Target::Nested);
        let report = build(&sets, comparable).unwrap();
        let units: Vec<&str> = report.sets[1]
            .units
            .iter()
            .map(|u| u.unit.as_str())
            .collect();
        assert_eq!(units, ["all", "vm0", "vm1"]);
        assert_eq!(report.sets[0].units.len(), 2);
        assert_eq!(report.sets[1].units[0].p50_ns, None);
        assert_eq!(report.sets[1].units[2].p99_ns, Some(200_000_002));
        assert_eq!(report.sets[1].units[2].p999_ns, None);
        let tested: Vec<(&str, Metric, Verdict)> = report
            .comparisons
            .iter()
            .map(|c| (c.unit.as_str(), c.metric, c.verdict))
            .collect();
        assert_eq!(
            tested,
            [
                ("all", Metric::WorstGap, Verdict::Differs),
                // Two VMs' gaps against one VM's.
                ("all", Metric::GapsPerMinute, Verdict::Differs),
                ("vm0", Metric::WorstGap, Verdict::Differs),
                // Every VM counted 2 gaps in every run: all tied.
                ("vm0", Metric::GapsPerMinute, Verdict::TooFewRuns),
            ]
        );
        // 4 against 5 runs, separated: 2 / C(9,4).
        let vm0 = &report.comparisons[2];
        assert!((vm0.p - 2.0 / 126.0).abs() < 1e-12, "{vm0:?}");
        assert_eq!((vm0.baseline_runs, vm0.runs), (4, 5));
    }
}
