//! The text report: the sets side by side per unit, then one table of tests per set against
//! the baseline.

use super::report::{Comparison, Metric, Report, SetReport, Verdict, SIGNIFICANCE};
use crate::report::ms;

/// Columns padded to their widest cell; `align` has one letter per column, `l` for text
/// (left-aligned), anything else for numbers (right-aligned).
struct Table {
    align: &'static str,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(align: &'static str, header: &[&str]) -> Self {
        Self {
            align,
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(self.align.chars())
                .map(|((cell, &width), align)| {
                    if align == 'l' {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// Microseconds below a millisecond (gap percentiles are often a few µs), else milliseconds.
fn duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}.{:03} µs", ns / 1_000, ns % 1_000)
    } else {
        ms(ns)
    }
}

fn optional_duration(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), duration)
}

fn p_value(p: f64) -> String {
    if p >= 0.0001 {
        format!("{p:.4}")
    } else {
        format!("{p:.1e}")
    }
}

fn metric_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::WorstGap => duration(value.round() as u64),
        Metric::GapsPerMinute => format!("{value:.1}"),
    }
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::WorstGap => "worst gap",
        Metric::GapsPerMinute => "gaps/min",
    }
}

fn set_line(set: &SetReport) -> String {
    let runs = if set.runs == 1 { "run" } else { "runs" };
    let kernels = match set.kernels.len() {
        1 => "kernel",
        _ => "kernels",
    };
    format!(
        "{}: {} ({} {runs}, {kernels} {})\n",
        set.name,
        set.path,
        set.runs,
        set.kernels.join(", ")
    )
}

fn sets_table(report: &Report) -> String {
    let mut table = Table::new(
        "llrrrrrrrr",
        &[
            "unit",
            "set",
            "runs",
            "time",
            "gaps/min",
            "worst",
            "median worst",
            "p50",
            "p99",
            "p99.9",
        ],
    );
    // Unit by unit, so the sets of one unit stand one under the other.
    let mut units: Vec<&str> = report
        .sets
        .iter()
        .flat_map(|set| set.units.iter().map(|unit| unit.unit.as_str()))
        .collect();
    units.sort_by_key(|name| (*name != "all", name.len(), name.to_string()));
    units.dedup();
    for name in units {
        for set in &report.sets {
            let Some(unit) = set.units.iter().find(|unit| unit.unit == name) else {
                continue;
            };
            table.push(vec![
                unit.unit.clone(),
                set.name.clone(),
                unit.runs.to_string(),
                format!("{:.1} s", unit.elapsed_ns as f64 / 1e9),
                format!("{:.1}", unit.gaps_per_min),
                duration(unit.worst_gap_ns),
                duration(unit.median_worst_gap_ns),
                optional_duration(unit.p50_ns),
                optional_duration(unit.p99_ns),
                optional_duration(unit.p999_ns),
            ]);
        }
    }
    table.render()
}

fn legend(report: &Report) -> String {
    let counted = match report.counted_gap_ns {
        Some(ns) => format!("gaps of at least {} (--log-gap)", duration(ns)),
        None => "L2 hwlat samples over the L2 threshold".to_string(),
    };
    let percentiles = match report.counted_gap_ns {
        Some(_) => "p50/p99/p99.9 of all gaps of at least 1 µs",
        None => "p50/p99 of each VM's samples; `all` is every booted VM",
    };
    format!(
        "gaps/min: {counted} per minute of run; worst: of any run; median worst and {percentiles}: \
         medians over runs\n"
    )
}

fn verdict(comparison: &Comparison) -> String {
    match comparison.verdict {
        Verdict::Differs => format!(
            "differs ({} {})",
            comparison.set,
            comparison.direction.name()
        ),
        Verdict::NoDifferenceShown => "no difference shown".to_string(),
        Verdict::TooFewRuns => format!(
            "too few runs: p < {SIGNIFICANCE} impossible here (best {})",
            p_value(comparison.min_p)
        ),
    }
}

