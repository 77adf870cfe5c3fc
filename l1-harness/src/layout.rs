//! The whole guest physical memory map (and the I/O ports the devices answer on), in one
//! place, so the boot code, the ACPI tables and the exit dispatch cannot disagree.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down)  0x0000_9000  PML4, PDPT, 4 PDs (identity map 0-4 GiB)
//! 0x0002_0000  kernel command line      0x0009_fc00  EBDA .. 1 MiB: reserved
//! 0x000e_0000  RSDP, XSDT, MADT, FADT, DSDT
//! 0x0010_0000  kernel (bzImage protected-mode part), initramfs at the top of low RAM
//! 0xc000_0000  start of the 32-bit MMIO gap (RAM beyond it continues at 4 GiB)
//! 0xd000_0000  dump region (a host file; not RAM in e820, so /dev/mem may write it)
//! 0xfec0_0000  IOAPIC                   0xfee0_0000  LAPIC
//! 0xfffb_c000  KVM identity-map page, then the 3-page KVM TSS area
//! ```

use crate::error::VmmError;

/// Global descriptor table for the 64-bit entry.
pub const GDT_START: u64 = 0x500;
/// Linux `boot_params`, the "zero page" (x86 boot protocol); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table; the PDPT and the page directories follow it page by page.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The boot page tables identity-map this much with 2 MiB pages (one PD page per GiB), which
/// covers the kernel, boot_params, the initramfs below the gap and the LAPIC/IOAPIC.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line; the kernel's own limit (`cmdline_size`) is checked at load time.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_CAPACITY: usize = 4096;
/// Start of the Extended BIOS Data Area: RAM below it, reserved from here to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area the kernel scans for an RSDP (0xe0000-0xfffff).
pub const ACPI_TABLES_START: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// "High memory": where the protected-mode kernel is loaded (bzImage `code32_start`).
pub const HIMEM_START: u64 = 0x100000;
/// The 32-bit MMIO gap: no RAM between these addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Dump region: inside the MMIO gap, so it is never RAM to the guest kernel.
pub const DUMP_REGION_START: u64 = 0xd000_0000;
pub const DUMP_REGION_MAX_SIZE: u64 = 0x2000_0000;
/// Standard x86 interrupt controller addresses (`IO_APIC_DEFAULT_PHYS_BASE`,
/// `APIC_DEFAULT_PHYS_BASE`).
pub const IO_APIC_DEFAULT_PHYS_BASE: u64 = 0xfec0_0000;
pub const APIC_DEFAULT_PHYS_BASE: u64 = 0xfee0_0000;
/// Intel VMX needs three pages for a real-mode TSS and one for an identity map; both sit at
/// the top of the gap, away from everything above.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
pub const KVM_TSS_START: u64 = 0xfffb_d000;

/// Guest memory below this cannot hold a kernel plus its initramfs in any useful way.
pub const MIN_MEM_BYTES: u64 = 32 << 20;

/// I/O ports of the emulated devices.
pub const COM1_PORT_BASE: u16 = 0x3f8;
pub const COM_PORT_SPAN: u16 = 8;
/// The UART's ISA interrupt line (COM1 = IRQ 4), routed by KVM's IOAPIC to GSI 4.
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;

/// e820 entry types (arch/x86/include/asm/e820/types.h).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Where guest RAM and the dump region are, for a given memory size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    mem_bytes: u64,
    dump_bytes: Option<u64>,
}

