//! `gapprobe boot`: the VMM as a plain command. Boots a kernel and exits 0 when the guest
//! powers off (or resets) cleanly, 1 when it panics, crashes or outlives `--timeout`,
//! 125 when `--perf-mode` cannot be honoured (unless `--no-skip`), 2 on bad input.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use l1_harness::{DumpConfig, KernelImage, Placement, Vm, VmConfig, VmExit, VmmError};

use crate::exit::Outcome;

/// Default place of the dump region's host file (where schedgaps left its trace).
const DEFAULT_DUMP_PATH: &str = "/dev/shm/log";

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Kernel image (bzImage) [default: /boot/vmlinuz-$(uname -r)]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (newc cpio, optionally compressed as the kernel supports)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line; `console=ttyS0` and `gapprobe.dump=ADDR,SIZE` are added
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    append: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// SMT threads per guest core (vCPUs are laid out as cores x threads)
    #[arg(long, default_value_t = 2)]
    threads_per_core: u32,
    /// Guest memory, e.g. 512M or 2G
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    mem: u64,
    /// Stop the guest and fail after this long, e.g. 90s or 5min
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Performance mode: vCPUs on host SMT sibling pairs, SCHED_FIFO, hugepages, no
    /// HLT/PAUSE exits, KVM_HINTS_REALTIME; SKIP (exit 125) when the host cannot do it
    #[arg(long)]
    perf_mode: bool,
    /// With --perf-mode: fail (exit 1) instead of skipping when it cannot be honoured
    #[arg(long, requires = "perf_mode")]
    no_skip: bool,
    /// Pin vCPU threads (vCPU 2k, 2k+1 on the two threads of one host core when possible)
    #[arg(long)]
    pin: bool,
    /// Expose SVM/VMX so the guest can run KVM itself
    #[arg(long)]
    nested: bool,
    /// Host file backing the dump region (created 0600; emptied at start)
    #[arg(long, default_value = DEFAULT_DUMP_PATH)]
    dump: PathBuf,
    /// Size of the dump region, e.g. 64M
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    dump_size: u64,
    /// Write the guest console to this file instead of stdout
    #[arg(long)]
    console: Option<PathBuf>,
}

pub fn run(args: &BootArgs) -> anyhow::Result<Outcome> {
    let kernel = match &args.kernel {
        Some(path) => path.clone(),
        None => running_kernel_image()?,
    };
    let console: Box<dyn l1_harness::ConsoleSink> = match &args.console {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let placement = if args.perf_mode {
        Placement::Performance
    } else if args.pin {
        Placement::Pinned
    } else {
        Placement::Floating
    };
    let config = VmConfig {
        kernel: KernelImage::BzImage(kernel),
        initrd: args.initrd.clone(),
        cmdline: args.append.clone(),
        vcpus: args.vcpus,
        threads_per_core: args.threads_per_core,
        mem_bytes: args.mem,
        timeout: args.timeout,
        nested: args.nested,
        dump: Some(DumpConfig {
            path: args.dump.clone(),
            size: args.dump_size,
        }),
        placement,
        console,
    };

    let started = Instant::now();
    let vm = match Vm::new(config) {
        Ok(vm) => vm,
        Err(VmmError::PerfModeUnavailable(reason)) if !args.no_skip => {
            eprintln!("SKIP: {reason}");
            return Ok(Outcome::CannotTest);
        }
        Err(VmmError::PerfModeUnavailable(reason)) => {
            eprintln!("gapprobe: performance mode cannot be honoured: {reason}");
            return Ok(Outcome::Failed);
        }
        Err(err) => return Err(err.into()),
    };
    for note in vm.notes() {
        eprintln!("gapprobe: {note}");
    }
    let exit = vm.run(|note| eprintln!("gapprobe: {note}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let (outcome, message) = match exit {
        VmExit::PowerOff => (Outcome::Clean, "guest powered off".to_string()),
        VmExit::Reset => (Outcome::Clean, "guest reset the machine".to_string()),
        VmExit::Panic(line) => (Outcome::Failed, format!("guest kernel panic: {line}")),
        VmExit::Timeout(limit) => (
            Outcome::Failed,
            format!(
                "guest still running at --timeout {}; stopped it",
                humantime::format_duration(limit)
            ),
        ),
        VmExit::Crash(reason) => (Outcome::Failed, format!("guest crashed: {reason}")),
    };
    eprintln!("gapprobe: {message} after {seconds:.1} s");
    Ok(outcome)
}

/// `/boot/vmlinuz-$(uname -r)`, if it is readable.
fn running_kernel_image() -> anyhow::Result<PathBuf> {
    let release = nix::sys::utsname::uname().context("uname")?;
    let release = release.release().to_string_lossy().into_owned();
    let path = Path::new("/boot").join(format!("vmlinuz-{release}"));
    File::open(&path).with_context(|| {
        format!(
            "no --kernel given and the running kernel's image {} is not readable",
            path.display()
        )
    })?;
    Ok(path)
}

/// Parses sizes like `4096`, `512K`, `512M`, `2G` (binary multiples; `B`/`iB` accepted).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let number = lower.trim_end_matches('b').trim_end_matches('i');
    let (digits, shift) = match number.chars().last() {
        Some('k') => (&number[..number.len() - 1], 10),
        Some('m') => (&number[..number.len() - 1], 20),
        Some('g') => (&number[..number.len() - 1], 30),
        Some('t') => (&number[..number.len() - 1], 40),
        _ => (number, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{trimmed:?} is not a size like 512M or 2G"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{trimmed:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
