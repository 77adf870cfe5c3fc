//! Guest RAM (anonymous, or 2 MiB hugepages in performance mode) and its KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use crate::error::VmmError;
use crate::layout::MemoryLayout;

/// Backing of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamBacking {
    Anonymous,
    HugePages,
}

/// Maps guest RAM. Hugepages are mapped with a reservation (no MAP_NORESERVE), so a host
/// without enough free hugepages fails here instead of the guest dying of SIGBUS later.
pub(crate) fn guest_ram(
    layout: &MemoryLayout,
    backing: RamBacking,
) -> Result<GuestMemoryMmap, VmmError> {
    let mut regions = Vec::new();
    for (start, size) in layout.ram_ranges() {
        let length = usize::try_from(size)
            .map_err(|_| VmmError::Memory(format!("{size} bytes of RAM do not fit the host")))?;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        flags |= match backing {
            RamBacking::Anonymous => libc::MAP_NORESERVE,
            RamBacking::HugePages => libc::MAP_HUGETLB,
        };
        let mapping = MmapRegionBuilder::new(length)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(backing == RamBacking::HugePages)
            .build()
            .map_err(|err| {
                VmmError::Memory(format!("cannot map {size} bytes ({backing:?}): {err}"))
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| VmmError::Memory(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|err| VmmError::Memory(err.to_string()))
}

/// Hands every RAM region, then the dump region, to KVM as memory slots 0, 1, ...
pub(crate) fn register_slots(
    vm: &VmFd,
    ram: &GuestMemoryMmap,
    dump: Option<(u64, &MmapRegion)>,
) -> Result<(), VmmError> {
    let mut slots: Vec<(u64, u64, u64)> = ram
        .iter()
        .map(|region| (region.start_addr().0, region.len(), region.as_ptr() as u64))
        .collect();
    if let Some((address, mapping)) = dump {
        slots.push((address, mapping.size() as u64, mapping.as_ptr() as u64));
    }
    for (slot, (guest_phys_addr, memory_size, userspace_addr)) in slots.into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr,
            memory_size,
            userspace_addr,
        };
        // SAFETY: the mappings belong to the Vm, which keeps them alive for as long as the
        // VM file descriptor exists, and the slots do not overlap (see `layout`).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
