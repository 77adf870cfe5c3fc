//! Minimal ACPI tables: RSDP -> XSDT -> {FADT -> DSDT, MADT}.
//!
//! Debian's cloud kernel has no MP-table parser, so the MADT is how it finds the APs. The
//! FADT declares a hardware-reduced platform whose only fixed hardware is the sleep control
//! register (power-off = the guest writing SLP_TYP/SLP_EN there), and the DSDT names the
//! S5 sleep type the guest writes.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};

use crate::cpuid::CpuTopology;
use crate::error::VmmError;
use crate::layout::{
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_TABLES_END, ACPI_TABLES_START,
    APIC_DEFAULT_PHYS_BASE, COM1_IRQ, COM1_PORT_BASE, COM_PORT_SPAN, IO_APIC_DEFAULT_PHYS_BASE,
};

const OEM_ID: [u8; 6] = *b"GAPPRB";
const OEM_TABLE_ID: [u8; 8] = *b"GAPPROBE";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2 and up means 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// Size of the common ACPI table header (ACPI spec 5.2.6).
const ACPI_TABLE_HEADER_SIZE: u32 = 36;
/// PNP ID of a 16550A-compatible UART.
const PNP_16550_UART: &str = "PNP0501";

/// The SLP_TYP value the DSDT's `_S5_` object gives; the guest writes it back at power-off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register layout (ACPICA `ACPI_X_SLEEP_TYPE_MASK`, `ACPI_X_SLEEP_ENABLE`).
pub const ACPI_X_SLEEP_TYPE_MASK: u8 = 0x1c;
pub const ACPI_X_SLEEP_TYPE_POSITION: u8 = 2;
pub const ACPI_X_SLEEP_ENABLE: u8 = 0x20;

/// FADT IAPC_BOOT_ARCH flags (ACPI spec table 5.11): no VGA, no CMOS RTC (the kernel
/// otherwise spends seconds probing a clock that is not there).
const ACPI_FADT_NO_VGA: u16 = 1 << 2;
const ACPI_FADT_NO_CMOS_RTC: u16 = 1 << 5;

/// Tables are placed on 16-byte boundaries; the RSDP must be for the kernel's scan to find it.
const TABLE_ALIGN: usize = 16;

/// The tables as one blob loaded at [`ACPI_TABLES_START`], the RSDP first.
#[derive(Debug)]
pub struct AcpiTables {
    pub bytes: Vec<u8>,
}

impl AcpiTables {
    pub fn rsdp_address(&self) -> u64 {
        ACPI_TABLES_START
    }
}

/// Appends tables at aligned offsets and returns their guest addresses.
struct TableWriter {
    bytes: Vec<u8>,
}

impl TableWriter {
    fn reserve(&mut self, len: usize) -> u64 {
        let offset = self.bytes.len().next_multiple_of(TABLE_ALIGN);
        self.bytes.resize(offset + len, 0);
        ACPI_TABLES_START + offset as u64
    }

    fn put(&mut self, table: &dyn Aml) -> u64 {
        let mut bytes = Vec::new();
        table.to_aml_bytes(&mut bytes);
        let address = self.reserve(bytes.len());
        let offset = (address - ACPI_TABLES_START) as usize;
        self.bytes[offset..].copy_from_slice(&bytes);
        address
    }

    fn patch(&mut self, address: u64, table: &dyn Aml) {
        let mut bytes = Vec::new();
        table.to_aml_bytes(&mut bytes);
        let offset = (address - ACPI_TABLES_START) as usize;
        self.bytes[offset..offset + bytes.len()].copy_from_slice(&bytes);
    }
}

pub fn build_acpi_tables(topology: &CpuTopology) -> Result<AcpiTables, VmmError> {
    let mut writer = TableWriter { bytes: Vec::new() };
    // The RSDP goes first but points at the XSDT, which is written last.
    let rsdp_address = writer.reserve(Rsdp::len());

    let dsdt_address = writer.put(&dsdt());
    let fadt_address = writer.put(&fadt(dsdt_address));
    let madt_address = writer.put(&madt(topology));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_address);
    xsdt.add_entry(madt_address);
    let xsdt_address = writer.put(&xsdt);
    writer.patch(rsdp_address, &Rsdp::new(OEM_ID, xsdt_address));

    let room = (ACPI_TABLES_END - ACPI_TABLES_START) as usize;
    if writer.bytes.len() > room {
        return Err(VmmError::DoesNotFit {
            what: "ACPI tables",
            reason: format!("{} bytes, room for {room}", writer.bytes.len()),
        });
    }
    Ok(AcpiTables {
        bytes: writer.bytes,
    })
}

fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        ACPI_TABLE_HEADER_SIZE,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // Name (_S5, Package () { SLP_TYP_A, SLP_TYP_B })
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8]),
    );
    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    body.extend(com1_device());
    dsdt.append_slice(&body);
    dsdt
}

