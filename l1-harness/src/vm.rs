//! Building a VM from a [`VmConfig`] and running it until the guest powers off, resets,
//! panics, crashes or outlives the watchdog.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_run, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_superio::I8042Device;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::acpi::build_acpi_tables;
use crate::boot::{load_initrd, load_kernel, write_boot_params};
use crate::cmdline::guest_cmdline;
use crate::config::{Placement, VmConfig};
use crate::console::ConsoleWriter;
use crate::cpuid::{guest_cpuid, CpuTopology, CpuidOptions};
use crate::dump_region::{map_dump_file, DumpRegion};
use crate::error::VmmError;
use crate::exits::{PortBus, ResetLine, VmEvent};
use crate::host_symbols::{host_vm_entry_symbol, HOST_STATE_IN_GUEST};
use crate::host_topology::HostTopology;
use crate::layout::{MemoryLayout, ACPI_TABLES_START, KVM_IDENTITY_MAP_START, KVM_TSS_START};
use crate::memory::{guest_ram, register_slots, RamBacking, RamMappings};
use crate::perf_mode::{
    bind_memory, disable_idle_exits, pin_current_thread, plan_placement, set_current_thread_fifo,
    PlacementPlan, SERVICE_FIFO_PRIORITY, VCPU_FIFO_PRIORITY,
};
use crate::serial::com1;
use crate::watchdog::Watchdog;

/// How the guest's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// ACPI power-off: the clean end.
    PowerOff,
    /// The guest reset the machine (i8042 or KVM reset event).
    Reset,
    /// A kernel panic line seen on the console.
    Panic(String),
    /// The watchdog fired after this long.
    Timeout(Duration),
    /// The guest crashed in a way KVM reports (triple fault, entry failure, internal error).
    Crash(String),
}

/// Ends a running VM from another thread: `Vm::run` then stops the vCPUs (the same kick as
/// at any other end) and returns `Err(VmmError::Stopped)`.
#[derive(Clone)]
pub struct VmStopHandle(Sender<VmEvent>);

impl VmStopHandle {
    /// Asks the VM to stop; does nothing once the run is over.
    pub fn stop(&self) {
        let _ = self.0.send(VmEvent::Stop);
    }
}

/// How long to wait for a vCPU thread to leave KVM_RUN once told to stop.
const VCPU_STOP_GRACE: Duration = Duration::from_secs(5);
/// How often to look whether a stopped vCPU thread is done, and to re-send the signal in
/// case the thread had not registered its kvm_run page yet.
const VCPU_JOIN_POLL: Duration = Duration::from_millis(5);
const VCPU_KICK_RETRY: Duration = Duration::from_millis(500);

/// A VM, set up and ready to run.
pub struct Vm {
    // Field order is drop order: vCPUs and the VM before the memory they map.
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    _ram: GuestMemoryMmap,
    _ram_mappings: RamMappings,
    _dump: Option<DumpRegion>,
    bus: Arc<Mutex<PortBus>>,
    events: Receiver<VmEvent>,
    stop_sender: Sender<VmEvent>,
    timeout: Option<Duration>,
    placement: Option<PlacementPlan>,
    cmdline: String,
    notes: Vec<String>,
}

impl Vm {
    /// Sets up the whole VM; nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        let dump_size = config.dump.as_ref().map(|dump| dump.size);
        let layout = MemoryLayout::new(config.mem_bytes, dump_size)?;
        let topology = CpuTopology::new(config.vcpus, config.threads_per_core)?;
        let mut notes = Vec::new();
        let placement = match config.placement {
            Placement::Floating => None,
            placement => {
                let host = HostTopology::from_host().map_err(|err| match placement {
                    Placement::Performance => VmmError::PerfModeUnavailable(err.to_string()),
                    _ => VmmError::InvalidConfig(format!("host topology: {err}")),
                })?;
                plan_placement(placement, &topology, &host)?
            }
        };
        let performance = placement.as_ref().is_some_and(|plan| plan.performance);

