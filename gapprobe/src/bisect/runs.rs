//! One `gapprobe vm` run of a step: this same binary as a child, with exactly the options a
//! user would type (printed first, so the run can be repeated by hand), its stdout passed
//! through, its stderr relayed, and its --json result read for the time measured and the
//! worst gap.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::child::{run_relayed, Relayed};
use super::verdict::{run_end, RunEnd};
use crate::vm_result::{NestedResult, UserResult};

/// What a step passes to every run.
pub struct RunPlan<'a> {
    pub gapprobe: &'a Path,
    pub image: &'a Path,
    pub duration: Duration,
    pub vm_options: &'a [String],
}

impl RunPlan<'_> {
    /// The `gapprobe vm` arguments of one run writing its result to `json`.
    pub fn vm_args(&self, json: &Path) -> Vec<String> {
        let mut args = vec![
            "vm".to_string(),
            "--kernel".to_string(),
            self.image.display().to_string(),
            "--duration".to_string(),
            one_word(self.duration),
            "--json".to_string(),
            json.display().to_string(),
        ];
        args.extend(self.vm_options.iter().cloned());
        args
    }
}

/// A duration as one shell word that --duration parses back exactly (humantime's own
/// format has spaces: `1m 30s`).
fn one_word(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

/// What a run measured (a run that ended clean or with a gap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// The detector's run time, up to the gap that ended it.
    pub elapsed: Duration,
    pub worst_gap_ns: u64,
}

pub struct RunReport {
    pub end: RunEnd,
    /// Some for NoGap and Gap.
    pub measured: Option<Measured>,
    /// The run's `SKIP: ...` line, for a run that could not test.
    pub skip_line: Option<String>,
}

pub fn run_once(plan: &RunPlan, json: &Path) -> anyhow::Result<RunReport> {
    let args = plan.vm_args(json);
    eprintln!("bisect-run: {} {}", plan.gapprobe.display(), args.join(" "));
    let (status, skip_line) = run_relayed(
        Command::new(plan.gapprobe).args(&args),
        Relayed::Stderr,
        |line| line.starts_with("SKIP: "),
    )
    .with_context(|| format!("cannot start {}", plan.gapprobe.display()))?;
    let end = run_end(status);
    let measured =
        match end {
            RunEnd::NoGap | RunEnd::Gap => Some(read_result(json).with_context(|| {
                format!("gapprobe vm {status} but its --json result is unusable")
            })?),
            _ => None,
        };
    Ok(RunReport {
        end,
        measured,
        skip_line,
    })
}

/// The two result schemas `gapprobe vm --json` writes, told apart by `target`.
#[derive(Deserialize)]
struct Target {
    target: String,
}

fn read_result(json: &Path) -> anyhow::Result<Measured> {
    let bytes = std::fs::read(json).with_context(|| json.display().to_string())?;
    parse_result(&bytes)
}

fn parse_result(bytes: &[u8]) -> anyhow::Result<Measured> {
    let Target { target } = serde_json::from_slice(bytes)?;
    let (elapsed_ns, worst_gap_ns) = match target.as_str() {
        "user" => {
            let result: UserResult = serde_json::from_slice(bytes)?;
            (result.elapsed_ns, result.worst_gap_ns)
        }
        "nested" => {
            let result: NestedResult = serde_json::from_slice(bytes)?;
            let worst = result.vms.iter().map(|vm| vm.worst_gap_ns);
            let trigger = result.trigger.map(|trigger| trigger.gap_ns);
            (result.elapsed_ns, worst.chain(trigger).max().unwrap_or(0))
        }
        other => bail!("unknown target {other:?}"),
    };
    Ok(Measured {
        elapsed: Duration::from_nanos(elapsed_ns),
        worst_gap_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_result_schemas() {
        let user = br#"{"schema":1,"target":"user","max_gap_ns":1000000,"elapsed_ns":2500000000,
            "exceeded":true,"worst_gap_ns":4000000,"trigger":{"kind":"gap","tid":1,"cpu":0,
            "gap_ns":4000000,"unfinished":false}}"#;
        assert_eq!(
            parse_result(user).unwrap(),
            Measured {
                elapsed: Duration::from_millis(2500),
                worst_gap_ns: 4_000_000
            }
        );
        let nested = br#"{"schema":1,"target":"nested","kernel":"6.1.0","l2_vms":2,
            "max_gap_ns":50000000,"elapsed_ns":12000000000,"exceeded":true,"end":"exceeded",
            "trigger":{"vm":1,"gap_ns":61000000},
            "vms":[{"vm":0,"booted":true,"samples":20,"gaps":3,"worst_gap_ns":1500000,
                    "p50_ns":20000,"p99_ns":1400000,"exit":null},
                   {"vm":1,"booted":true,"samples":5,"gaps":1,"worst_gap_ns":0,
                    "p50_ns":0,"p99_ns":0,"exit":null}],
            "trace":null}"#;
        assert_eq!(
            parse_result(nested).unwrap(),
            Measured {
                elapsed: Duration::from_secs(12),
                worst_gap_ns: 61_000_000
            }
        );
        assert!(parse_result(br#"{"target":"l3"}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown target"));
        assert!(parse_result(b"{}").is_err());
    }

    #[test]
    fn durations_stay_one_word() {
        for (duration, word) in [
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(2500), "2500ms"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
        ] {
            assert_eq!(one_word(duration), word);
            assert_eq!(crate::cli::parse_duration(word), Ok(duration));
        }
    }

    #[test]
    fn vm_arguments_are_what_a_user_types() {
        let options = ["--max-gap".to_string(), "1ms".to_string()];
        let plan = RunPlan {
            gapprobe: Path::new("/usr/bin/gapprobe"),
            image: Path::new("/cache/bzImage"),
            duration: Duration::from_secs(90),
            vm_options: &options,
        };
        assert_eq!(
            plan.vm_args(Path::new("/tmp/run1.json")).join(" "),
            "vm --kernel /cache/bzImage --duration 90s --json /tmp/run1.json --max-gap 1ms"
        );
    }
}
