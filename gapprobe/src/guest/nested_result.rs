//! The nested role's JSON result (schema 1): what L1 writes after the trace in the dump
//! region and the host reads back. Field names are the kvm target's contract; the README
//! documents them.

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning or goes away.
pub const NESTED_SCHEMA_VERSION: u32 = 1;
pub const NESTED_TARGET: &str = "nested";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedResult {
    pub schema: u32,
    /// Always `nested`.
    pub target: String,
    /// L1's kernel release.
    pub kernel: String,
    pub l2_vms: u32,
    pub max_gap_ns: u64,
    pub elapsed_ns: u64,
    pub exceeded: bool,
    /// `duration`, `exceeded`, `signal` or `error` (every L2 ended before the run did).
    pub end: String,
    pub trigger: Option<NestedTrigger>,
    pub vms: Vec<VmResult>,
    /// The L1 trace in the dump region; null when none was dumped (no gap).
    pub trace: Option<NestedTrace>,
}

/// The L2 sample that ended the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedTrigger {
    pub vm: usize,
    pub gap_ns: u64,
}

/// One L2 guest; a sample's gap is max(inner, outer) of its hwlat line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResult {
    pub vm: usize,
    /// Its gapprobe reached userspace (printed its ready line or a sample).
    pub booted: bool,
    /// hwlat lines received.
    pub samples: u64,
    /// Lines whose gap is over the L2's threshold.
    pub gaps: u64,
    pub worst_gap_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// How the guest ended: null while it still ran at the end, else `poweroff`, `reset`,
    /// `panic`, `timeout`, `crash` or `error` (it could not be started).
    pub exit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedTrace {
    pub dump_bytes: u64,
    /// False when tracefs could not give everything or the dump region cut it.
    pub dump_complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_contracts() {
        let result = NestedResult {
            schema: NESTED_SCHEMA_VERSION,
            target: NESTED_TARGET.to_string(),
            kernel: "6.1.0".to_string(),
            l2_vms: 1,
            max_gap_ns: 100_000_000,
            elapsed_ns: 5,
            exceeded: true,
            end: "exceeded".to_string(),
            trigger: Some(NestedTrigger {
                vm: 0,
                gap_ns: 130_000_000,
            }),
            vms: vec![VmResult {
                vm: 0,
                booted: true,
                samples: 3,
                gaps: 2,
                worst_gap_ns: 130_000_000,
                p50_ns: 12_000,
                p99_ns: 130_000_000,
                exit: None,
            }],
            trace: Some(NestedTrace {
                dump_bytes: 42,
                dump_complete: true,
            }),
        };
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(
            json,
            r#"{"schema":1,"target":"nested","kernel":"6.1.0","l2_vms":1,"max_gap_ns":100000000,"elapsed_ns":5,"exceeded":true,"end":"exceeded","trigger":{"vm":0,"gap_ns":130000000},"vms":[{"vm":0,"booted":true,"samples":3,"gaps":2,"worst_gap_ns":130000000,"p50_ns":12000,"p99_ns":130000000,"exit":null}],"trace":{"dump_bytes":42,"dump_complete":true}}"#
        );
        let back: NestedResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);
    }
}