        let kvm = Kvm::new().map_err(VmmError::kvm("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(VmmError::kvm("KVM_CREATE_VM"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(VmmError::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS_START as usize)
            .map_err(VmmError::kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(VmmError::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(VmmError::kvm("KVM_CREATE_PIT2"))?;
        if performance {
            notes.extend(disable_idle_exits(&vm));
        }

        let (ram, ram_mappings) = if performance {
            guest_ram(&layout, RamBacking::HugePages)
                .inspect(|_| notes.push("guest memory on 2 MiB hugepages".to_string()))
                .or_else(|err| {
                    notes.push(format!("warning: no hugepages ({err}); using 4 KiB pages"));
                    guest_ram(&layout, RamBacking::Anonymous)
                })?
        } else {
            guest_ram(&layout, RamBacking::Anonymous)?
        };
        if let Some(plan) = placement.as_ref().filter(|plan| plan.performance) {
            notes.push(bind_memory(&ram, plan.vcpu_cpus[0]));
        }
        let dump = match &config.dump {
            Some(dump) => Some(map_dump_file(&dump.path, dump.size)?),
            None => None,
        };
        let dump_slot = layout
            .dump_region()
            .zip(dump.as_ref())
            .map(|((address, _), region)| (address, &region.mapping));
        register_slots(&vm, &ram, dump_slot)?;

        let kernel = load_kernel(&ram, &layout, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => Some(load_initrd(&ram, &layout, &kernel, path)?),
            None => None,
        };
        let acpi = build_acpi_tables(&topology)?;
        ram.write_slice(&acpi.bytes, GuestAddress(ACPI_TABLES_START))
            .map_err(|err| VmmError::Memory(format!("ACPI tables: {err}")))?;
        let cmdline = guest_cmdline(&config.cmdline, layout.dump_region());
        write_boot_params(
            &ram,
            &layout,
            &kernel,
            &cmdline,
            initrd,
            acpi.rsdp_address(),
        )?;
        crate::vcpu::write_boot_tables(&ram)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let options = CpuidOptions {
            nested: config.nested,
            realtime_hint: performance,
        };
        if performance {
            notes.push("KVM_HINTS_REALTIME set".to_string());
        }
        let mut vcpus = Vec::new();
        for index in 0..topology.vcpus() {
            let vcpu = vm
                .create_vcpu(u64::from(topology.apic_id(index)))
                .map_err(VmmError::kvm("KVM_CREATE_VCPU"))?;
            let cpuid = guest_cpuid(&supported, &topology, index, options)?;
            let entry = (index == 0).then_some(kernel.entry);
            crate::vcpu::configure_vcpu(&vcpu, &cpuid, entry)?;
            vcpus.push(vcpu);
        }

        let (event_sender, events) = channel();
        let console = ConsoleWriter::new(config.console, event_sender.clone());
        let bus = PortBus {
            com1: com1(&vm, console)?,
            i8042: I8042Device::new(ResetLine(event_sender.clone())),
            events: event_sender.clone(),
        };
        Ok(Self {
            vcpus,
            vm,
            _ram: ram,
            _ram_mappings: ram_mappings,
            _dump: dump,
            bus: Arc::new(Mutex::new(bus)),
            events,
            stop_sender: event_sender,
            timeout: config.timeout,
            placement,
            cmdline,
            notes,
        })
    }

    /// The command line the guest gets (the user's plus the VMM's items).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// What placement and performance settings took effect, and warnings about those that
    /// did not; more are added when `run` pins the threads.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// A handle that ends `run` from another thread (take it before calling `run`).
    pub fn stop_handle(&self) -> VmStopHandle {
        VmStopHandle(self.stop_sender.clone())
    }

    /// Sets up and runs a VM: `Vm::new(config)?.run()`.
    pub fn boot(config: VmConfig) -> Result<VmExit, VmmError> {
        Self::new(config)?.run(|_| {})
    }

    /// Runs the guest to its end. `on_note` receives placement notes from the vCPU threads
    /// as they start. In performance mode the calling thread becomes the service thread:
    /// it is pinned to a CPU no vCPU uses and made SCHED_FIFO. A stop through a
    /// [`VmStopHandle`] returns `Err(VmmError::Stopped)` once the vCPU threads are gone.
    pub fn run(self, on_note: impl Fn(String)) -> Result<VmExit, VmmError> {
        register_signal_handler(SIGRTMIN(), kick_handler).map_err(|err| VmmError::Host {
            what: "installing the vCPU kick signal handler",
            reason: std::io::Error::from_raw_os_error(err.errno()),
        })?;
        if let Some(plan) = &self.placement {
            if let Some(cpu) = plan.service_cpu {
                on_note(thread_setup_note(
                    "service thread",
                    cpu,
                    SERVICE_FIFO_PRIORITY,
                    true,
                ));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Set before `stop` when the guest hung: each vCPU then says where it was.
        let report_position = Arc::new(AtomicBool::new(false));
        let (note_sender, notes) = channel();
        let mut threads = Vec::new();
        for (index, mut vcpu) in self.vcpus.into_iter().enumerate() {
            let bus = Arc::clone(&self.bus);
            let stop = Arc::clone(&stop);
            let report_position = Arc::clone(&report_position);
            let events = bus
                .lock()
                .map_err(|_| VmmError::InvalidConfig("device lock poisoned".to_string()))?
                .events
                .clone();
            let plan = self.placement.clone();
            let note_sender = note_sender.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(plan) = plan {
                        let cpu = plan.vcpu_cpus[index];
                        let note = thread_setup_note(
                            &format!("vCPU {index}"),
                            cpu,
                            VCPU_FIFO_PRIORITY,
                            plan.performance,
                        );
                        let _ = note_sender.send(note);
                    }
                    run_vcpu(index, &mut vcpu, &bus, &events, &stop);
                    if report_position.load(Ordering::SeqCst) {
                        let _ = note_sender.send(vcpu_position(index, &vcpu));
                    }
                })
                .map_err(VmmError::host("spawning a vCPU thread"))?;
            threads.push(thread);
        }
        drop(note_sender);

        let mut watchdog = Watchdog::new(Instant::now(), self.timeout);
        // None: stopped through a VmStopHandle.
        let exit = loop {
            for note in notes.try_iter() {
                on_note(note);
            }
            match self
                .events
                .recv_timeout(watchdog.wait_budget(Instant::now()))
            {
                Ok(VmEvent::Stop) => break None,
                Ok(event) => {
                    if let Some(exit) = watchdog.on_event(event, Instant::now()) {
                        break Some(exit);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(exit) = watchdog.on_deadline(Instant::now()) {
                        break Some(exit);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Some(VmExit::Crash("every vCPU thread ended".to_string()));
                }
            }
        };
        if matches!(exit, Some(VmExit::Timeout(_))) {
            report_position.store(true, Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
        let stuck = stop_vcpu_threads(threads);
        for note in notes.try_iter() {
            on_note(note);
        }
        if stuck > 0 {
            on_note(format!(
                "warning: {stuck} vCPU thread(s) did not leave KVM_RUN within {VCPU_STOP_GRACE:?}"
            ));
        }
        drop(self.vm);
        exit.ok_or(VmmError::Stopped)
    }
}

/// Pins (and in performance mode makes SCHED_FIFO) the calling thread; describes the result.
fn thread_setup_note(who: &str, cpu: usize, priority: i32, fifo: bool) -> String {
    let mut note = match pin_current_thread(cpu) {
        Ok(()) => format!("{who} pinned to CPU {cpu}"),
        Err(err) => format!("warning: {who} not pinned to CPU {cpu}: {err}"),
    };
    if fifo {
        match set_current_thread_fifo(priority) {
            Ok(()) => note.push_str(&format!(", SCHED_FIFO {priority}")),
            Err(err) => note.push_str(&format!(" (warning: SCHED_FIFO {priority} refused: {err})")),
        }
    }
    note
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler (null outside vCPU threads).
    static KVM_RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The vCPU stop signal. Setting `immediate_exit` makes a KVM_RUN that the signal narrowly
/// missed return at once, so one signal per vCPU is enough: a storm of kicks is what
/// locked up the (TCG-emulated SVM) host of the virtual bare metal.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let page = KVM_RUN_PAGE.with(Cell::get);
    if !page.is_null() {
        // SAFETY: the page is this thread's live kvm_run mapping (set by run_vcpu, cleared
        // before the VcpuFd is dropped); a volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*page).immediate_exit), 1) };
    }
}

/// Signals every vCPU thread until it returns; gives up on a thread after a grace period.
/// Returns the number of threads left behind.
fn stop_vcpu_threads(threads: Vec<JoinHandle<()>>) -> usize {
    let deadline = Instant::now() + VCPU_STOP_GRACE;
    let mut stuck = 0;
    for thread in &threads {
        let _ = thread.kill(SIGRTMIN());
    }
    for thread in threads {
        let mut last_kick = Instant::now();
        while !thread.is_finished() && Instant::now() < deadline {
            if last_kick.elapsed() >= VCPU_KICK_RETRY {
                let _ = thread.kill(SIGRTMIN());
                last_kick = Instant::now();
            }
            std::thread::sleep(VCPU_JOIN_POLL);
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            stuck += 1;
        }
    }
    stuck
}

/// RFLAGS.IF (arch/x86/include/uapi/asm/processor-flags.h X86_EFLAGS_IF).
const X86_EFLAGS_IF: u64 = 1 << 9;

/// Where a stopped vCPU was, for a guest that hung: RIP and RSP (look RIP up in the kernel's
/// System.map), privilege level and interrupt flag. A vCPU that was running a nested guest
/// reports that guest's registers (KVM's view of a vCPU in guest mode). A RIP in this host's
/// own VM-entry code says the host, not the guest, is broken.
fn vcpu_position(index: usize, vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => {
            let mut position = format!(
                "vCPU {index} was at RIP {:#x} RSP {:#x} (CPL {}, IF {})",
                regs.rip,
                regs.rsp,
                sregs.cs.selector & 3,
                u8::from(regs.rflags & X86_EFLAGS_IF != 0)
            );
            if let Some(symbol) = host_vm_entry_symbol(regs.rip) {
                position.push_str(&format!(
                    "; that is this host's own {symbol}: {HOST_STATE_IN_GUEST}"
                ));
            }
            position
        }
        (Err(err), _) | (_, Err(err)) => format!("vCPU {index}: cannot read its registers: {err}"),
    }
}

fn run_vcpu(
    index: usize,
    vcpu: &mut VcpuFd,
    bus: &Mutex<PortBus>,
    events: &Sender<VmEvent>,
    stop: &AtomicBool,
) {
    let crash = |reason: String| {
        let _ = events.send(VmEvent::Crash(format!("vCPU {index}: {reason}")));
    };
    KVM_RUN_PAGE.with(|page| page.set(vcpu.get_kvm_run()));
    run_vcpu_loop(vcpu, bus, events, stop, crash);
    KVM_RUN_PAGE.with(|page| page.set(std::ptr::null_mut()));
}

fn run_vcpu_loop(
    vcpu: &mut VcpuFd,
    bus: &Mutex<PortBus>,
    events: &Sender<VmEvent>,
    stop: &AtomicBool,
    crash: impl Fn(String),
) {
    while !stop.load(Ordering::SeqCst) {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Ok(mut bus) = bus.lock() {
                    bus.write(port, data);
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if let Ok(mut bus) = bus.lock() {
                    bus.read(port, data);
                }
            }
            // Nothing is mapped there: reads float high, writes are dropped.
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let event = if kind == kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN {
                    VmEvent::PowerOff
                } else {
                    VmEvent::Reset
                };
                let _ = events.send(event);
                return;
            }
            Ok(VcpuExit::Shutdown) => {
                return crash("triple fault (KVM_EXIT_SHUTDOWN)".to_string());
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return crash(format!(
                    "VM entry failed on host CPU {cpu}, hardware reason {reason:#x}"
                ));
            }
            Ok(VcpuExit::InternalError) => {
                return crash("KVM internal error (emulation failure)".to_string());
            }
            Ok(other) => return crash(format!("unexpected exit {other:?}")),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {}
            Err(err) => return crash(format!("KVM_RUN failed: {err}")),
        }
    }
}
