//! The VMM on the real /dev/kvm with hand-assembled guests (a few hundred instructions
//! each, so they are quick even where KVM emulates every instruction). Each guest starts in
//! long mode at 0x100000 with the boot GDT, page tables and zero page a kernel would get.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use l1_harness::layout::DUMP_REGION_START;
use l1_harness::{DumpConfig, KernelImage, Placement, Vm, VmConfig, VmExit, VmmError};

/// Collects the console so the test can look at it afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(code: &[u8], console: &Captured) -> VmConfig {
    VmConfig {
        kernel: KernelImage::Flat64(code.to_vec()),
        initrd: None,
        cmdline: String::new(),
        vcpus: 1,
        threads_per_core: 1,
        mem_bytes: 64 << 20,
        timeout: Some(Duration::from_secs(30)),
        nested: false,
        dump: None,
        placement: Placement::Floating,
        console: Box::new(console.clone()),
    }
}

/// ```text
///     mov dx, 0x3f8             ; COM1 THR
///     lea rsi, [rip + msg]
/// 1:  lodsb
///     test al, al
///     jz 2f
///     out dx, al
///     jmp 1b
/// 2:  mov dx, 0x600             ; ACPI SLEEP_CONTROL_REG
///     mov al, 0x34              ; SLP_TYP 5 (S5) | SLP_EN
///     out dx, al
/// 3:  hlt
///     jmp 3b
/// msg: .asciz "hello from the guest\n"
/// ```
const HELLO_AND_POWER_OFF: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x12, 0x00, 0x00, 0x00, 0xac, 0x84, 0xc0, 0x74, 0x03,
    0xee, 0xeb, 0xf8, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, b'h', b'e', b'l',
    b'l', b'o', b' ', b'f', b'r', b'o', b'm', b' ', b't', b'h', b'e', b' ', b'g', b'u', b'e', b's',
    b't', b'\n', 0,
];

/// ```text
///     mov al, 0xfe              ; i8042 "pulse reset line"
///     out 0x64, al
/// 1:  jmp 1b
/// ```
const I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

/// ```text
///     cli
/// 1:  hlt                       ; never woken: only the watchdog ends this guest
///     jmp 1b
/// ```
const HANG: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

/// ```text
///     mov dx, 0x3f8
///     lea rsi, [rip + msg]
/// 1:  lodsb
///     test al, al
///     jz 2f
///     out dx, al
///     jmp 1b
/// 2:  jmp 2b
/// msg: .asciz "Kernel panic - not syncing: tiny guest gives up\n"
/// ```
fn panicking_guest() -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x0a, 0x00, 0x00, 0x00, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xeb, 0xfe,
    ];
    code.extend_from_slice(b"Kernel panic - not syncing: tiny guest gives up\n\0");
    code
}

/// ```text
///     mov rsi, 0x20000          ; the kernel command line (CMDLINE_START)
///     mov rdi, 0xd0000000       ; the dump region
///     mov ecx, 64
///     rep movsb
///     mov rdi, 0xd0000000 + 0x100000 - 8   ; last qword of a 1 MiB dump region
///     mov rax, 0x1122334455667788
///     mov [rdi], rax
///     mov rdi, 0x30000          ; a page directory for GiB 4, 2 MiB pages
///     mov rax, 0x100000083
///     mov ecx, 512
/// 3:  mov [rdi], rax
///     add rax, 0x200000
///     add rdi, 8
///     loop 3b
///     mov qword ptr [0xa000 + 4 * 8], 0x30003   ; PDPT[4] -> that directory
///     mov rax, cr3
///     mov cr3, rax
///     mov rdi, 0x100001000      ; RAM above 4 GiB (the second RAM slot)
///     mov eax, 0x5aa5c33c
///     mov [rdi], eax
///     mov ebx, [rdi]            ; unbacked memory would read back 0xffffffff
///     mov dx, 0x3f8
///     mov al, 'H'
///     cmp ebx, 0x5aa5c33c
///     je 4f
///     mov al, 'h'
/// 4:  out dx, al
///     mov dx, 0x600
///     mov al, 0x34
///     out dx, al
/// 5:  hlt
///     jmp 5b
/// ```
const MEMORY_SLOTS: &[u8] = &[
    0x48, 0xc7, 0xc6, 0x00, 0x00, 0x02, 0x00, 0x48, 0xbf, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00,
    0x00, 0xb9, 0x40, 0x00, 0x00, 0x00, 0xf3, 0xa4, 0x48, 0xbf, 0xf8, 0xff, 0x0f, 0xd0, 0x00, 0x00,
    0x00, 0x00, 0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x48, 0x89, 0x07, 0x48,
    0xc7, 0xc7, 0x00, 0x00, 0x03, 0x00, 0x48, 0xb8, 0x83, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    0xb9, 0x00, 0x02, 0x00, 0x00, 0x48, 0x89, 0x07, 0x48, 0x05, 0x00, 0x00, 0x20, 0x00, 0x48, 0x83,
    0xc7, 0x08, 0xe2, 0xf1, 0x48, 0xc7, 0x04, 0x25, 0x20, 0xa0, 0x00, 0x00, 0x03, 0x00, 0x03, 0x00,
    0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x48, 0xbf, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    0xb8, 0x3c, 0xc3, 0xa5, 0x5a, 0x89, 0x07, 0x8b, 0x1f, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x48, 0x81,
    0xfb, 0x3c, 0xc3, 0xa5, 0x5a, 0x74, 0x02, 0xb0, 0x68, 0xee, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34,
    0xee, 0xf4, 0xeb, 0xfd,
];

