//! The guest's CPUID: KVM's supported table, patched so the guest sees our SMT topology,
//! knows it runs on KVM, and gets SVM/VMX only when nested virtualization is wanted.
//!
//! Linux derives SMT siblings from leaf 0xB/0x1F (both vendors; on AMD only when TOPOEXT is
//! set, through `amd_get_topology`), from leaf 0x8000001E on AMD family >= 0x17, and sizes
//! the package from leaf 1 EBX[23:16] and, on AMD, leaf 0x80000008 ECX.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};

use crate::error::VmmError;

/// Leaves and bits used below (Intel SDM vol. 2A "CPUID", AMD APM vol. 3 appendix E).
const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMETERS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_SVM: u32 = 0x8000_000a;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const FEATURE_ECX_VMX: u32 = 1 << 5;
const FEATURE_ECX_HYPERVISOR: u32 = 1 << 31;
const FEATURE_EDX_HTT: u32 = 1 << 28;
const EXT_FEATURE_ECX_SVM: u32 = 1 << 2;
const EXT_FEATURE_ECX_TOPOEXT: u32 = 1 << 22;
/// CPUID 0x40000001 EDX: vCPUs are never preempted on the host, so the guest may spin.
pub const KVM_HINTS_REALTIME: u32 = 1 << 0;

/// Leaf 0xB/0x1F level types (ECX[15:8]).
const TOPOLOGY_LEVEL_INVALID: u32 = 0;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

const AMD_VENDOR: &[u8; 12] = b"AuthenticAMD";

/// The most vCPUs a guest may have: APIC IDs must fit the 8-bit MADT Local APIC entries
/// and leaf 1 EBX[31:24].
pub const MAX_VCPUS: u32 = 128;

/// The guest CPU topology: one package of `vcpus / threads_per_core` cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    vcpus: u32,
    threads_per_core: u32,
}

impl CpuTopology {
    pub fn new(vcpus: u32, threads_per_core: u32) -> Result<Self, VmmError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(VmmError::InvalidConfig(format!(
                "{vcpus} vCPUs: must be 1 to {MAX_VCPUS}"
            )));
        }
        if threads_per_core == 0 || !vcpus.is_multiple_of(threads_per_core) {
            return Err(VmmError::InvalidConfig(format!(
                "{vcpus} vCPUs cannot be laid out as cores of {threads_per_core} threads"
            )));
        }
        Ok(Self {
            vcpus,
            threads_per_core,
        })
    }

    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    pub fn threads_per_core(&self) -> u32 {
        self.threads_per_core
    }

    pub fn cores(&self) -> u32 {
        self.vcpus / self.threads_per_core
    }

    /// APIC ID bits of the thread within its core.
    pub fn smt_bits(&self) -> u32 {
        count_order(self.threads_per_core)
    }

    /// APIC ID bits of the thread within the package (core bits + SMT bits).
    pub fn package_bits(&self) -> u32 {
        self.smt_bits() + count_order(self.cores())
    }

    /// (core, thread) of vCPU `index`.
    pub fn position(&self, index: u32) -> (u32, u32) {
        (index / self.threads_per_core, index % self.threads_per_core)
    }

    /// The APIC ID of vCPU `index`; also its KVM vCPU id, which KVM uses as the LAPIC ID.
    pub fn apic_id(&self, index: u32) -> u32 {
        let (core, thread) = self.position(index);
        (core << self.smt_bits()) | thread
    }
}

/// Smallest n with 2^n >= value (the kernel's `get_count_order`).
fn count_order(value: u32) -> u32 {
    value.next_power_of_two().trailing_zeros()
}

/// What the guest may see beyond the topology.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidOptions {
    /// Keep SVM/VMX so the guest can run KVM itself.
    pub nested: bool,
    /// Set KVM_HINTS_REALTIME (performance mode: vCPUs own their host CPUs).
    pub realtime_hint: bool,
}