fn tests_table(set: &str, baseline: &str, comparisons: &[&Comparison]) -> String {
    let baseline_median = format!("{baseline} median");
    let median = format!("{set} median");
    let mut table = Table::new(
        "llrrrrrl",
        &[
            "unit",
            "metric",
            "runs",
            &baseline_median,
            &median,
            "U",
            "p",
            "verdict",
        ],
    );
    for comparison in comparisons {
        table.push(vec![
            comparison.unit.clone(),
            metric_name(comparison.metric).to_string(),
            format!("{} vs {}", comparison.baseline_runs, comparison.runs),
            metric_value(comparison.metric, comparison.baseline_median),
            metric_value(comparison.metric, comparison.median),
            format!("{:.1}", comparison.u),
            p_value(comparison.p),
            verdict(comparison),
        ]);
    }
    table.render()
}

pub fn render(report: &Report) -> String {
    let baseline = report.sets.first().map_or("A", |set| set.name.as_str());
    let mut text = format!(
        "{} target, {} set(s), {baseline} is the baseline\n",
        report.target,
        report.sets.len()
    );
    for set in &report.sets {
        text.push_str(&set_line(set));
    }
    text.push('\n');
    text.push_str(&sets_table(report));
    text.push_str(&legend(report));
    for set in report.sets.iter().skip(1) {
        let comparisons: Vec<&Comparison> = report
            .comparisons
            .iter()
            .filter(|comparison| comparison.set == set.name)
            .collect();
        text.push_str(&format!(
            "\n{} against {baseline}: exact two-sided Mann-Whitney U on one value per run, \
             p < {SIGNIFICANCE} is a difference\n",
            set.name
        ));
        if comparisons.is_empty() {
            text.push_str("no unit measured in both sets\n");
        } else {
            text.push_str(&tests_table(&set.name, baseline, &comparisons));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::report::tests::user_report;

    #[test]
    fn columns_align_labels_left_and_numbers_right() {
        let mut table = Table::new("lr", &["unit", "worst"]);
        table.push(vec!["all".into(), "41.322 ms".into()]);
        table.push(vec!["vm10".into(), "2.100 µs".into()]);
        assert_eq!(
            table.render(),
            "unit      worst\nall   41.322 ms\nvm10   2.100 µs\n"
        );
    }

    #[test]
    fn units_of_time_follow_the_size() {
        assert_eq!(duration(2_100), "2.100 µs");
        assert_eq!(duration(999_999), "999.999 µs");
        assert_eq!(duration(41_322_000), "41.322 ms");
        assert_eq!(optional_duration(None), "-");
        assert_eq!(p_value(2.0 / 70.0), "0.0286");
        assert_eq!(p_value(2.2e-59), "2.2e-59");
    }

    #[test]
    fn user_report_as_text() {
        let text = render(&user_report());
        let expected = "\
user target, 2 set(s), A is the baseline
A: quiet (4 runs, kernel 6.12.0)
B: stalled (4 runs, kernel 6.12.0)

unit  set  runs     time  gaps/min      worst  median worst       p50       p99      p99.9
all   A       4  240.0 s       4.0   3.000 ms      1.700 ms  2.100 µs  9.000 µs  40.000 µs
all   B       4  240.0 s       5.0  44.000 ms     40.700 ms  2.100 µs  9.000 µs  40.000 µs
gaps/min: gaps of at least 1.000 ms (--log-gap) per minute of run; worst: of any run; median worst and p50/p99/p99.9 of all gaps of at least 1 µs: medians over runs

B against A: exact two-sided Mann-Whitney U on one value per run, p < 0.05 is a difference
unit  metric       runs  A median   B median     U       p  verdict
all   worst gap  4 vs 4  1.700 ms  40.700 ms  16.0  0.0286  differs (B higher)
all   gaps/min   4 vs 4       4.0        5.0  16.0  0.0286  differs (B higher)
";
        assert_eq!(text, expected, "\n{text}");
    }
}
