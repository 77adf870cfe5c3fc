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

/// KVM maps guest memory with 2 MiB pages only where the host address has the guest
/// address's offset within 2 MiB, and transparent hugepages only fill aligned 2 MiB ranges.
/// Where the kernel happened to place RAM otherwise, every 4 KiB page took its own nested
/// page fault: the first L2 started in L1 spent minutes copying its kernel in the virtual
/// bare metal while the next one (aligned by chance) booted.
const PMD_SIZE: usize = 2 << 20;

/// Host mappings of guest RAM, unmapped on drop (the `GuestMemoryMmap` over them does not
/// own them). Drop it after the VM file descriptor and the memory built on it.
pub(crate) struct RamMappings {
    _unmapped_on_drop: Vec<HostMapping>,
}

struct HostMapping {
    address: *mut libc::c_void,
    length: usize,
}

// SAFETY: a mapping is plain process memory; unmapping it from another thread is fine.
unsafe impl Send for HostMapping {}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: this process mapped exactly this range and nothing else unmaps it.
        unsafe { libc::munmap(self.address, self.length) };
    }
}

/// Maps guest RAM, each range at a host address aligned like its guest address (see
/// [`PMD_SIZE`]). Anonymous RAM is offered to transparent hugepages. Hugepages are mapped
/// with a reservation (no MAP_NORESERVE), so a host without enough free hugepages fails here
/// instead of the guest dying of SIGBUS later.
pub(crate) fn guest_ram(
    layout: &MemoryLayout,
    backing: RamBacking,
) -> Result<(GuestMemoryMmap, RamMappings), VmmError> {
    let mut regions = Vec::new();
    let mut mappings = Vec::new();
    for (start, size) in layout.ram_ranges() {
        let length = usize::try_from(size)
            .map_err(|_| VmmError::Memory(format!("{size} bytes of RAM do not fit the host")))?;
        let mapping = map_aligned(start, length, backing)?;
        // SAFETY: `mapping` is a live read/write mapping of `length` bytes that lives in
        // `mappings` as long as the regions do.
        let region = unsafe {
            MmapRegionBuilder::new(length)
                .with_raw_mmap_pointer(mapping.address.cast())
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_hugetlbfs(backing == RamBacking::HugePages)
                .build()
        }
        .map_err(|err| VmmError::Memory(format!("RAM at {start:#x}: {err}")))?;
        mappings.push(mapping);
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| VmmError::Memory(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    let memory =
        GuestMemoryMmap::from_regions(regions).map_err(|err| VmmError::Memory(err.to_string()))?;
    Ok((
        memory,
        RamMappings {
            _unmapped_on_drop: mappings,
        },
    ))
}

/// Maps `length` bytes whose host address is congruent to `guest_start` modulo
/// [`PMD_SIZE`]: reserves `PMD_SIZE` more than needed, maps the RAM over the right part of
/// the reservation and returns the rest.
fn map_aligned(
    guest_start: u64,
    length: usize,
    backing: RamBacking,
) -> Result<HostMapping, VmmError> {
    let failed = |what: &str| {
        VmmError::Memory(format!(
            "cannot {what} {length} bytes ({backing:?}): {}",
            std::io::Error::last_os_error()
        ))
    };
    let reserved_length = length + PMD_SIZE;
    // SAFETY: a new PROT_NONE mapping at an address the kernel picks.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserved_length,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(failed("reserve address space for"));
    }
    let reservation = HostMapping {
        address: reserved,
        length: reserved_length,
    };
    let wanted = (guest_start % PMD_SIZE as u64) as usize;
    let skip = (wanted + PMD_SIZE - reserved as usize % PMD_SIZE) % PMD_SIZE;
    let address = reserved.wrapping_byte_add(skip);
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
    flags |= match backing {
        RamBacking::Anonymous => libc::MAP_NORESERVE,
        RamBacking::HugePages => libc::MAP_HUGETLB,
    };
    // SAFETY: MAP_FIXED replaces part of our own reservation, nothing else.
    let mapped = unsafe {
        libc::mmap(
            address,
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(failed("map"));
    }
    // The RAM now lives on its own; give back the reservation's head and tail.
    std::mem::forget(reservation);
    let tail = address.wrapping_byte_add(length);
    // SAFETY: both ranges are the unused parts of the reservation made above.
    unsafe {
        if skip > 0 {
            libc::munmap(reserved, skip);
        }
        if PMD_SIZE > skip {
            libc::munmap(tail, PMD_SIZE - skip);
        }
    }
    let mapping = HostMapping { address, length };
    if backing == RamBacking::Anonymous {
        // Advice only: a kernel without transparent hugepages refuses it, and that is fine.
        // SAFETY: madvise on our own mapping.
        unsafe { libc::madvise(address, length, libc::MADV_HUGEPAGE) };
    }
    Ok(mapping)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_mapped_at_host_addresses_aligned_like_guest_addresses() {
        // 3.5 GiB: one range below the MMIO gap, one from 4 GiB; nothing is touched.
        let layout = MemoryLayout::new(0xe000_0000, None).unwrap();
        for _ in 0..3 {
            let (ram, _mappings) = guest_ram(&layout, RamBacking::Anonymous).unwrap();
            assert_eq!(ram.num_regions(), 2);
            for region in ram.iter() {
                let host = region.as_ptr() as u64;
                assert_eq!(
                    host % PMD_SIZE as u64,
                    region.start_addr().0 % PMD_SIZE as u64
                );
            }
        }
    }
}