impl MemoryLayout {
    pub fn new(mem_bytes: u64, dump_bytes: Option<u64>) -> Result<Self, VmmError> {
        if mem_bytes < MIN_MEM_BYTES {
            return Err(VmmError::InvalidConfig(format!(
                "guest memory of {mem_bytes} bytes is below the minimum of {MIN_MEM_BYTES}"
            )));
        }
        if !mem_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(VmmError::InvalidConfig(format!(
                "guest memory of {mem_bytes} bytes is not a multiple of {PAGE_SIZE}"
            )));
        }
        if let Some(size) = dump_bytes {
            if size == 0 || size > DUMP_REGION_MAX_SIZE || !size.is_multiple_of(PAGE_SIZE) {
                return Err(VmmError::InvalidConfig(format!(
                    "dump region size {size:#x} must be a non-zero multiple of {PAGE_SIZE:#x} \
                     up to {DUMP_REGION_MAX_SIZE:#x}"
                )));
            }
        }
        Ok(Self {
            mem_bytes,
            dump_bytes,
        })
    }

    /// End (exclusive) of the RAM below the MMIO gap.
    pub fn low_ram_end(&self) -> u64 {
        self.mem_bytes.min(MMIO_GAP_START)
    }

    /// RAM as (guest address, size) ranges: below the gap, and the rest above 4 GiB.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let low = self.low_ram_end();
        let mut ranges = vec![(0, low)];
        if self.mem_bytes > low {
            ranges.push((MMIO_GAP_END, self.mem_bytes - low));
        }
        ranges
    }

    /// The dump region as (guest address, size), when there is one.
    pub fn dump_region(&self) -> Option<(u64, u64)> {
        self.dump_bytes.map(|size| (DUMP_REGION_START, size))
    }

    /// The BIOS-style memory map handed to the kernel. The dump region is deliberately
    /// absent: listed as RAM, STRICT_DEVMEM would forbid /dev/mem writes to it.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM,
            },
            E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820_RESERVED,
            },
            E820Entry {
                addr: HIMEM_START,
                size: self.low_ram_end() - HIMEM_START,
                kind: E820_RAM,
            },
        ];
        if let Some(&(addr, size)) = self.ram_ranges().get(1) {
            map.push(E820Entry {
                addr,
                size,
                kind: E820_RAM,
            });
        }
        map
    }
}

pub const PAGE_SIZE: u64 = 4096;

// The fixed areas must not overlap; checked at compile time.
// Boot structures below the EBDA, in order.
const _: () = assert!(GDT_START + 8 * 8 <= ZERO_PAGE_START);
const _: () = assert!(ZERO_PAGE_START + PAGE_SIZE <= BOOT_STACK_POINTER + 0x10);
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(PDE_START + IDENTITY_MAPPED_GIB * PAGE_SIZE <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_CAPACITY as u64 <= EBDA_START);
// The dump region fits in the gap below the IOAPIC; the KVM pages below 4 GiB.
const _: () = assert!(DUMP_REGION_START >= MMIO_GAP_START);
const _: () = assert!(DUMP_REGION_START + DUMP_REGION_MAX_SIZE <= IO_APIC_DEFAULT_PHYS_BASE);
const _: () = assert!(KVM_TSS_START + 3 * PAGE_SIZE <= MMIO_GAP_END);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_ram_range() {
        let layout = MemoryLayout::new(512 << 20, Some(64 << 20)).unwrap();
        assert_eq!(layout.ram_ranges(), vec![(0, 512 << 20)]);
        assert_eq!(layout.dump_region(), Some((DUMP_REGION_START, 64 << 20)));
        let e820 = layout.e820();
        assert_eq!(e820.len(), 3);
        assert_eq!(e820[2].addr + e820[2].size, 512 << 20);
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let layout = MemoryLayout::new(4 << 30, None).unwrap();
        assert_eq!(
            layout.ram_ranges(),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        let e820 = layout.e820();
        assert_eq!(e820.last().unwrap().addr, MMIO_GAP_END);
        let ram: u64 = e820
            .iter()
            .filter(|entry| entry.kind == E820_RAM)
            .map(|entry| entry.size)
            .sum();
        // Everything but the 640 KiB-1 MiB hole is RAM.
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_is_sorted_disjoint_and_avoids_the_dump_region() {
        let layout = MemoryLayout::new(6 << 30, Some(DUMP_REGION_MAX_SIZE)).unwrap();
        let (dump_start, dump_size) = layout.dump_region().unwrap();
        let e820 = layout.e820();
        for pair in e820.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
        }
        for entry in &e820 {
            let disjoint =
                entry.addr + entry.size <= dump_start || dump_start + dump_size <= entry.addr;
            assert!(disjoint, "{entry:?} overlaps the dump region");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(MemoryLayout::new(1 << 20, None).is_err());
        assert!(MemoryLayout::new((64 << 20) + 1, None).is_err());
        assert!(MemoryLayout::new(64 << 20, Some(0)).is_err());
        assert!(MemoryLayout::new(64 << 20, Some(DUMP_REGION_MAX_SIZE * 2)).is_err());
        assert!(MemoryLayout::new(64 << 20, Some(100)).is_err());
    }
}
