//! What to boot and how: everything `Vm::new` needs, checked before any KVM call.

use std::path::PathBuf;
use std::time::Duration;

use crate::console::ConsoleSink;

/// The image the guest starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelImage {
    /// An x86 bzImage, entered through the 64-bit boot protocol.
    BzImage(PathBuf),
    /// 64-bit machine code loaded at `HIMEM_START` and entered there in long mode with the
    /// same GDT, page tables and zero page a kernel gets (for probes and VMM self-tests).
    Flat64(Vec<u8>),
}

/// A host file shared with the guest as physical memory outside e820 RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpConfig {
    pub path: PathBuf,
    pub size: u64,
}

/// How vCPU threads are placed on host CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the host scheduler puts them.
    #[default]
    Floating,
    /// vCPU 2k and 2k+1 pinned to the two threads of one host core (as in performance
    /// mode, without the rest of it).
    Pinned,
    /// Performance mode: pinning, hugepages, mbind, SCHED_FIFO, HLT/PAUSE exits disabled,
    /// KVM_HINTS_REALTIME. Refuses to run unisolated.
    Performance,
}

pub struct VmConfig {
    pub kernel: KernelImage,
    pub initrd: Option<PathBuf>,
    /// The user's part of the command line; the VMM adds its own items.
    pub cmdline: String,
    pub vcpus: u32,
    pub threads_per_core: u32,
    pub mem_bytes: u64,
    /// Stop the guest after this long (the watchdog); `None` waits forever.
    pub timeout: Option<Duration>,
    /// Expose SVM/VMX so the guest can run KVM.
    pub nested: bool,
    pub dump: Option<DumpConfig>,
    pub placement: Placement,
    pub console: Box<dyn ConsoleSink>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("vcpus", &self.vcpus)
            .field("threads_per_core", &self.threads_per_core)
            .field("mem_bytes", &self.mem_bytes)
            .field("timeout", &self.timeout)
            .field("nested", &self.nested)
            .field("dump", &self.dump)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}
