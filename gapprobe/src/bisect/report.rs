//! What a step and `--summary` print: the step's verdict line and the estimate of how likely
//! a bad commit passes as good (miss.rs), from every bad step in the log.

use std::time::Duration;

use super::log::Step;
use super::miss::GapRate;
use super::verdict::Verdict;

/// The miss probability the README and the hint aim for.
const TARGET_MISS: f64 = 0.01;

pub fn step_line(step: &Step) -> String {
    let mut line = format!(
        "bisect-run: {}: {} (runs {} of {}, gaps {}, measured {:.1} s, worst {}, step {:.0} s)",
        step.revision,
        step.verdict.word(),
        step.runs,
        step.repeat,
        step.gaps,
        step.measured.as_secs_f64(),
        worst(step),
        step.wall.as_secs_f64()
    );
    if let Some(reason) = &step.reason {
        line.push_str(&format!(": {reason}"));
    }
    line
}

fn worst(step: &Step) -> String {
    step.worst_gap_ns
        .map_or("-".to_string(), |ns| format!("{:.3} ms", ns as f64 / 1e6))
}

/// The gap rate over the bad steps of the log.
pub fn gap_rate(steps: &[Step]) -> Option<(GapRate, usize)> {
    let bad: Vec<&Step> = steps.iter().filter(|s| s.verdict == Verdict::Bad).collect();
    let gaps = bad.iter().map(|step| u64::from(step.gaps)).sum();
    let measured = bad.iter().map(|step| step.measured).sum();
    GapRate::estimate(gaps, measured).map(|rate| (rate, bad.len()))
}

/// The estimate for testing each commit with `repeat` runs of `duration`.
pub fn estimate_lines(steps: &[Step], repeat: u32, duration: Duration) -> Vec<String> {
    let Some((rate, bad_steps)) = gap_rate(steps) else {
        return vec![
            "bisect-run: no bad step in the log yet: the chance that a bad commit passes as \
             good is estimated from the first one"
                .to_string(),
        ];
    };
    let tested = duration * repeat;
    vec![
        format!(
            "bisect-run: gap rate on bad commits: {:.4}/s (gaps {}, measured {:.1} s, bad steps {})",
            rate.per_second(),
            rate.gaps(),
            rate.measured().as_secs_f64(),
            bad_steps
        ),
        format!(
            "bisect-run: P(a bad commit passes as good) with --repeat {repeat} --duration {}: {}; \
             for {} or less: repeat x duration >= {:.1} s",
            humantime::format_duration(duration),
            probability(rate.miss_probability(tested)),
            probability(TARGET_MISS),
            rate.time_for_miss(TARGET_MISS).as_secs_f64()
        ),
    ]
}

/// `--summary`: the steps, their count by verdict, the estimate for the last step's
/// settings, and the chance that one of the good verdicts was wrong.
pub fn summary_lines(steps: &[Step]) -> Vec<String> {
    let mut lines: Vec<String> = steps.iter().map(Step::to_string).collect();
    let count = |verdict| steps.iter().filter(|s| s.verdict == verdict).count();
    lines.push(format!(
        "bisect-run: {} steps: {} good, {} bad, {} skip, {} abort",
        steps.len(),
        count(Verdict::Good),
        count(Verdict::Bad),
        count(Verdict::Skip),
        count(Verdict::Abort)
    ));
    if let Some(last) = steps.last() {
        lines.extend(estimate_lines(steps, last.repeat, last.duration));
    }
    let good = steps.iter().filter(|s| s.verdict == Verdict::Good);
    if let (Some((rate, _)), true) = (gap_rate(steps), count(Verdict::Good) > 0) {
        lines.push(format!(
            "bisect-run: P(a good verdict was a missed bad commit, good steps {}): {}",
            count(Verdict::Good),
            probability(rate.any_missed(good.map(|step| step.measured)))
        ));
    }
    lines
}

/// A probability as a percentage people can read, down to the tiny ones.
fn probability(p: f64) -> String {
    let percent = p * 100.0;
    if percent >= 0.01 || percent == 0.0 {
        format!("{percent:.2}%")
    } else {
        format!("{percent:.1e}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(verdict: Verdict, gaps: u32, measured_s: u64) -> Step {
        Step {
            at: std::time::UNIX_EPOCH,
            revision: "abc1234".into(),
            verdict,
            runs: 1,
            repeat: 2,
            gaps,
            measured: Duration::from_secs(measured_s),
            worst_gap_ns: Some(2_000_000),
            duration: Duration::from_secs(3),
            wall: Duration::from_secs(90),
            reason: None,
        }
    }

    #[test]
    fn no_estimate_before_a_bad_step() {
        let steps = [step(Verdict::Good, 0, 6), step(Verdict::Skip, 0, 0)];
        let lines = estimate_lines(&steps, 2, Duration::from_secs(3));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("no bad step"), "{lines:?}");
    }

    #[test]
    fn estimate_from_the_bad_steps_only() {
        // Bad steps: 2 gaps in 4 s -> 0.5/s; 2 x 3 s then misses with exp(-3) = 4.98%.
        let steps = [
            step(Verdict::Bad, 1, 1),
            step(Verdict::Good, 0, 6),
            step(Verdict::Bad, 1, 3),
        ];
        let lines = estimate_lines(&steps, 2, Duration::from_secs(3));
        assert!(
            lines[0].contains("0.5000/s (gaps 2, measured 4.0 s, bad steps 2)"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("--repeat 2 --duration 3s: 4.98%"),
            "{lines:?}"
        );
        // ln(100) / 0.5 = 9.2 s.
        assert!(
            lines[1].ends_with("for 1.00% or less: repeat x duration >= 9.2 s"),
            "{lines:?}"
        );
        let summary = summary_lines(&steps);
        assert_eq!(summary.len(), 3 + 1 + 2 + 1, "{summary:?}");
        assert!(summary[3].ends_with("3 steps: 1 good, 2 bad, 0 skip, 0 abort"));
        // One good step of 6 s: exp(-3).
        assert!(
            summary[6].ends_with("missed bad commit, good steps 1): 4.98%"),
            "{summary:?}"
        );
    }

    #[test]
    fn probabilities_stay_readable() {
        assert_eq!(probability(0.0498), "4.98%");
        assert_eq!(probability(1.2e-9), "1.2e-7%");
        assert_eq!(probability(0.0), "0.00%");
    }

    #[test]
    fn step_line_says_why() {
        let mut skipped = step(Verdict::Skip, 0, 0);
        skipped.worst_gap_ns = None;
        skipped.reason = Some("build failed: exit status: 1".into());
        assert_eq!(
            step_line(&skipped),
            "bisect-run: abc1234: skip (runs 1 of 2, gaps 0, measured 0.0 s, worst -, \
             step 90 s): build failed: exit status: 1"
        );
    }
}