/// The CPUID table for vCPU `index`, derived from KVM's supported table.
pub fn guest_cpuid(
    supported: &CpuId,
    topology: &CpuTopology,
    index: u32,
    options: CpuidOptions,
) -> Result<CpuId, VmmError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let apic_id = topology.apic_id(index);
    let amd = is_amd(&entries);

    let max_basic = leaf(&entries, LEAF_VENDOR).map_or(0, |entry| entry.eax);
    let max_basic = max_basic.max(LEAF_EXT_TOPOLOGY);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_VENDOR => entry.eax = max_basic,
            LEAF_FEATURES => patch_features(entry, topology, apic_id, options),
            LEAF_CACHE_PARAMETERS => patch_cache_parameters(entry, topology),
            LEAF_KVM_FEATURES if options.realtime_hint => entry.edx |= KVM_HINTS_REALTIME,
            LEAF_EXT_MAX if amd => entry.eax = entry.eax.max(LEAF_AMD_EXT_APIC_ID),
            LEAF_EXT_FEATURES => {
                if amd {
                    entry.ecx |= EXT_FEATURE_ECX_TOPOEXT;
                }
                if !options.nested {
                    entry.ecx &= !EXT_FEATURE_ECX_SVM;
                }
            }
            LEAF_EXT_ADDRESS_SIZES if amd => {
                // NC (threads in the package - 1) and ApicIdCoreIdSize.
                entry.ecx = (entry.ecx & !0xf0ff)
                    | (topology.package_bits() << 12)
                    | (topology.vcpus() - 1);
            }
            _ => {}
        }
    }
    if !options.nested {
        entries.retain(|entry| entry.function != LEAF_AMD_SVM);
    }

    entries.retain(|entry| {
        ![
            LEAF_EXT_TOPOLOGY,
            LEAF_V2_EXT_TOPOLOGY,
            LEAF_AMD_EXT_APIC_ID,
        ]
        .contains(&entry.function)
    });
    entries.extend(extended_topology(LEAF_EXT_TOPOLOGY, topology, apic_id));
    if max_basic >= LEAF_V2_EXT_TOPOLOGY {
        entries.extend(extended_topology(LEAF_V2_EXT_TOPOLOGY, topology, apic_id));
    }
    if amd {
        let (core, _) = topology.position(index);
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_AMD_EXT_APIC_ID,
            eax: apic_id,
            ebx: ((topology.threads_per_core() - 1) << 8) | core,
            ..Default::default()
        });
    }

    if entries.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(VmmError::InvalidConfig(format!(
            "the CPUID table has {} entries, KVM takes at most {KVM_MAX_CPUID_ENTRIES}",
            entries.len()
        )));
    }
    CpuId::from_entries(&entries)
        .map_err(|err| VmmError::InvalidConfig(format!("CPUID table: {err:?}")))
}

fn leaf(entries: &[kvm_cpuid_entry2], function: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|entry| entry.function == function)
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    leaf(entries, LEAF_VENDOR).is_some_and(|entry| {
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&entry.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&entry.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&entry.ecx.to_le_bytes());
        &vendor == AMD_VENDOR
    })
}

fn patch_features(
    entry: &mut kvm_cpuid_entry2,
    topology: &CpuTopology,
    apic_id: u32,
    options: CpuidOptions,
) {
    // EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processors per package.
    let logical = (1u32 << topology.package_bits()).min(0xff);
    entry.ebx = (entry.ebx & 0xffff) | (logical << 16) | (apic_id << 24);
    if topology.vcpus() > 1 {
        entry.edx |= FEATURE_EDX_HTT;
    }
    entry.ecx |= FEATURE_ECX_HYPERVISOR;
    if !options.nested {
        entry.ecx &= !FEATURE_ECX_VMX;
    }
}

