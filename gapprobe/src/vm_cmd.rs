//! `gapprobe vm`: the user target inside the kernel under test (booted as L1 by our VMM), and
//! with `--nested` the kvm target (L1 runs `--l2-vms` L2 guests with the hwlat-style
//! detector). The host builds the images, boots L1, relays its report lines, and turns what
//! L1 leaves in the dump region into the trace file and the `--json` result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use l1_harness::host_topology::HostTopology;
use l1_harness::{DumpConfig, KernelImage, LineSender, Placement, Vm, VmConfig, VmExit, VmmError};

use crate::boot::parse_size;
use crate::cli::{parse_duration, RunArgs};
use crate::exit::{Outcome, EXIT_CANNOT_TEST, EXIT_CLEAN, EXIT_FAILED};
use crate::vm_console::{classify, ConsoleLine, DumpContents};
use crate::vm_guest_args::{l1_cmdline, nested_role_args, user_role_args, NestedPlan};
use crate::vm_images::{
    check_modules, check_readable_file, plan_memory, write_l1_image, write_l2_image, L1Contents,
    MemoryNeeds,
};
use crate::vm_result::{
    l2_summary_lines, nested_result_line, split_dump_file, user_result_line, write_json,
    NestedResult, TraceFile, UserResult,
};

/// Each L2's hwlat-style detector reports samples over this (the kvm-target contract: L1
/// gives every L2 `--threshold 10us`); the per-VM summary counts them as gaps.
const L2_HWLAT_THRESHOLD_NS: u64 = 10_000;
/// How often the console loop looks at the boot deadline and the VM thread when L1 is quiet.
const CONSOLE_POLL: Duration = Duration::from_millis(100);

/// Boot the kernel under test as L1 with our VMM and run the user target inside it (with
/// --nested, the kvm target: L1 runs --l2-vms L2 guests).
///
/// The detector options below are those of `gapprobe run` and go to the detector inside L1
/// (with --nested: --max-gap, --duration, --events, --buffer-kb, and --cpus as the L1 CPUs
/// of the L2 vCPU threads). Inside L1, --pin pins the busy threads to L1's CPUs; where the
/// vCPU threads run on this host is --placement. --dump and --json are files on this host:
/// the trace L1 dumps lands in --dump (truncated to the trace), its JSON result in --json.
/// --quiet prints only the result here.
///
/// Exit codes: 0 no gap, 1 gap found (the guest's own code), 2 bad input or an error inside
/// L1, 125 (`SKIP: <reason>`) the kernel under test did not boot: it panicked, powered off
/// without a result, or its /init printed nothing within --boot-timeout (with --nested also
/// when no L2 guest booted and so nothing was measured).
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel under test (bzImage), booted as L1.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// The kvm target: L1 becomes the VMM of --l2-vms L2 guests (2 vCPUs each) that run the
    /// hwlat-style detector; L1 relays their lines as `vm<i>: ...`.
    #[arg(long)]
    nested: bool,

    /// Kernel of the L2 guests [default: --kernel].
    #[arg(long, value_name = "PATH", requires = "nested")]
    l2_kernel: Option<PathBuf>,

    /// Number of L2 guests.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "nested",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    l2_vms: u32,

    /// Memory of each L2 guest [default: 256M, or L1's --mem shared out].
    #[arg(long, value_name = "SIZE", requires = "nested", value_parser = parse_size)]
    l2_mem: Option<u64>,

    /// Kernel modules (uncompressed .ko files, comma separated) that L1's /init loads in this
    /// order before anything else, e.g. irqbypass.ko,kvm.ko,kvm-amd.ko for --nested on a
    /// distribution kernel that builds KVM as modules.
    #[arg(long, value_name = "A.ko,B.ko", value_delimiter = ',')]
    modules: Vec<PathBuf>,

    /// L1's vCPUs, laid out as cores x --threads-per-core.
    #[arg(long, value_name = "N", default_value_t = 4)]
    vcpus: u32,

    /// SMT threads per L1 core.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads_per_core: u32,

    /// L1's memory, e.g. 2G [default: 1G; with --nested what the L2s and L1 need].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    mem: Option<u64>,

    /// Where L1's vCPU threads run on this host: perf (performance mode: SMT sibling pairs,
    /// SCHED_FIFO, hugepages; SKIP if the host cannot), pinned, floating, or auto (perf when
    /// the host allows it, else pinned when it has a CPU per vCPU, else floating).
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    placement: PlacementChoice,

    /// More words for L1's kernel command line.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    append: String,

    /// SKIP (exit 125) when L1's /init has printed nothing this long after the start.
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    boot_timeout: Duration,

    /// Stop L1 after this long in all (a hang is a SKIP like a failed boot) [default: none].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Size of the dump region (the most trace plus JSON L1 can hand over).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    dump_size: u64,

    #[command(flatten)]
    detector: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlacementChoice {
    Auto,
    Perf,
    Pinned,
    Floating,
}

