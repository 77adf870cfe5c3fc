//! The L1 kernel command line `gapprobe vm` builds: the role, its arguments in
//! `gapprobe.args="..."`, the modules to load, and the boot options every level needs.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use l1_harness::host_topology::format_cpulist;

use crate::cli::{Cli, Command, RunArgs};

/// Boot options of the kvm-target contract: few console characters (each costs time in a
/// nested guest), no TSC-stability watchdog (an emulated TSC is not invariant but is what the
/// detector reads), and vCPUs that never halt (a halted vCPU is a gap of its own).
pub const L1_BOOT_OPTIONS: &str = "quiet tsc=reliable idle=poll";

#[derive(Debug, thiserror::Error)]
pub enum GuestArgsError {
    #[error("{option}: {value:?} cannot go on the kernel command line (no spaces or quotes)")]
    Unquotable { option: &'static str, value: String },
    #[error("--nested: {option} does not apply (the L2s run the hwlat-style detector)")]
    NotForNested { option: &'static str },
    #[error("the detector's default options: {0}")]
    Defaults(String),
}

/// A command-line value as `gapprobe.args` carries it: one word, no quotes.
fn word(option: &'static str, value: String) -> Result<String, GuestArgsError> {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
        return Err(GuestArgsError::Unquotable { option, value });
    }
    Ok(value)
}

/// A duration in the largest unit that keeps it exact (`1500ms`, not `1s 500ms`, which would
/// be two words).
pub fn duration_word(duration: Duration) -> String {
    let ns = duration.as_nanos();
    for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if ns.is_multiple_of(scale) {
            return format!("{}{unit}", ns / scale);
        }
    }
    format!("{ns}ns")
}

/// A size in the largest binary unit that keeps it exact, as `parse_size` reads it back.
pub fn size_word(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Each detector option as the words that set it (none when off or absent), in a fixed
/// order. `--dump`, `--json` and `--quiet` are the host's and stay out.
fn detector_option_words(
    args: &RunArgs,
) -> Result<Vec<(&'static str, Vec<String>)>, GuestArgsError> {
    let value = |option: &'static str,
                 text: String|
     -> Result<(&'static str, Vec<String>), GuestArgsError> {
        Ok((option, vec![option.to_string(), word(option, text)?]))
    };
    let switch = |option: &'static str, on: bool| {
        (
            option,
            if on {
                vec![option.to_string()]
            } else {
                Vec::new()
            },
        )
    };
    let core_sched = args
        .core_sched
        .to_possible_value()
        .map(|value| value.get_name().to_string())
        .unwrap_or_default();
    Ok(vec![
        value("--max-gap", duration_word(args.max_gap))?,
        match args.duration {
            Some(duration) => value("--duration", duration_word(duration))?,
            None => ("--duration", Vec::new()),
        },
        match &args.cpus {
            Some(cpus) => value("--cpus", format_cpulist(&cpus.0))?,
            None => ("--cpus", Vec::new()),
        },
        value("--groups", args.groups.to_string())?,
        value("--threads-per-group", args.threads_per_group.to_string())?,
        switch("--pin", args.pin),
        value("--nice", args.nice.to_string())?,
        value("--busy", duration_word(args.busy))?,
        value("--max-sleep", duration_word(args.max_sleep))?,
        value("--seed", args.seed.to_string())?,
        value("--core-sched", core_sched)?,
        value("--interval", duration_word(args.interval))?,
        value("--log-gap", duration_word(args.log_gap))?,
        switch("--strict-tsc", args.strict_tsc),
        value("--events", args.events.join(","))?,
        value("--buffer-kb", args.buffer_kb.to_string())?,
        switch("--no-trace", args.no_trace),
    ])
}

/// The detector options the user changed from their defaults, by name and words.
fn changed_detector_options(
    args: &RunArgs,
) -> Result<Vec<(&'static str, Vec<String>)>, GuestArgsError> {
    let defaults = match Cli::try_parse_from(["gapprobe", "run"]).map(|cli| cli.command) {
        Ok(Some(Command::Run(defaults))) => defaults,
        Ok(_) => return Err(GuestArgsError::Defaults("not a run command".to_string())),
        Err(err) => return Err(GuestArgsError::Defaults(err.to_string())),
    };
    let chosen = detector_option_words(args)?;
    let default = detector_option_words(&defaults)?;
    Ok(chosen
        .into_iter()
        .zip(default)
        .filter(|(chosen, default)| chosen.1 != default.1)
        .map(|(chosen, _)| chosen)
        .collect())
}

/// `gapprobe.args` of the user role: the detector options that differ from the defaults.
pub fn user_role_args(args: &RunArgs) -> Result<Vec<String>, GuestArgsError> {
    Ok(changed_detector_options(args)?
        .into_iter()
        .flat_map(|(_, words)| words)
        .collect())
}

/// What the nested role needs besides the detector options.
#[derive(Debug, Clone)]
pub struct NestedPlan {
    pub l2_vms: u32,
    /// Whole MiB: the nested role reads `--l2-mem` as `<N>M` or `<N>G`.
    pub l2_mem: u64,
}

