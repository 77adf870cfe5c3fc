//! Typed errors of the VMM: each names what was being done and, where there is one, the path.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot open {}: {reason}", path.display())]
    Open {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadImage { path: PathBuf, reason: String },
    #[error("{what} does not fit in guest memory: {reason}")]
    DoesNotFit { what: &'static str, reason: String },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("KVM {what} failed: {reason}")]
    Kvm {
        what: &'static str,
        reason: kvm_ioctls::Error,
    },
    #[error("{what} failed: {reason}")]
    Host {
        what: &'static str,
        reason: std::io::Error,
    },
    #[error("dump region {}: {reason}", path.display())]
    DumpRegion { path: PathBuf, reason: String },
    #[error("performance mode cannot be honoured: {0}")]
    PerfModeUnavailable(String),
    /// Not a failure of the VM: its owner ended the run with a [`crate::VmStopHandle`].
    #[error("the VM was stopped by its owner")]
    Stopped,
}

impl VmmError {
    /// Wraps a failed KVM ioctl, naming the call.
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |reason| VmmError::Kvm { what, reason }
    }

    /// Wraps a failed host system call, naming it.
    pub(crate) fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |reason| VmmError::Host { what, reason }
    }
}