pub fn run(args: &VmArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let prepared = prepare(args)?;
    let dump_path = args.detector.dump.clone();
    // The host removes a dump file it created when L1 leaves no trace in it.
    let dump_existed = dump_path.symlink_metadata().is_ok();
    let (sender, lines) = channel();
    let vm = match new_vm(args, &prepared, &sender) {
        Ok(Some(vm)) => vm,
        Ok(None) => return Ok(Outcome::CannotTest),
        Err(err) => {
            // Vm::new may have created the dump file before it failed.
            let _ = finish_dump_file(&dump_path, dump_existed, None);
            return Err(err);
        }
    };
    drop(sender);
    // Vm::new copied the images into guest memory.
    drop(prepared.workdir);
    for note in vm.notes() {
        eprintln!("gapprobe: {note}");
    }
    let vm_thread = std::thread::Builder::new()
        .name("vmm".to_string())
        .spawn(move || vm.run(|note| eprintln!("gapprobe: {note}")))
        .context("spawning the VMM thread")?;

    let watch = ConsoleWatch::new(started, args.boot_timeout, args.detector.quiet);
    let console = match watch.follow(lines, &vm_thread) {
        Ok(console) => console,
        Err(BootTimedOut) => skip_after_boot_timeout(args, &dump_path, dump_existed),
    };
    let exit = vm_thread.join();
    let seconds = started.elapsed().as_secs_f64();
    let json = finish_dump_file(&dump_path, dump_existed, console.dump)?;
    let exit = exit.map_err(|_| anyhow::anyhow!("the VMM thread panicked"))??;
    let Some(code) = console.exit else {
        eprintln!("SKIP: {} after {seconds:.1} s", no_result_reason(&exit));
        return Ok(Outcome::CannotTest);
    };
    if exit != VmExit::PowerOff {
        eprintln!("gapprobe: note: after its result L1 ended with {exit:?}");
    }
    eprintln!("gapprobe: L1 finished in {seconds:.1} s");
    if let (Some(path), Some(json)) = (&args.detector.json, &json) {
        write_json(path, json)?;
    }
    let trace = TraceFile {
        path: &dump_path,
        bytes: console.dump.map_or(0, |dump| dump.trace),
    };
    match json
        .as_deref()
        .map(|json| print_summary(args.nested, json, trace))
    {
        Some(Ok(Some(0))) if code == EXIT_CLEAN => {
            // "No gap" from L2s that never ran their detector would be a false pass.
            eprintln!("SKIP: no L2 guest reached its hwlat role, so nothing was measured");
            return Ok(Outcome::CannotTest);
        }
        Some(Ok(_)) => {}
        // The guest's exit code still stands; only the summary is lost.
        Some(Err(err)) => eprintln!("gapprobe: warning: no summary: {err:#}"),
        None => eprintln!("gapprobe: note: L1 left no JSON result in the dump region"),
    }
    match code {
        EXIT_CLEAN => Ok(Outcome::Clean),
        EXIT_FAILED => Ok(Outcome::Failed),
        EXIT_CANNOT_TEST => Ok(Outcome::CannotTest),
        code => bail!("gapprobe in L1 ended with exit code {code} (its error is printed above)"),
    }
}

/// Everything decided and written before L1 boots.
struct Prepared {
    /// Holds the images until the VMM has loaded them.
    workdir: tempfile::TempDir,
    l1_image: PathBuf,
    mem: u64,
    cmdline: String,
}