/// COM1 as an ACPI device. On a hardware-reduced platform there is no legacy PIC and ISA
/// IRQ 4 is not wired up by default, so the 8250 driver only gets its interrupt (and
/// userspace its console output) through this device's _CRS.
fn com1_device() -> Vec<u8> {
    let hid = aml::EISAName::new(PNP_16550_UART);
    let ports = aml::IO::new(COM1_PORT_BASE, COM1_PORT_BASE, 1, COM_PORT_SPAN as u8);
    // Consumer, edge-triggered, active high, exclusive.
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let resources = aml::ResourceTemplate::new(vec![&ports, &irq]);
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &0u8);
    let crs_name = aml::Name::new("_CRS".into(), &resources);
    let device = aml::Device::new("COM1".into(), vec![&hid_name, &uid_name, &crs_name]);
    let scope = aml::Scope::new("\\_SB_".into(), vec![&device]);
    let mut bytes = Vec::new();
    scope.to_aml_bytes(&mut bytes);
    bytes
}

fn fadt(dsdt_address: u64) -> impl Aml {
    let sleep_register = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .flag(Flags::HwReducedAcpi);
    fadt.sleep_control_reg = sleep_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = sleep_register(ACPI_SLEEP_STATUS_PORT);
    fadt.iapc_boot_arch = (ACPI_FADT_NO_VGA | ACPI_FADT_NO_CMOS_RTC).into();
    fadt.finalize()
}

fn madt(topology: &CpuTopology) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_DEFAULT_PHYS_BASE as u32),
    );
    for index in 0..topology.vcpus() {
        // MAX_VCPUS keeps both the UID and the APIC ID within a byte.
        madt.add_structure(ProcessorLocalApic::new(
            index as u8,
            topology.apic_id(index) as u8,
            EnabledStatus::Enabled,
        ));
    }
    // No interrupt source overrides: KVM wires GSI n to IOAPIC pin n, the PIT included.
    let io_apic_id = topology.apic_id(topology.vcpus() - 1) + 1;
    madt.add_structure(IoApic::new(
        io_apic_id as u8,
        IO_APIC_DEFAULT_PHYS_BASE as u32,
        0,
    ));
    madt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(bytes: &[u8], address: u64) -> &[u8] {
        let offset = (address - ACPI_TABLES_START) as usize;
        let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
        &bytes[offset..offset + len]
    }

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn tables_chain_and_checksum() {
        let topology = CpuTopology::new(4, 2).unwrap();
        let tables = build_acpi_tables(&topology).unwrap();
        let bytes = &tables.bytes;
        assert_eq!(&bytes[..8], b"RSD PTR ");
        assert!(checksum_ok(&bytes[..20]));
        assert!(checksum_ok(&bytes[..Rsdp::len()]));

        let xsdt = table_at(bytes, u64_at(bytes, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let signatures: Vec<&[u8]> = entries.iter().map(|&a| &table_at(bytes, a)[..4]).collect();
        assert_eq!(signatures, vec![&b"FACP"[..], &b"APIC"[..]]);

        let fadt = table_at(bytes, entries[0]);
        assert!(checksum_ok(fadt));
        // FADT: flags at 112, IAPC_BOOT_ARCH at 109, X_DSDT at 140, SLEEP_CONTROL_REG at 244.
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        let boot_arch = u16::from_le_bytes(fadt[109..111].try_into().unwrap());
        assert_eq!(boot_arch, ACPI_FADT_NO_VGA | ACPI_FADT_NO_CMOS_RTC);
        assert_eq!(fadt[244], AddressSpace::SystemIo as u8);
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(ACPI_SLEEP_STATUS_PORT));

        let dsdt = table_at(bytes, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(dsdt));
        // NameOp "_S5_" PackageOp len=5 count=2 BytePrefix 5, ZeroOp
        assert_eq!(
            &dsdt[36..47],
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]
        );
        let contains = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(
            contains(b"\\_SB_") && contains(b"COM1"),
            "COM1 device missing"
        );
        // IO descriptor (decode16, 0x3f8-0x3f8, align 1, 8 ports), then the extended
        // IRQ descriptor (consumer, edge, active high) for GSI 4.
        assert!(contains(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        assert!(contains(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00
        ]));
    }

    #[test]
    fn madt_lists_every_apic_and_one_ioapic() {
        let topology = CpuTopology::new(6, 3).unwrap();
        let tables = build_acpi_tables(&topology).unwrap();
        let bytes = &tables.bytes;
        let xsdt = table_at(bytes, u64_at(bytes, 24));
        let madt = table_at(bytes, u64_at(xsdt, 44));
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(madt));
        let lapic_base = u32::from_le_bytes(madt[36..40].try_into().unwrap());
        assert_eq!(u64::from(lapic_base), APIC_DEFAULT_PHYS_BASE);
        let mut apic_ids = Vec::new();
        let mut ioapics = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            let (kind, len) = (madt[offset], madt[offset + 1] as usize);
            match kind {
                0 => apic_ids.push(madt[offset + 3]),
                1 => ioapics.push(u32::from_le_bytes(
                    madt[offset + 4..offset + 8].try_into().unwrap(),
                )),
                other => panic!("unexpected MADT entry type {other}"),
            }
            offset += len;
        }
        assert_eq!(apic_ids, vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(ioapics, vec![IO_APIC_DEFAULT_PHYS_BASE as u32]);
    }
}
