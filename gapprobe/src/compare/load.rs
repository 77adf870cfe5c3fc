//! Run sets from gapprobe's own JSON results: a file is one run, a directory holds one run
//! per `*.json` file. Each run is reduced to what compare needs, per unit: the whole run, and
//! for nested runs also each L2 VM.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::guest::nested_result::{NestedResult, NESTED_SCHEMA_VERSION, NESTED_TARGET};
use crate::result::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: not a gapprobe JSON result: {cause}", path.display())]
    NotAResult {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{}: result schema {found}, this gapprobe reads schema {expected}", path.display())]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: unknown target {target:?} (compare reads user and nested results)", path.display())]
    UnknownTarget { path: PathBuf, target: String },
    #[error("{}: elapsed_ns is 0, the run measured nothing", path.display())]
    Empty { path: PathBuf },
    #[error("{}: no *.json result files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
    #[error(
        "cannot compare {} results ({}) with {} results ({})",
        first_target.name(), first.display(), other_target.name(), other.display()
    )]
    MixedTargets {
        first: PathBuf,
        first_target: Target,
        other: PathBuf,
        other_target: Target,
    },
    #[error(
        "gaps per minute would count different gaps: {} has --log-gap {first_ns} ns, {} has {other_ns} ns",
        first.display(), other.display()
    )]
    MixedLogGap {
        first: PathBuf,
        first_ns: u64,
        other: PathBuf,
        other_ns: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The user target, on bare metal or inside L1 (`gapprobe vm` passes its result through).
    User,
    /// `gapprobe vm --nested`: one result per L2 VM.
    Nested,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::User => "user",
            Target::Nested => NESTED_TARGET,
        }
    }
}

/// What a row of the comparison is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unit {
    /// The whole run: every thread, or every L2 VM.
    Run,
    /// One L2 VM of a nested run, by index.
    Vm(usize),
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Run => write!(f, "all"),
            Unit::Vm(index) => write!(f, "vm{index}"),
        }
    }
}

/// One unit's measurements in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSample {
    pub unit: Unit,
    /// Gaps counted for the gaps-per-minute figure (see [`Run::counted_gap_ns`]).
    pub gaps: u64,
    pub worst_gap_ns: u64,
    /// Percentiles of the run's gaps, where the result has them: user results written before
    /// the run-level fields existed have none, nested VMs no p99.9, and nested runs as a
    /// whole none (per-VM percentiles do not combine).
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub p999_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub path: PathBuf,
    pub target: Target,
    pub kernel: String,
    pub elapsed_ns: u64,
    /// User runs count the gaps of at least --log-gap (its `gaps[]` plus `gaps_dropped`);
    /// nested runs count the L2 samples over the L2 threshold (None here).
    pub counted_gap_ns: Option<u64>,
    /// Sorted by unit; a VM that never booted measured nothing and is left out.
    pub units: Vec<UnitSample>,
}

/// The runs given as one command-line argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSet {
    pub argument: PathBuf,
    pub runs: Vec<Run>,
}

/// What makes the runs of every set comparable: one target, one gap-counting threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparable {
    pub target: Target,
    pub counted_gap_ns: Option<u64>,
}

/// The fields of a user result (`result.rs`, schema 1) compare reads.
#[derive(Debug, Deserialize)]
struct UserFile {
    kernel: String,
    log_gap_ns: u64,
    elapsed_ns: u64,
    worst_gap_ns: u64,
    gaps: Vec<IgnoredAny>,
    gaps_dropped: u64,
    // Run-level percentiles came later within schema 1: absent in older files.
    gap_p50_ns: Option<u64>,
    gap_p99_ns: Option<u64>,
    gap_p999_ns: Option<u64>,
}

/// Just enough to know how to read the rest.
#[derive(Debug, Deserialize)]
struct Header {
    schema: u32,
    target: String,
}