/// Checks the input and writes the images; every failure here is bad input (exit 2).
fn prepare(args: &VmArgs) -> anyhow::Result<Prepared> {
    check_readable_file(&args.kernel, "--kernel")?;
    let l2_kernel = args.nested.then(|| {
        args.l2_kernel
            .clone()
            .unwrap_or_else(|| args.kernel.clone())
    });
    if let Some(kernel) = &l2_kernel {
        check_readable_file(kernel, "--l2-kernel")?;
    }
    let module_names = check_modules(&args.modules)?;
    let init = std::env::current_exe().context("locating the running gapprobe for /init")?;
    let workdir = tempfile::Builder::new()
        .prefix("gapprobe-vm-")
        .tempdir()
        .context("creating a directory for the guest images")?;

    let l2_image = workdir.path().join("l2.cpio");
    let l2 = match &l2_kernel {
        Some(kernel) => {
            let image_bytes = write_l2_image(&init, &l2_image)?;
            let kernel_bytes = std::fs::metadata(kernel)
                .with_context(|| format!("{}", kernel.display()))?
                .len();
            Some((
                kernel.as_path(),
                l2_image.as_path(),
                kernel_bytes + image_bytes,
            ))
        }
        None => None,
    };
    let l1_image = workdir.path().join("l1.cpio");
    let contents = L1Contents {
        modules: &args.modules,
        module_names: &module_names,
        l2: l2.map(|(kernel, image, _)| (kernel, image)),
    };
    let l1_bytes = write_l1_image(&init, &contents, &l1_image)?;
    let memory = plan_memory(MemoryNeeds {
        l1_image: l1_bytes,
        trace_buffers: args
            .detector
            .buffer_kb
            .saturating_mul(1024)
            .saturating_mul(u64::from(args.vcpus)),
        mem: args.mem,
        nested: l2.map(|(_, _, payload)| (args.l2_vms, args.l2_mem, payload)),
    })?;
    let (role, role_args) = match memory.l2_mem {
        Some(l2_mem) => {
            let plan = NestedPlan {
                l2_vms: args.l2_vms,
                l2_mem,
            };
            ("nested", nested_role_args(&args.detector, &plan)?)
        }
        None => ("user", user_role_args(&args.detector)?),
    };
    let cmdline = l1_cmdline(role, &role_args, &module_names, &args.append);
    Ok(Prepared {
        workdir,
        l1_image,
        mem: memory.l1_mem,
        cmdline,
    })
}

/// Sets up L1 with the first placement the host allows; `None` when --placement perf was
/// asked for and cannot be had (after printing `SKIP:`).
fn new_vm(
    args: &VmArgs,
    prepared: &Prepared,
    console: &Sender<String>,
) -> anyhow::Result<Option<Vm>> {
    let config = |placement| VmConfig {
        kernel: KernelImage::BzImage(args.kernel.clone()),
        initrd: Some(prepared.l1_image.clone()),
        cmdline: prepared.cmdline.clone(),
        vcpus: args.vcpus,
        threads_per_core: args.threads_per_core,
        mem_bytes: prepared.mem,
        timeout: args.timeout,
        nested: args.nested,
        dump: Some(DumpConfig {
            path: args.detector.dump.clone(),
            size: args.dump_size,
        }),
        placement,
        console: Box::new(LineSender::new(console.clone())),
    };
    let fallback = match args.placement {
        PlacementChoice::Floating => return Ok(Some(Vm::new(config(Placement::Floating))?)),
        PlacementChoice::Pinned => return Ok(Some(Vm::new(config(Placement::Pinned))?)),
        PlacementChoice::Perf => match Vm::new(config(Placement::Performance)) {
            Err(VmmError::PerfModeUnavailable(reason)) => {
                eprintln!("SKIP: --placement perf: {reason}");
                return Ok(None);
            }
            other => return Ok(Some(other?)),
        },
        PlacementChoice::Auto => match Vm::new(config(Placement::Performance)) {
            Err(VmmError::PerfModeUnavailable(reason)) => reason,
            other => return Ok(Some(other?)),
        },
    };
    let host_cpus = HostTopology::from_host()
        .map(|host| host.online_cpus().len())
        .context("reading the host's CPUs")?;
    let (placement, how) = if host_cpus >= args.vcpus as usize {
        (Placement::Pinned, "pinning the vCPU threads instead")
    } else {
        (
            Placement::Floating,
            "vCPU threads float (fewer host CPUs than vCPUs, so pinning would stack them)",
        )
    };
    eprintln!("gapprobe: note: no performance mode ({fallback}); {how}");
    Ok(Some(Vm::new(config(placement))?))
}

/// What L1's console told the host.
#[derive(Debug, Default)]
struct ConsoleOutcome {
    exit: Option<u8>,
    dump: Option<DumpContents>,
}

/// L1's /init printed nothing within --boot-timeout.
struct BootTimedOut;

/// Follows L1's console: relays report lines, keeps the protocol lines, watches the boot.
struct ConsoleWatch {
    started: Instant,
    boot_timeout: Duration,
    quiet: bool,
}

