//! What PID 1 must do for itself in an empty initramfs: mount the kernel file systems, load
//! modules, and power the machine off (the exit status travels on the console, see `mod.rs`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, MsFlags};

/// Where the L1 initramfs keeps the modules named by `gapprobe.modules=`.
pub const MODULES_DIR: &str = "/modules";

/// (source, target, fstype): what the roles need, in mount order.
const MOUNTS: &[(&str, &str, &str)] = &[
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
    ("tmpfs", "/tmp", "tmpfs"),
    ("tracefs", "/sys/kernel/tracing", "tracefs"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
];

/// Mounts what exists in this kernel; a missing optional file system is a note, not an error
/// (tracefs and cgroup2 depend on the kernel's config; the roles say what they lack).
pub fn mount_all() -> anyhow::Result<()> {
    for &(source, target, fstype) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        let result = mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        );
        match result {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(err) if target == "/proc" => {
                return Err(err).context("mount /proc");
            }
            Err(err) => println!("gapprobe-guest: note: mount {fstype} on {target}: {err}"),
        }
    }
    Ok(())
}

/// Loads each module from MODULES_DIR in order with finit_module(2) (no modprobe here).
pub fn load_modules(names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        let path = Path::new(MODULES_DIR).join(name);
        let file = File::open(&path).with_context(|| format!("module {}", path.display()))?;
        let params = CString::default();
        // SAFETY: finit_module with an open fd, an empty parameter string and no flags.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(err).with_context(|| format!("finit_module {}", path.display()));
            }
        }
    }
    Ok(())
}

/// Powers the guest off; never returns. If the kernel refuses, a reset still ends the VM, and
/// if that fails too, returning from PID 1 makes the kernel panic, which the VMM also sees.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; PID 1 may call them.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}
