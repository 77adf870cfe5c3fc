//! vCPU state at power-on, in the order it is applied: CPUID, MSRs, LAPIC, and for the boot
//! vCPU the long-mode registers (GDT, page tables, segments), general registers and FPU.
//! Application processors stay in wait-for-SIPI; the kernel starts them through the
//! in-kernel LAPIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::VmmError;
use crate::layout::{
    BOOT_STACK_POINTER, GDT_START, IDENTITY_MAPPED_GIB, PAGE_SIZE, PDE_START, PDPTE_START,
    PML4_START, ZERO_PAGE_START,
};

/// Selectors the 64-bit boot protocol requires (`__BOOT_CS`, `__BOOT_DS`), and a TSS.
const BOOT_CS_INDEX: usize = 2;
const BOOT_DS_INDEX: usize = 3;
const BOOT_TSS_INDEX: usize = 4;
/// Access/flags words of the descriptors (the kernel's GDT_ENTRY() `flags` argument):
/// 64-bit code, flat data, busy TSS.
const GDT_FLAGS_CODE64: u64 = 0xa09b;
const GDT_FLAGS_DATA: u64 = 0xc093;
const GDT_FLAGS_TSS: u64 = 0x808b;
const GDT_ENTRIES: usize = 5;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const X86_EFLAGS_FIXED: u64 = 1 << 1;

const PAGE_PRESENT: u64 = 1 << 0;
const PAGE_RW: u64 = 1 << 1;
const PAGE_PSE: u64 = 1 << 7;
const HUGE_PAGE_SIZE: u64 = 2 << 20;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back: without it the guest runs uncached.
const MTRR_DEF_TYPE_E_WB: u64 = (1 << 11) | 6;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// LAPIC register offsets and delivery modes (arch/x86/include/asm/apicdef.h).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// x87 control word and MXCSR after FNINIT / reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// A GDT descriptor from base, limit and the access/flags word (Intel SDM 3.4.5).
fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of a descriptor, as the CPU would load it.
fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let granular = bit(55) == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

fn boot_gdt() -> [u64; GDT_ENTRIES] {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[BOOT_CS_INDEX] = gdt_entry(GDT_FLAGS_CODE64, 0, 0xfffff);
    gdt[BOOT_DS_INDEX] = gdt_entry(GDT_FLAGS_DATA, 0, 0xfffff);
    gdt[BOOT_TSS_INDEX] = gdt_entry(GDT_FLAGS_TSS, 0, 0xfffff);
    gdt
}

/// Writes the GDT and identity-mapping page tables (2 MiB pages over the low 4 GiB).
pub(crate) fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let write = |value: u64, address: u64| {
        mem.write_obj(value, GuestAddress(address))
            .map_err(|err| VmmError::Memory(format!("boot tables at {address:#x}: {err}")))
    };
    for (index, entry) in boot_gdt().iter().enumerate() {
        write(*entry, GDT_START + 8 * index as u64)?;
    }
    write(PDPTE_START | PAGE_PRESENT | PAGE_RW, PML4_START)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let directory = PDE_START + gib * PAGE_SIZE;
        write(directory | PAGE_PRESENT | PAGE_RW, PDPTE_START + 8 * gib)?;
        for slot in 0..512 {
            let address = (gib << 30) + slot * HUGE_PAGE_SIZE;
            write(
                address | PAGE_PRESENT | PAGE_RW | PAGE_PSE,
                directory + 8 * slot,
            )?;
        }
    }
    Ok(())
}

/// Everything a vCPU needs before its first KVM_RUN. `boot_entry` is set for the BSP only.
pub(crate) fn configure_vcpu(
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    boot_entry: Option<u64>,
) -> Result<(), VmmError> {
    vcpu.set_cpuid2(cpuid)
        .map_err(VmmError::kvm("KVM_SET_CPUID2"))?;
    set_msrs(vcpu)?;
    set_lint(vcpu)?;
    if let Some(entry) = boot_entry {
        set_sregs(vcpu)?;
        set_regs(vcpu, entry)?;
        set_fpu(vcpu)?;
    }
    Ok(())
}

fn set_msrs(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_E_WB),
    ];
    let msrs = Msrs::from_entries(&entries)
        .map_err(|err| VmmError::InvalidConfig(format!("MSR list: {err:?}")))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(VmmError::kvm("KVM_SET_MSRS"))?;
    if written != entries.len() {
        return Err(VmmError::InvalidConfig(format!(
            "KVM refused MSR {:#x}",
            entries[written].index
        )));
    }
    Ok(())
}

/// LINT0 delivers the legacy PIC's ExtINT, LINT1 the NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut lapic = vcpu.get_lapic().map_err(VmmError::kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, byte) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *byte as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(VmmError::kvm("KVM_SET_LAPIC"))
}

fn set_sregs(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut sregs = vcpu.get_sregs().map_err(VmmError::kvm("KVM_GET_SREGS"))?;
    let gdt = boot_gdt();
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    // The kernel installs its own IDT before enabling interrupts.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[BOOT_CS_INDEX], BOOT_CS_INDEX);
    let data = segment_from_gdt(gdt[BOOT_DS_INDEX], BOOT_DS_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[BOOT_TSS_INDEX], BOOT_TSS_INDEX);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(VmmError::kvm("KVM_SET_SREGS"))
}

fn set_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), VmmError> {
    let regs = kvm_regs {
        rflags: X86_EFLAGS_FIXED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        // The 64-bit boot protocol: RSI holds the address of boot_params.
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(VmmError::kvm("KVM_SET_REGS"))
}

fn set_fpu(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(VmmError::kvm("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let gdt = boot_gdt();
        let code = segment_from_gdt(gdt[BOOT_CS_INDEX], BOOT_CS_INDEX);
        assert_eq!(gdt[BOOT_CS_INDEX], 0x00af_9b00_0000_ffff);
        assert_eq!(
            (code.selector, code.l, code.db, code.type_),
            (0x10, 1, 0, 0xb)
        );
        assert_eq!((code.base, code.limit, code.present), (0, 0xffff_ffff, 1));
        let data = segment_from_gdt(gdt[BOOT_DS_INDEX], BOOT_DS_INDEX);
        assert_eq!(gdt[BOOT_DS_INDEX], 0x00cf_9300_0000_ffff);
        assert_eq!(
            (data.selector, data.db, data.type_, data.s),
            (0x18, 1, 0x3, 1)
        );
        let null = segment_from_gdt(gdt[0], 0);
        assert_eq!(null.unusable, 1);
        let base = segment_from_gdt(gdt_entry(GDT_FLAGS_DATA, 0x1234_5678, 0xff), 1);
        assert_eq!((base.base, base.limit), (0x1234_5678, 0xff_fff));
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let read = |address: u64| mem.read_obj::<u64>(GuestAddress(address)).unwrap();
        // Walk the tables for a few addresses, as the MMU would.
        for virt in [0u64, 0x10_0000, 0xfee0_0000, (4 << 30) - 1] {
            let pml4e = read(PML4_START + 8 * ((virt >> 39) & 0x1ff));
            let pdpte = read((pml4e & !0xfff) + 8 * ((virt >> 30) & 0x1ff));
            let pde = read((pdpte & !0xfff) + 8 * ((virt >> 21) & 0x1ff));
            assert_eq!(pde & (PAGE_PRESENT | PAGE_PSE), PAGE_PRESENT | PAGE_PSE);
            let phys = (pde & !0x1f_ffff & !(1 << 63)) | (virt & 0x1f_ffff);
            assert_eq!(phys, virt);
        }
    }
}
