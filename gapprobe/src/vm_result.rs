//! What the host does with L1's results once the VM is gone: cut the JSON result out of the
//! dump file, leave only the trace there, and summarise the result for the user.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::report::ms;
use crate::vm_console::DumpContents;

#[derive(Debug, thiserror::Error)]
pub enum VmResultError {
    #[error("dump file {}: {reason}", path.display())]
    DumpFile { path: PathBuf, reason: String },
    #[error("--json {}: {reason}", path.display())]
    JsonFile {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("L1's JSON result: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the JSON result the guest put after the trace, then truncates the dump file to the
/// trace. Returns the JSON bytes.
pub fn split_dump_file(path: &Path, contents: DumpContents) -> Result<Vec<u8>, VmResultError> {
    let fail = |reason: String| VmResultError::DumpFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| fail(format!("cannot open: {err}")))?;
    let size = file
        .metadata()
        .map_err(|err| fail(format!("cannot stat: {err}")))?
        .len();
    let end = contents.trace.checked_add(contents.json);
    if end.is_none_or(|end| end > size) {
        return Err(fail(format!(
            "the guest announced trace={} json={}, more than the {size} bytes of the region",
            contents.trace, contents.json
        )));
    }
    let json_len = usize::try_from(contents.json)
        .map_err(|_| fail(format!("json={} is too large", contents.json)))?;
    let mut json = vec![0; json_len];
    file.seek(SeekFrom::Start(contents.trace))
        .and_then(|_| file.read_exact(&mut json))
        .map_err(|err| fail(format!("cannot read the JSON result: {err}")))?;
    file.set_len(contents.trace)
        .map_err(|err| fail(format!("cannot truncate to the trace: {err}")))?;
    Ok(json)
}

/// Writes the guest's JSON result unchanged, through a temporary file so readers never see
/// half of it.
pub fn write_json(path: &Path, json: &[u8]) -> Result<(), VmResultError> {
    let fail = |reason| VmResultError::JsonFile {
        path: path.to_path_buf(),
        reason,
    };
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, json).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// The fields of the user role's result (`result.rs`) the host summary reads.
#[derive(Debug, Deserialize)]
pub struct UserResult {
    pub max_gap_ns: u64,
    pub elapsed_ns: u64,
    pub exceeded: bool,
    pub worst_gap_ns: u64,
    pub trigger: Option<UserTrigger>,
}

#[derive(Debug, Deserialize)]
pub struct UserTrigger {
    pub gap_ns: u64,
    pub tid: i32,
    pub cpu: i32,
}

/// The nested role's result: the type L1 serialises is the one the host reads.
pub use crate::guest::nested_result::NestedResult;

/// Where the trace went, for the `result:` line.
#[derive(Debug, Clone, Copy)]
pub struct TraceFile<'a> {
    pub path: &'a Path,
    pub bytes: u64,
}

impl std::fmt::Display for TraceFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.bytes == 0 {
            write!(f, "no trace")
        } else {
            write!(f, "trace: {} bytes in {}", self.bytes, self.path.display())
        }
    }
}

/// The host's closing line for the user target inside L1.
pub fn user_result_line(result: &UserResult, trace: TraceFile) -> String {
    match (&result.trigger, result.exceeded) {
        (Some(trigger), true) => format!(
            "result: gap of {} in L1 (tid {} on cpu {}) over --max-gap {}; {trace}",
            ms(trigger.gap_ns),
            trigger.tid,
            trigger.cpu,
            ms(result.max_gap_ns)
        ),
        _ => format!(
            "result: no gap over --max-gap {} in L1 in {:.1} s (worst {}); {trace}",
            ms(result.max_gap_ns),
            result.elapsed_ns as f64 / 1e9,
            ms(result.worst_gap_ns)
        ),
    }
}

/// One line per L2: `vm<i>: <gaps> gaps over <threshold>, worst <x> ms, p99 <y> ms`.
pub fn l2_summary_lines(result: &NestedResult, threshold_ns: u64) -> Vec<String> {
    result
        .vms
        .iter()
        .map(|vm| {
            let mut line = format!(
                "vm{}: {} gaps over {}, worst {}, p99 {}",
                vm.vm,
                vm.gaps,
                ms(threshold_ns),
                ms(vm.worst_gap_ns),
                ms(vm.p99_ns)
            );
            if !vm.booted {
                line.push_str(" (did not boot)");
            } else if vm.samples == 0 {
                line.push_str(" (no samples)");
            }
            if let Some(exit) = &vm.exit {
                line.push_str(&format!(", exit {exit}"));
            }
            line
        })
        .collect()
}