impl ConsoleWatch {
    fn new(started: Instant, boot_timeout: Duration, quiet: bool) -> Self {
        Self {
            started,
            boot_timeout,
            quiet,
        }
    }

    /// Runs until the VM thread has ended and every line it printed is handled.
    fn follow<T>(
        &self,
        lines: Receiver<String>,
        vm_thread: &JoinHandle<T>,
    ) -> Result<ConsoleOutcome, BootTimedOut> {
        let mut outcome = ConsoleOutcome::default();
        let mut init_running = false;
        loop {
            match lines.recv_timeout(CONSOLE_POLL) {
                Ok(line) => self.handle(&line, &mut outcome, &mut init_running),
                Err(RecvTimeoutError::Disconnected) => return Ok(outcome),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if vm_thread.is_finished() {
                // A vCPU thread that never left KVM_RUN may keep the sender alive: what was
                // printed is in the channel already.
                for line in lines.try_iter() {
                    self.handle(&line, &mut outcome, &mut init_running);
                }
                return Ok(outcome);
            }
            if !init_running && self.started.elapsed() >= self.boot_timeout {
                return Err(BootTimedOut);
            }
        }
    }

    fn handle(&self, line: &str, outcome: &mut ConsoleOutcome, init_running: &mut bool) {
        match classify(line) {
            ConsoleLine::Exit(code) => outcome.exit = Some(code),
            ConsoleLine::Dump(contents) => outcome.dump = Some(contents),
            ConsoleLine::Kernel(line) => eprintln!("L1: {line}"),
            ConsoleLine::Report(line) => {
                if !*init_running {
                    *init_running = true;
                    eprintln!(
                        "gapprobe: L1 reached /init after {:.1} s",
                        self.started.elapsed().as_secs_f64()
                    );
                }
                if !self.quiet {
                    println!("{line}");
                }
            }
        }
    }
}

/// Ends the process after --boot-timeout: the vCPU threads may be inside KVM_RUN, where only
/// the process's end stops them (and exit handlers must not run under them).
fn skip_after_boot_timeout(args: &VmArgs, dump_path: &Path, dump_existed: bool) -> ! {
    let _ = finish_dump_file(dump_path, dump_existed, None);
    eprintln!(
        "SKIP: L1's /init printed nothing within --boot-timeout {}; stopped L1",
        humantime::format_duration(args.boot_timeout)
    );
    let _ = std::io::stdout().flush();
    // SAFETY: _exit takes no pointers and ends the process at once.
    unsafe { libc::_exit(i32::from(EXIT_CANNOT_TEST)) }
}

/// Leaves only the trace in the dump file (removing a file we created if there is none) and
/// returns the JSON result that followed the trace.
fn finish_dump_file(
    path: &Path,
    existed: bool,
    dump: Option<DumpContents>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let json = match dump {
        Some(contents) => Some(split_dump_file(path, contents)?),
        None => {
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                file.set_len(0)
                    .with_context(|| format!("emptying {}", path.display()))?;
            }
            None
        }
    };
    let trace_bytes = dump.map_or(0, |contents| contents.trace);
    if trace_bytes == 0 && !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(json)
}

/// Why L1 gave no result, for the SKIP line.
fn no_result_reason(exit: &VmExit) -> String {
    match exit {
        VmExit::PowerOff | VmExit::Reset => {
            "L1 ended without a gapprobe-exit line (did its /init run?)".to_string()
        }
        VmExit::Panic(line) => format!("L1 kernel panic: {line}"),
        VmExit::Timeout(limit) => format!(
            "L1 still running at --timeout {}; stopped it",
            humantime::format_duration(*limit)
        ),
        VmExit::Crash(reason) => format!("L1 crashed: {reason}"),
    }
}

/// The per-VM summary (nested) and the `result:` line, from L1's JSON result. Returns how
/// many L2 guests booted (nested mode).
fn print_summary(nested: bool, json: &[u8], trace: TraceFile) -> anyhow::Result<Option<usize>> {
    if nested {
        let result: NestedResult =
            serde_json::from_slice(json).context("L1's nested JSON result")?;
        for line in l2_summary_lines(&result, L2_HWLAT_THRESHOLD_NS) {
            println!("{line}");
        }
        println!("{}", nested_result_line(&result, trace));
        Ok(Some(result.vms.iter().filter(|vm| vm.booted).count()))
    } else {
        let result: UserResult = serde_json::from_slice(json).context("L1's JSON result")?;
        println!("{}", user_result_line(&result, trace));
        Ok(None)
    }
}