/// `gapprobe.args` of the nested role (flag names of `guest/nested.rs` `NestedArgs`):
/// `--l2-vms N --l2-mem SIZE --max-gap DUR [--duration DUR] [--events LIST]
/// [--buffer-kb KB] [--l2-vcpu-cpus LIST]`. The detector's `--cpus` becomes
/// `--l2-vcpu-cpus` (the L1 CPUs the L2 vCPU threads share); options of the user target
/// that mean nothing here are refused rather than silently dropped.
pub fn nested_role_args(args: &RunArgs, plan: &NestedPlan) -> Result<Vec<String>, GuestArgsError> {
    let mut words = vec![
        "--l2-vms".to_string(),
        plan.l2_vms.to_string(),
        "--l2-mem".to_string(),
        format!("{}M", plan.l2_mem >> 20),
        "--max-gap".to_string(),
        duration_word(args.max_gap),
    ];
    for (option, option_words) in changed_detector_options(args)? {
        match option {
            "--max-gap" => {}
            "--duration" | "--events" | "--buffer-kb" => words.extend(option_words),
            "--cpus" => {
                words.push("--l2-vcpu-cpus".to_string());
                words.extend(option_words.into_iter().skip(1));
            }
            option => return Err(GuestArgsError::NotForNested { option }),
        }
    }
    Ok(words)
}

/// The whole L1 command line (the VMM adds its console and dump-region items).
pub fn l1_cmdline(role: &str, role_args: &[String], modules: &[String], extra: &str) -> String {
    let mut parts = vec![
        L1_BOOT_OPTIONS.to_string(),
        format!("gapprobe.role={role}"),
        format!("gapprobe.args=\"{}\"", role_args.join(" ")),
    ];
    if !modules.is_empty() {
        parts.push(format!("gapprobe.modules={}", modules.join(",")));
    }
    if !extra.trim().is_empty() {
        parts.push(extra.trim().to_string());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cmdline;

    /// Detector options as clap parses them for `gapprobe run`.
    fn run_args(argv: &[&str]) -> RunArgs {
        let argv = ["gapprobe", "run"].iter().chain(argv.iter());
        match Cli::parse_from(argv).command {
            Some(Command::Run(args)) => args,
            other => panic!("not a run command: {other:?}"),
        }
    }

    #[test]
    fn durations_and_sizes_stay_one_exact_word() {
        assert_eq!(duration_word(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_word(Duration::from_secs(2)), "2s");
        assert_eq!(duration_word(Duration::from_micros(10)), "10us");
        assert_eq!(duration_word(Duration::from_nanos(1_000_001)), "1000001ns");
        for duration in [1_500_000_000u64, 10_000, 1_000_001] {
            let duration = Duration::from_nanos(duration);
            assert_eq!(
                crate::cli::parse_duration(&duration_word(duration)),
                Ok(duration)
            );
        }
        assert_eq!(size_word(256 << 20), "256M");
        assert_eq!(size_word(2 << 30), "2G");
        assert_eq!(size_word(1536 << 20), "1536M");
        assert_eq!(size_word(4097), "4097");
    }

    #[test]
    fn only_changed_options_are_forwarded_and_parse_back() {
        assert!(user_role_args(&run_args(&[])).unwrap().is_empty());
        let args = run_args(&[
            "--max-gap",
            "1ms",
            "--duration",
            "5s",
            "--pin",
            "--nice",
            "-5",
            "--cpus",
            "2,3",
            "--events",
            "sched,irq",
            "--dump",
            "/x",
            "--json",
            "/y",
            "-q",
        ]);
        let forwarded = user_role_args(&args).unwrap();
        assert_eq!(
            forwarded.join(" "),
            "--max-gap 1ms --duration 5s --cpus 2-3 --pin --nice -5 --events sched,irq"
        );
        // What the guest reads back through the kernel command line is the same run.
        let line = l1_cmdline("user", &forwarded, &[], "");
        let back = cmdline::args(&cmdline::value(&line, "args").unwrap());
        let parsed = run_args(&back.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(parsed.max_gap, Duration::from_millis(1));
        assert_eq!(parsed.duration, Some(Duration::from_secs(5)));
        assert_eq!(parsed.cpus.unwrap().0, vec![2, 3]);
        assert!(parsed.pin);
        assert_eq!(parsed.nice, -5);
        assert!(!parsed.quiet, "--quiet is the host's");
    }

    #[test]
    fn unquotable_values_are_refused() {
        let mut args = run_args(&[]);
        args.events = vec!["sched".to_string(), "a b".to_string()];
        let err = user_role_args(&args).unwrap_err().to_string();
        assert!(err.contains("--events"), "{err}");
    }

    #[test]
    fn nested_args_follow_the_contract() {
        let plan = NestedPlan {
            l2_vms: 2,
            l2_mem: 256 << 20,
        };
        let args = run_args(&["--max-gap", "50ms", "--duration", "20s", "--cpus", "2,3"]);
        assert_eq!(
            nested_role_args(&args, &plan).unwrap().join(" "),
            "--l2-vms 2 --l2-mem 256M --max-gap 50ms --duration 20s --l2-vcpu-cpus 2-3"
        );
        let err = nested_role_args(&run_args(&["--groups", "4"]), &plan)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--groups"), "{err}");
    }

    #[test]
    fn l1_cmdline_carries_role_modules_and_extras() {
        let line = l1_cmdline(
            "nested",
            &["--l2-vms".to_string(), "2".to_string()],
            &["kvm.ko".to_string(), "kvm-amd.ko".to_string()],
            " panic=-1 ",
        );
        assert_eq!(
            line,
            "quiet tsc=reliable idle=poll gapprobe.role=nested gapprobe.args=\"--l2-vms 2\" \
             gapprobe.modules=kvm.ko,kvm-amd.ko panic=-1"
        );
        assert_eq!(cmdline::value(&line, "role").as_deref(), Some("nested"));
        assert_eq!(cmdline::value(&line, "args").as_deref(), Some("--l2-vms 2"));
    }
}