/// The BSP copies a real-mode trampoline to 0x10000, starts every AP with INIT + SIPI
/// through its LAPIC, waits until the three APs of a 4-vCPU guest checked in, says 'B' and
/// powers off while the APs sit in HLT (so stopping must kick them out of KVM_RUN).
/// ```text
///     lea rsi, [rip + ap_start]
///     mov rdi, 0x10000
///     mov ecx, ap_end - ap_start
///     rep movsb
///     mov byte ptr [0x10100], 0
///     mov rdi, 0xfee00000               ; LAPIC
///     mov dword ptr [rdi + 0xf0], 0x1ff ; SVR: software enable
///     mov dword ptr [rdi + 0x300], 0x000c4500   ; ICR: INIT, all excluding self
///     mov dword ptr [rdi + 0x300], 0x000c4610   ; ICR: SIPI vector 0x10
/// 1:  pause
///     cmp byte ptr [0x10100], 3
///     jne 1b
///     mov dx, 0x3f8
///     mov al, 'B'
///     out dx, al
///     mov dx, 0x600
///     mov al, 0x34
///     out dx, al
/// 2:  hlt
///     jmp 2b
/// ap_start:                             ; .code16, at 0x1000:0000
///     mov ax, cs
///     mov ds, ax
///     mov al, 'A'
///     mov dx, 0x3f8
///     out dx, al
///     lock inc byte ptr [0x100]
///     cli
/// 3:  hlt
///     jmp 3b
/// ap_end:
/// ```
const SMP_START: &[u8] = &[
    0x48, 0x8d, 0x35, 0x5b, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc7, 0x00, 0x00, 0x01, 0x00, 0xb9, 0x13,
    0x00, 0x00, 0x00, 0xf3, 0xa4, 0xc6, 0x04, 0x25, 0x00, 0x01, 0x01, 0x00, 0x00, 0x48, 0xbf, 0x00,
    0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x87, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00,
    0x00, 0xc7, 0x87, 0x00, 0x03, 0x00, 0x00, 0x00, 0x45, 0x0c, 0x00, 0xc7, 0x87, 0x00, 0x03, 0x00,
    0x00, 0x10, 0x46, 0x0c, 0x00, 0xf3, 0x90, 0x80, 0x3c, 0x25, 0x00, 0x01, 0x01, 0x00, 0x03, 0x75,
    0xf4, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4,
    0xeb, 0xfd, 0x8c, 0xc8, 0x8e, 0xd8, 0xb0, 0x41, 0xba, 0xf8, 0x03, 0xee, 0xf0, 0xfe, 0x06, 0x00,
    0x01, 0xfa, 0xf4, 0xeb, 0xfd,
];

#[test]
fn serial_output_and_acpi_power_off() {
    let console = Captured::default();
    let exit = Vm::boot(config(HELLO_AND_POWER_OFF, &console)).unwrap();
    assert_eq!(exit, VmExit::PowerOff);
    assert_eq!(console.text(), "hello from the guest\n");
}

#[test]
fn i8042_reset_ends_the_vm_as_a_reset() {
    let console = Captured::default();
    assert_eq!(
        Vm::boot(config(I8042_RESET, &console)).unwrap(),
        VmExit::Reset
    );
}

#[test]
fn watchdog_stops_a_halted_guest() {
    let console = Captured::default();
    let mut config = config(HANG, &console);
    config.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let exit = Vm::boot(config).unwrap();
    assert_eq!(exit, VmExit::Timeout(Duration::from_millis(500)));
    // Stopping a vCPU blocked in HLT inside KVM_RUN must not take the stop grace period.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// ```text
/// 1:  jmp 1b                    ; busy in guest mode: only a kick gets it out of KVM_RUN
/// ```
const SPIN: &[u8] = &[0xeb, 0xfe];

#[test]
fn a_guest_that_hangs_says_where_its_vcpu_was() {
    let console = Captured::default();
    let mut config = config(SPIN, &console);
    config.timeout = Some(Duration::from_millis(500));
    let notes = Mutex::new(Vec::new());
    let exit = Vm::new(config)
        .unwrap()
        .run(|note| notes.lock().unwrap().push(note))
        .unwrap();
    assert_eq!(exit, VmExit::Timeout(Duration::from_millis(500)));
    // The flat image runs at 0x100000 (the protected-mode kernel address) in ring 0 with
    // interrupts off; SPIN never leaves its first instruction.
    let notes = notes.into_inner().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("vCPU 0 was at RIP 0x100000 RSP 0x")
            && notes[0].ends_with(" (CPL 0, IF 0)"),
        "{notes:?}"
    );
}