/// Leaf 4 EAX[25:14]: logical processors sharing the cache - 1; EAX[31:26]: cores - 1.
fn patch_cache_parameters(entry: &mut kvm_cpuid_entry2, topology: &CpuTopology) {
    let cache_type = entry.eax & 0x1f;
    if cache_type == 0 {
        return;
    }
    let level = (entry.eax >> 5) & 0x7;
    let sharing_bits = if level >= 3 {
        topology.package_bits()
    } else {
        topology.smt_bits()
    };
    let cores_bits = topology.package_bits() - topology.smt_bits();
    entry.eax =
        (entry.eax & 0x3fff) | (((1 << sharing_bits) - 1) << 14) | (((1 << cores_bits) - 1) << 26);
}

/// Leaf 0xB or 0x1F: subleaf 0 the SMT level, 1 the core level, 2 the terminating level.
fn extended_topology(function: u32, topology: &CpuTopology, apic_id: u32) -> Vec<kvm_cpuid_entry2> {
    let level = |index: u32, shift: u32, count: u32, kind: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (kind << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    vec![
        level(
            0,
            topology.smt_bits(),
            topology.threads_per_core(),
            TOPOLOGY_LEVEL_SMT,
        ),
        level(
            1,
            topology.package_bits(),
            topology.vcpus(),
            TOPOLOGY_LEVEL_CORE,
        ),
        level(2, 0, 0, TOPOLOGY_LEVEL_INVALID),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;

    fn vendor_leaf(vendor: &[u8; 12], max: u32) -> kvm_cpuid_entry2 {
        let word = |range: std::ops::Range<usize>| {
            u32::from_le_bytes(vendor[range].try_into().expect("4 bytes"))
        };
        kvm_cpuid_entry2 {
            function: LEAF_VENDOR,
            eax: max,
            ebx: word(0..4),
            edx: word(4..8),
            ecx: word(8..12),
            ..Default::default()
        }
    }

    /// A supported table shaped like a QEMU `-cpu max` AMD guest's: few leaves, no 0xB.
    fn amd_supported() -> CpuId {
        let entries = [
            vendor_leaf(AMD_VENDOR, 0x7),
            kvm_cpuid_entry2 {
                function: LEAF_FEATURES,
                eax: 0xf61,
                ebx: 0x0000_0800,
                ecx: FEATURE_ECX_VMX,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_KVM_SIGNATURE,
                eax: LEAF_KVM_FEATURES,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_KVM_FEATURES,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXT_MAX,
                eax: 0x8000_000a,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXT_FEATURES,
                ecx: EXT_FEATURE_ECX_SVM,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXT_ADDRESS_SIZES,
                eax: 0x3030,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_SVM,
                eax: 1,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|entry| entry.function == function && entry.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn apic_ids_pack_threads_then_cores() {
        let two_by_two = CpuTopology::new(4, 2).unwrap();
        assert_eq!(
            (0..4).map(|i| two_by_two.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(two_by_two.package_bits(), 2);
        // Three threads per core need two APIC ID bits: IDs skip 3.
        let three = CpuTopology::new(6, 3).unwrap();
        assert_eq!(
            (0..6).map(|i| three.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 4, 5, 6]
        );
        assert!(CpuTopology::new(5, 2).is_err());
        assert!(CpuTopology::new(0, 1).is_err());
        assert!(CpuTopology::new(MAX_VCPUS + 1, 1).is_err());
    }

    #[test]
    fn amd_guest_gets_smt_topology_leaves() {
        let topology = CpuTopology::new(4, 2).unwrap();
        let cpuid = guest_cpuid(&amd_supported(), &topology, 3, CpuidOptions::default()).unwrap();

        assert_eq!(find(&cpuid, LEAF_VENDOR, 0).eax, LEAF_EXT_TOPOLOGY);
        let features = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(features.ebx >> 24, 3, "initial APIC ID");
        assert_eq!(
            (features.ebx >> 16) & 0xff,
            4,
            "logical processors per package"
        );
        assert_eq!(features.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(features.edx & FEATURE_EDX_HTT, 0);
        assert_ne!(features.ecx & FEATURE_ECX_HYPERVISOR, 0);
        assert_eq!(features.ecx & FEATURE_ECX_VMX, 0, "no nesting unless asked");

        let smt = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 3));
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        assert_eq!(
            find(&cpuid, LEAF_EXT_TOPOLOGY, 2).ecx >> 8,
            TOPOLOGY_LEVEL_INVALID
        );

        assert_eq!(find(&cpuid, LEAF_EXT_MAX, 0).eax, LEAF_AMD_EXT_APIC_ID);
        let ext = find(&cpuid, LEAF_EXT_FEATURES, 0);
        assert_ne!(ext.ecx & EXT_FEATURE_ECX_TOPOEXT, 0);
        assert_eq!(ext.ecx & EXT_FEATURE_ECX_SVM, 0);
        let sizes = find(&cpuid, LEAF_EXT_ADDRESS_SIZES, 0);
        assert_eq!((sizes.eax, sizes.ecx), (0x3030, (2 << 12) | 3));
        let ext_apic = find(&cpuid, LEAF_AMD_EXT_APIC_ID, 0);
        assert_eq!(
            (ext_apic.eax, ext_apic.ebx, ext_apic.ecx),
            (3, (1 << 8) | 1, 0)
        );
        assert!(cpuid
            .as_slice()
            .iter()
            .all(|entry| entry.function != LEAF_AMD_SVM));
        assert_eq!(
            find(&cpuid, LEAF_KVM_FEATURES, 0).edx & KVM_HINTS_REALTIME,
            0
        );
    }

    #[test]
    fn nested_and_realtime_options() {
        let topology = CpuTopology::new(2, 2).unwrap();
        let options = CpuidOptions {
            nested: true,
            realtime_hint: true,
        };
        let cpuid = guest_cpuid(&amd_supported(), &topology, 0, options).unwrap();
        assert_ne!(
            find(&cpuid, LEAF_EXT_FEATURES, 0).ecx & EXT_FEATURE_ECX_SVM,
            0
        );
        assert_ne!(find(&cpuid, LEAF_FEATURES, 0).ecx & FEATURE_ECX_VMX, 0);
        assert_eq!(find(&cpuid, LEAF_AMD_SVM, 0).eax, 1);
        assert_ne!(
            find(&cpuid, LEAF_KVM_FEATURES, 0).edx & KVM_HINTS_REALTIME,
            0
        );
    }

    #[test]
    fn intel_guest_gets_cache_sharing_and_v2_topology() {
        let entries = [
            vendor_leaf(b"GenuineIntel", 0x1f),
            // L1 data cache (type 1, level 1) and L3 (type 3, level 3).
            kvm_cpuid_entry2 {
                function: LEAF_CACHE_PARAMETERS,
                index: 0,
                eax: 0x21,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_CACHE_PARAMETERS,
                index: 3,
                eax: 0x63,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let topology = CpuTopology::new(8, 2).unwrap();
        let cpuid = guest_cpuid(&supported, &topology, 5, CpuidOptions::default()).unwrap();
        let l1 = find(&cpuid, LEAF_CACHE_PARAMETERS, 0);
        assert_eq!(((l1.eax >> 14) & 0xfff, l1.eax >> 26), (1, 3));
        let l3 = find(&cpuid, LEAF_CACHE_PARAMETERS, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 7);
        assert_eq!(find(&cpuid, LEAF_V2_EXT_TOPOLOGY, 1).ebx, 8);
        assert_eq!(find(&cpuid, LEAF_V2_EXT_TOPOLOGY, 0).edx, 5);
        // AMD-only leaves stay out of an Intel guest.
        assert!(cpuid
            .as_slice()
            .iter()
            .all(|entry| entry.function != LEAF_AMD_EXT_APIC_ID));
    }
}