/// The host's closing line for the kvm target.
pub fn nested_result_line(result: &NestedResult, trace: TraceFile) -> String {
    match (&result.trigger, result.exceeded) {
        (Some(trigger), true) => format!(
            "result: gap of {} in vm{} over --max-gap {} ({} L2 VMs, {:.1} s); {trace}",
            ms(trigger.gap_ns),
            trigger.vm,
            ms(result.max_gap_ns),
            result.l2_vms,
            result.elapsed_ns as f64 / 1e9
        ),
        _ => format!(
            "result: no gap over --max-gap {} in {} L2 VMs in {:.1} s (end: {}); {trace}",
            ms(result.max_gap_ns),
            result.l2_vms,
            result.elapsed_ns as f64 / 1e9,
            result.end
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED_JSON: &str = r#"{"schema":1,"target":"nested","kernel":"6.1.0","l2_vms":2,
        "max_gap_ns":50000000,"elapsed_ns":12500000000,"exceeded":true,"end":"exceeded",
        "trigger":{"vm":1,"gap_ns":61234567},
        "vms":[{"vm":0,"booted":true,"samples":20,"gaps":3,"worst_gap_ns":1500000,
                "p50_ns":20000,"p99_ns":1400000,"exit":"poweroff"},
               {"vm":1,"booted":false,"samples":0,"gaps":0,"worst_gap_ns":0,
                "p50_ns":0,"p99_ns":0,"exit":null}],
        "trace":{"dump_bytes":100,"dump_complete":true}}"#;

    #[test]
    fn splits_json_from_trace_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut region = b"trace text\n{\"a\":1}".to_vec();
        region.resize(4096, 0);
        std::fs::write(&path, &region).unwrap();
        let json = split_dump_file(&path, DumpContents { trace: 11, json: 7 }).unwrap();
        assert_eq!(json, b"{\"a\":1}");
        assert_eq!(std::fs::read(&path).unwrap(), b"trace text\n");
    }

    #[test]
    fn refuses_contents_beyond_the_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, [0u8; 64]).unwrap();
        for contents in [
            DumpContents { trace: 60, json: 5 },
            DumpContents {
                trace: u64::MAX,
                json: 1,
            },
        ] {
            let err = split_dump_file(&path, contents).unwrap_err().to_string();
            assert!(err.contains("64 bytes"), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64, "left as found");
    }

    #[test]
    fn nested_summary_lines() {
        let result: NestedResult = serde_json::from_str(NESTED_JSON).unwrap();
        assert_eq!(
            l2_summary_lines(&result, 10_000),
            [
                "vm0: 3 gaps over 0.010 ms, worst 1.500 ms, p99 1.400 ms, exit poweroff",
                "vm1: 0 gaps over 0.010 ms, worst 0.000 ms, p99 0.000 ms (did not boot)",
            ]
        );
        let trace = TraceFile {
            path: Path::new("/dev/shm/log"),
            bytes: 100,
        };
        assert_eq!(
            nested_result_line(&result, trace),
            "result: gap of 61.234 ms in vm1 over --max-gap 50.000 ms (2 L2 VMs, 12.5 s); \
             trace: 100 bytes in /dev/shm/log"
        );
    }

    #[test]
    fn user_result_lines() {
        let clean: UserResult = serde_json::from_str(
            r#"{"max_gap_ns":100000000,"elapsed_ns":3000000000,"exceeded":false,
                "worst_gap_ns":2500000,"trigger":null,"extra":"ignored"}"#,
        )
        .unwrap();
        let none = TraceFile {
            path: Path::new("/dev/shm/log"),
            bytes: 0,
        };
        assert_eq!(
            user_result_line(&clean, none),
            "result: no gap over --max-gap 100.000 ms in L1 in 3.0 s (worst 2.500 ms); no trace"
        );
        let gap: UserResult = serde_json::from_str(
            r#"{"max_gap_ns":1000000,"elapsed_ns":1000000000,"exceeded":true,
                "worst_gap_ns":4000000,"trigger":{"kind":"gap","tid":42,"cpu":3,
                "gap_ns":4000000,"unfinished":false}}"#,
        )
        .unwrap();
        assert!(user_result_line(&gap, none).starts_with(
            "result: gap of 4.000 ms in L1 (tid 42 on cpu 3) over --max-gap 1.000 ms"
        ));
    }
}