/// A file is a set of one run; a directory a set of its `*.json` files, in name order.
pub fn load_set(path: &Path) -> Result<RunSet, LoadError> {
    let read_error = |cause| LoadError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let files = if std::fs::metadata(path).map_err(read_error)?.is_dir() {
        result_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let runs = files
        .iter()
        .map(|file| load_run(file))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunSet {
        argument: path.to_path_buf(),
        runs,
    })
}

fn result_files(directory: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |cause| LoadError::Read {
        path: directory.to_path_buf(),
        cause,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        // Regular files only (through symlinks); `x.json.tmp` of an interrupted write is not
        // a result.
        if path.extension().is_some_and(|ext| ext == "json") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(LoadError::EmptyDirectory {
            path: directory.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

pub fn load_run(path: &Path) -> Result<Run, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|cause| LoadError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    parse_run(path, &text)
}

fn parse_run(path: &Path, text: &str) -> Result<Run, LoadError> {
    let not_a_result = |cause| LoadError::NotAResult {
        path: path.to_path_buf(),
        cause,
    };
    let header: Header = serde_json::from_str(text).map_err(not_a_result)?;
    let (target, expected) = match header.target.as_str() {
        "user" => (Target::User, SCHEMA_VERSION),
        NESTED_TARGET => (Target::Nested, NESTED_SCHEMA_VERSION),
        _ => {
            return Err(LoadError::UnknownTarget {
                path: path.to_path_buf(),
                target: header.target,
            })
        }
    };
    if header.schema != expected {
        return Err(LoadError::Schema {
            path: path.to_path_buf(),
            found: header.schema,
            expected,
        });
    }
    let run = match target {
        Target::User => user_run(path, serde_json::from_str(text).map_err(not_a_result)?),
        Target::Nested => nested_run(path, serde_json::from_str(text).map_err(not_a_result)?),
    };
    if run.elapsed_ns == 0 {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(run)
}

fn user_run(path: &Path, file: UserFile) -> Run {
    Run {
        path: path.to_path_buf(),
        target: Target::User,
        kernel: file.kernel,
        elapsed_ns: file.elapsed_ns,
        counted_gap_ns: Some(file.log_gap_ns),
        units: vec![UnitSample {
            unit: Unit::Run,
            gaps: file.gaps.len() as u64 + file.gaps_dropped,
            worst_gap_ns: file.worst_gap_ns,
            p50_ns: file.gap_p50_ns,
            p99_ns: file.gap_p99_ns,
            p999_ns: file.gap_p999_ns,
        }],
    }
}

fn nested_run(path: &Path, result: NestedResult) -> Run {
    let mut vms: Vec<UnitSample> = result
        .vms
        .iter()
        .filter(|vm| vm.booted)
        .map(|vm| {
            // No samples: no percentiles (the result's zeros are placeholders).
            let sampled = |value| (vm.samples > 0).then_some(value);
            UnitSample {
                unit: Unit::Vm(vm.vm),
                gaps: vm.gaps,
                worst_gap_ns: vm.worst_gap_ns,
                p50_ns: sampled(vm.p50_ns),
                p99_ns: sampled(vm.p99_ns),
                p999_ns: None,
            }
        })
        .collect();
    vms.sort_by_key(|sample| sample.unit);
    let whole = (!vms.is_empty()).then(|| UnitSample {
        unit: Unit::Run,
        gaps: vms.iter().map(|vm| vm.gaps).sum(),
        worst_gap_ns: vms.iter().map(|vm| vm.worst_gap_ns).max().unwrap_or(0),
        p50_ns: None,
        p99_ns: None,
        p999_ns: None,
    });
    Run {
        path: path.to_path_buf(),
        target: Target::Nested,
        kernel: result.kernel,
        elapsed_ns: result.elapsed_ns,
        counted_gap_ns: None,
        units: whole.into_iter().chain(vms).collect(),
    }
}

/// Every run of every set must be of one target and count gaps from one threshold.
pub fn check_comparable(sets: &[RunSet]) -> Result<Comparable, LoadError> {
    let mut runs = sets.iter().flat_map(|set| &set.runs);
    let first = runs
        .next()
        .expect("every set holds at least one run: load_set refuses empty directories");
    for other in runs {
        if other.target != first.target {
            return Err(LoadError::MixedTargets {
                first: first.path.clone(),
                first_target: first.target,
                other: other.path.clone(),
                other_target: other.target,
            });
        }
        if let (Some(first_ns), Some(other_ns)) = (first.counted_gap_ns, other.counted_gap_ns) {
            if first_ns != other_ns {
                return Err(LoadError::MixedLogGap {
                    first: first.path.clone(),
                    first_ns,
                    other: other.path.clone(),
                    other_ns,
                });
            }
        }
    }
    Ok(Comparable {
        target: first.target,
        counted_gap_ns: first.counted_gap_ns,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::guest::nested_result::VmResult;

    /// A user result as `result.rs` writes it, trimmed to a few fields of each kind.
    pub fn user_json(elapsed_ns: u64, worst_gap_ns: u64, logged_gaps: usize) -> String {
        let gaps: Vec<String> = (0..logged_gaps)
            .map(|i| format!(r#"{{"gap_ns":2000000,"tid":7,"cpu":1,"mono_ns":{i},"tsc":9}}"#))
            .collect();
        format!(
            r#"{{"schema":1,"tool_version":"0.1.0","target":"user","kernel":"6.12.0",
            "log_gap_ns":1000000,"elapsed_ns":{elapsed_ns},"worst_gap_ns":{worst_gap_ns},
            "gap_count":500,"gap_p50_ns":2100,"gap_p90_ns":3000,"gap_p99_ns":9000,
            "gap_p999_ns":40000,"threads":[{{"index":0,"gap_p50_ns":1}}],
            "gaps":[{}],"gaps_dropped":3,"trace":null}}"#,
            gaps.join(",")
        )
    }

    fn vm(vm: usize, booted: bool, samples: u64, gaps: u64, worst_gap_ns: u64) -> VmResult {
        VmResult {
            vm,
            booted,
            samples,
            gaps,
            worst_gap_ns,
            p50_ns: 20_000,
            p99_ns: worst_gap_ns,
            exit: None,
        }
    }

    pub fn nested_json(elapsed_ns: u64, vm_worst_ns: &[u64]) -> String {
        let result = NestedResult {
            schema: NESTED_SCHEMA_VERSION,
            target: NESTED_TARGET.to_string(),
            kernel: "6.1.0".to_string(),
            l2_vms: vm_worst_ns.len() as u32 + 1,
            max_gap_ns: 100_000_000,
            elapsed_ns,
            exceeded: false,
            end: "duration".to_string(),
            trigger: None,
            vms: vm_worst_ns
                .iter()
                .enumerate()
                .map(|(index, &worst)| vm(index, true, 5, 2, worst))
                // One VM that never booted: it measured nothing.
                .chain([vm(vm_worst_ns.len(), false, 0, 0, 0)])
                .collect(),
            trace: None,
        };
        serde_json::to_string(&result).unwrap()
    }

    fn parse(text: &str) -> Result<Run, LoadError> {
        parse_run(Path::new("r.json"), text)
    }

    #[test]
    fn user_result_gives_one_unit_with_logged_and_dropped_gaps() {
        let run = parse(&user_json(60_000_000_000, 41_000_000, 2)).unwrap();
        assert_eq!(run.target, Target::User);
        assert_eq!(run.kernel, "6.12.0");
        assert_eq!(run.counted_gap_ns, Some(1_000_000));
        assert_eq!(
            run.units,
            vec![UnitSample {
                unit: Unit::Run,
                gaps: 5,
                worst_gap_ns: 41_000_000,
                p50_ns: Some(2100),
                p99_ns: Some(9000),
                p999_ns: Some(40000),
            }]
        );
    }

    #[test]
    fn user_result_without_run_percentiles_still_loads() {
        let text = user_json(1_000, 5, 0)
            .replace(r#""gap_p50_ns":2100,"#, "")
            .replace(r#""gap_p999_ns":40000,"#, "");
        let run = parse(&text).unwrap();
        assert_eq!(run.units[0].p50_ns, None);
        assert_eq!(run.units[0].p999_ns, None);
        assert_eq!(run.units[0].p99_ns, Some(9000));
    }

    #[test]
    fn nested_result_gives_the_run_and_each_booted_vm() {
        let run = parse(&nested_json(10_000_000_000, &[30_000, 130_000_000])).unwrap();
        assert_eq!(run.target, Target::Nested);
        assert_eq!(run.counted_gap_ns, None);
        let units: Vec<Unit> = run.units.iter().map(|unit| unit.unit).collect();
        assert_eq!(units, vec![Unit::Run, Unit::Vm(0), Unit::Vm(1)]);
        assert_eq!(run.units[0].worst_gap_ns, 130_000_000);
        assert_eq!(run.units[0].gaps, 4);
        assert_eq!(run.units[0].p50_ns, None);
        assert_eq!(run.units[2].p99_ns, Some(130_000_000));
        assert_eq!(run.units[2].p999_ns, None);
    }

    #[test]
    fn bad_files_are_named_with_their_reason() {
        let message = |text: &str| parse(text).unwrap_err().to_string();
        assert!(message("not json").starts_with("r.json: not a gapprobe JSON result: "));
        assert!(message(r#"{"schema":1}"#).contains("missing field `target`"));
        assert_eq!(
            message(&user_json(1, 1, 0).replacen(r#""schema":1"#, r#""schema":2"#, 1)),
            "r.json: result schema 2, this gapprobe reads schema 1"
        );
        assert_eq!(
            message(r#"{"schema":1,"target":"hwlat"}"#),
            r#"r.json: unknown target "hwlat" (compare reads user and nested results)"#
        );
        assert_eq!(
            message(&user_json(0, 1, 0)),
            "r.json: elapsed_ns is 0, the run measured nothing"
        );
        assert!(message(r#"{"schema":1,"target":"user"}"#).contains("missing field"));
    }

    #[test]
    fn directories_hold_one_run_per_json_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2.json"), user_json(2, 20, 0)).unwrap();
        std::fs::write(dir.path().join("1.json"), user_json(1, 10, 0)).unwrap();
        std::fs::write(dir.path().join("3.json.tmp"), "half").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kernel A").unwrap();
        std::fs::create_dir(dir.path().join("old.json")).unwrap();
        let set = load_set(dir.path()).unwrap();
        let elapsed: Vec<u64> = set.runs.iter().map(|run| run.elapsed_ns).collect();
        assert_eq!(elapsed, vec![1, 2]);

        let single = load_set(&dir.path().join("2.json")).unwrap();
        assert_eq!(single.runs.len(), 1);

        let empty = tempfile::tempdir().unwrap();
        let message = load_set(empty.path()).unwrap_err().to_string();
        assert!(message.ends_with(": no *.json result files in this directory"));
        let missing = load_set(&dir.path().join("none")).unwrap_err().to_string();
        assert!(message.lines().count() == 1 && missing.contains("none: cannot read: "));
    }

    #[test]
    fn targets_and_gap_thresholds_must_match() {
        let set = |name: &str, text: &str| RunSet {
            argument: PathBuf::from(name),
            runs: vec![parse_run(Path::new(name), text).unwrap()],
        };
        let user = set("u.json", &user_json(1, 1, 0));
        let nested = set("n.json", &nested_json(1, &[1]));
        assert_eq!(
            check_comparable(&[user.clone(), user.clone()]).unwrap(),
            Comparable {
                target: Target::User,
                counted_gap_ns: Some(1_000_000)
            }
        );
        assert_eq!(
            check_comparable(&[user.clone(), nested])
                .unwrap_err()
                .to_string(),
            "cannot compare user results (u.json) with nested results (n.json)"
        );
        let coarser = set(
            "c.json",
            &user_json(1, 1, 0).replace("\"log_gap_ns\":1000000", "\"log_gap_ns\":5000000"),
        );
        assert_eq!(
            check_comparable(&[user, coarser]).unwrap_err().to_string(),
            "gaps per minute would count different gaps: u.json has --log-gap 1000000 ns, c.json has 5000000 ns"
        );
    }
}
