//! l1-harness: a minimal KVM VMM that boots stock x86_64 Linux kernels (bzImage, 64-bit
//! boot protocol) with an SMT vCPU topology, a serial console, ACPI power-off, a dump region
//! shared with a host file, a watchdog and a performance mode.

pub mod acpi;
mod boot;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod cpuid;
mod dump_region;
pub mod error;
mod exits;
mod host_symbols;
pub mod host_topology;
pub mod layout;
mod memory;
pub mod perf_mode;
mod serial;
mod vcpu;
mod vm;
mod watchdog;

pub use config::{DumpConfig, KernelImage, Placement, VmConfig};
pub use console::{ConsoleSink, LineSender};
pub use error::VmmError;
pub use host_symbols::HOST_STATE_IN_GUEST;
pub use vm::{Vm, VmExit, VmStopHandle};