#[test]
fn stop_handle_ends_a_spinning_guest_from_another_thread() {
    let console = Captured::default();
    // No watchdog: only the stop can end this run.
    let mut config = config(SPIN, &console);
    config.timeout = None;
    let vm = Vm::new(config).unwrap();
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.stop();
        Instant::now()
    });
    let result = vm.run(|_| {});
    let returned = Instant::now();
    let asked = stopper.join().unwrap();
    assert!(matches!(result, Err(VmmError::Stopped)), "{result:?}");
    assert!(returned >= asked);
    // The vCPU left KVM_RUN at the kick, not after the stop grace period.
    assert!(
        returned - asked < Duration::from_secs(4),
        "{:?}",
        returned - asked
    );
}

#[test]
fn console_panic_line_fails_the_run() {
    let console = Captured::default();
    let exit = Vm::boot(config(&panicking_guest(), &console)).unwrap();
    assert_eq!(
        exit,
        VmExit::Panic("Kernel panic - not syncing: tiny guest gives up".to_string())
    );
}

#[test]
fn dump_region_round_trip_and_ram_above_4g() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let console = Captured::default();
    let mut config = config(MEMORY_SLOTS, &console);
    // 3.5 GiB: 3 GiB below the MMIO gap, 512 MiB from 4 GiB (a second RAM slot).
    config.mem_bytes = 0xe000_0000;
    config.cmdline = "quiet".to_string();
    config.dump = Some(DumpConfig {
        path: path.clone(),
        size: 1 << 20,
    });
    let vm = Vm::new(config).unwrap();
    let cmdline = vm.cmdline().to_string();
    assert_eq!(
        cmdline,
        format!(
            "console=ttyS0 pci=off reboot=k quiet gapprobe.dump={DUMP_REGION_START:#x},0x100000"
        )
    );
    assert_eq!(vm.run(|_| {}).unwrap(), VmExit::PowerOff);
    assert_eq!(
        console.text(),
        "H",
        "RAM above 4 GiB did not keep what was written"
    );

    let dump = std::fs::read(&path).unwrap();
    assert_eq!(dump.len(), 1 << 20);
    // The guest copied the first 64 bytes of its command line (NUL-padded if shorter).
    let mut expected = cmdline.as_bytes().to_vec();
    expected.resize(64, 0);
    assert_eq!(&dump[..64], &expected[..64]);
    assert_eq!(
        &dump[dump.len() - 8..],
        &0x1122_3344_5566_7788u64.to_le_bytes()
    );
    assert!(dump[64..dump.len() - 8].iter().all(|&byte| byte == 0));
}

#[test]
fn application_processors_start_through_the_lapic() {
    let console = Captured::default();
    let mut config = config(SMP_START, &console);
    config.vcpus = 4;
    config.threads_per_core = 2;
    config.timeout = Some(Duration::from_secs(20));
    let exit = Vm::boot(config).unwrap();
    assert_eq!(exit, VmExit::PowerOff, "console: {:?}", console.text());
    assert_eq!(console.text(), "AAAB");
}

#[test]
fn pinned_vcpus_report_where_they_run() {
    let console = Captured::default();
    let mut config = config(HELLO_AND_POWER_OFF, &console);
    config.vcpus = 2;
    config.threads_per_core = 2;
    config.placement = Placement::Pinned;
    let notes = Mutex::new(Vec::new());
    let exit = Vm::new(config)
        .unwrap()
        .run(|note| notes.lock().unwrap().push(note))
        .unwrap();
    assert_eq!(exit, VmExit::PowerOff);
    let mut notes = notes.into_inner().unwrap();
    notes.sort();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("vCPU 0 pinned to CPU "), "{notes:?}");
    assert!(notes[1].starts_with("vCPU 1 pinned to CPU "), "{notes:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let console = Captured::default();
    let mut missing = config(HANG, &console);
    missing.kernel = KernelImage::BzImage("/nonexistent/vmlinuz".into());
    let err = Vm::new(missing)
        .err()
        .expect("a missing kernel")
        .to_string();
    assert!(err.contains("/nonexistent/vmlinuz"), "{err}");
    let mut odd = config(HANG, &console);
    odd.vcpus = 3;
    odd.threads_per_core = 2;
    assert!(Vm::new(odd).err().is_some());
}
