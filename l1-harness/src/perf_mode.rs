//! Performance mode and vCPU pinning: which host CPU runs each vCPU thread, and the host
//! settings that keep the guest from being disturbed (ktstr's performance mode).

use std::fs;
use std::path::Path;

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_X86_DISABLE_EXITS, KVM_X86_DISABLE_EXITS_HLT,
    KVM_X86_DISABLE_EXITS_PAUSE,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::Placement;
use crate::cpuid::CpuTopology;
use crate::error::VmmError;
use crate::host_topology::{HostTopology, SYSFS_CPU_ROOT};

/// SCHED_FIFO priorities: the service thread (console, watchdog) above the vCPUs so that it
/// can always stop them.
pub const VCPU_FIFO_PRIORITY: i32 = 1;
pub const SERVICE_FIFO_PRIORITY: i32 = 2;
/// `mbind` policy (include/uapi/linux/mempolicy.h).
const MPOL_BIND: libc::c_int = 2;

/// Where threads go and which performance-mode settings to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementPlan {
    /// Host CPU of vCPU `index`.
    pub vcpu_cpus: Vec<usize>,
    /// Host CPU of the service thread (the caller of `Vm::run`), performance mode only.
    pub service_cpu: Option<usize>,
    pub performance: bool,
}

/// Decides the placement. Performance mode refuses hosts that cannot isolate the vCPUs
/// (`VmmError::PerfModeUnavailable`); plain pinning falls back to one CPU per vCPU.
pub fn plan_placement(
    placement: Placement,
    topology: &CpuTopology,
    host: &HostTopology,
) -> Result<Option<PlacementPlan>, VmmError> {
    let vcpus = topology.vcpus() as usize;
    let pairs_needed = vcpus.div_ceil(2);
    let paired = || {
        host.vcpu_sibling_pairs(pairs_needed).map(|pairs| {
            pairs
                .iter()
                .flatten()
                .copied()
                .take(vcpus)
                .collect::<Vec<usize>>()
        })
    };
    match placement {
        Placement::Floating => Ok(None),
        Placement::Pinned => {
            let vcpu_cpus = paired().unwrap_or_else(|_| {
                // No SMT pairs: one CPU each, CPU 0 last, wrapping if there are too few.
                let mut cpus: Vec<usize> = host.online_cpus().to_vec();
                cpus.rotate_left(1);
                (0..vcpus).map(|index| cpus[index % cpus.len()]).collect()
            });
            Ok(Some(PlacementPlan {
                vcpu_cpus,
                service_cpu: None,
                performance: false,
            }))
        }
        Placement::Performance => {
            let vcpu_cpus =
                paired().map_err(|err| VmmError::PerfModeUnavailable(err.to_string()))?;
            let service_cpu = host
                .online_cpus()
                .iter()
                .copied()
                .find(|cpu| !vcpu_cpus.contains(cpu))
                .ok_or_else(|| {
                    VmmError::PerfModeUnavailable(
                        "no host CPU is left for the service thread".to_string(),
                    )
                })?;
            Ok(Some(PlacementPlan {
                vcpu_cpus,
                service_cpu: Some(service_cpu),
                performance: true,
            }))
        }
    }
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET checks nothing but we stay within its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `set` is a valid cpu_set_t and cpu is in range (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the calling thread SCHED_FIFO at `priority`.
pub(crate) fn set_current_thread_fifo(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread and param is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks KVM to let the guest execute HLT and PAUSE natively; returns one note per part.
pub(crate) fn disable_idle_exits(vm: &VmFd) -> Vec<String> {
    let allowed = vm
        .check_extension_raw(u64::from(KVM_CAP_X86_DISABLE_EXITS))
        .max(0) as u32;
    let mut notes = Vec::new();
    let mut wanted = 0;
    for (bit, name) in [
        (KVM_X86_DISABLE_EXITS_HLT, "HLT"),
        (KVM_X86_DISABLE_EXITS_PAUSE, "PAUSE"),
    ] {
        if allowed & bit != 0 {
            wanted |= bit;
        } else {
            notes.push(format!("warning: KVM will not disable {name} exits"));
        }
    }
    if wanted == 0 {
        return notes;
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_DISABLE_EXITS,
        ..Default::default()
    };
    cap.args[0] = u64::from(wanted);
    match vm.enable_cap(&cap) {
        Ok(()) => notes.push(format!("{} exits disabled", exit_names(wanted))),
        Err(err) => notes.push(format!(
            "warning: disabling {} exits failed: {err}",
            exit_names(wanted)
        )),
    }
    notes
}

fn exit_names(bits: u32) -> &'static str {
    match bits {
        b if b == KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_PAUSE => "HLT and PAUSE",
        KVM_X86_DISABLE_EXITS_HLT => "HLT",
        _ => "PAUSE",
    }
}

/// The NUMA node of a host CPU, from its `nodeN` link in sysfs.
fn cpu_node(cpu: usize) -> Option<usize> {
    let dir = Path::new(SYSFS_CPU_ROOT).join(format!("cpu{cpu}"));
    fs::read_dir(dir).ok()?.find_map(|entry| {
        let name = entry.ok()?.file_name();
        name.to_str()?.strip_prefix("node")?.parse().ok()
    })
}

/// Binds guest RAM to the NUMA node of the first vCPU's CPU; returns a note.
pub(crate) fn bind_memory(ram: &GuestMemoryMmap, cpu: usize) -> String {
    let Some(node) = cpu_node(cpu) else {
        return format!("warning: no NUMA node found for CPU {cpu}; memory not bound");
    };
    let mask_bits = 8 * std::mem::size_of::<libc::c_ulong>();
    if node >= mask_bits {
        return format!("warning: NUMA node {node} is beyond the mbind mask; memory not bound");
    }
    let mask: libc::c_ulong = 1 << node;
    for region in ram.iter() {
        // SAFETY: the range is a live mapping owned by `ram`; the mask outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                region.as_ptr(),
                region.len(),
                MPOL_BIND,
                &mask as *const libc::c_ulong,
                mask_bits as libc::c_ulong,
                0 as libc::c_uint,
            )
        };
        if rc != 0 {
            return format!(
                "warning: mbind to node {node} failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    format!("guest memory bound to NUMA node {node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(online: &str, siblings: &[&str]) -> (tempfile::TempDir, HostTopology) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("online"), online).unwrap();
        for (cpu, list) in siblings.iter().enumerate() {
            let topology = dir.path().join(format!("cpu{cpu}/topology"));
            fs::create_dir_all(&topology).unwrap();
            fs::write(topology.join("thread_siblings_list"), list).unwrap();
        }
        let host = HostTopology::read(dir.path()).unwrap();
        (dir, host)
    }

    #[test]
    fn performance_mode_pairs_vcpus_on_sibling_threads_after_cpu0s_core() {
        let (_dir, host) = fake_host(
            "0-7",
            &["0,4", "1,5", "2,6", "3,7", "0,4", "1,5", "2,6", "3,7"],
        );
        let topology = CpuTopology::new(4, 2).unwrap();
        let plan = plan_placement(Placement::Performance, &topology, &host)
            .unwrap()
            .unwrap();
        assert_eq!(plan.vcpu_cpus, vec![1, 5, 2, 6]);
        assert_eq!(plan.service_cpu, Some(0));
        assert!(plan.performance);
    }

    #[test]
    fn performance_mode_refuses_hosts_without_enough_pairs() {
        let (_dir, host) = fake_host("0-3", &["0", "1", "2", "3"]);
        let topology = CpuTopology::new(2, 2).unwrap();
        let err = plan_placement(Placement::Performance, &topology, &host).unwrap_err();
        assert!(matches!(err, VmmError::PerfModeUnavailable(_)), "{err}");
        // Plain pinning still works: one CPU each, CPU 0 last.
        let plan = plan_placement(Placement::Pinned, &topology, &host)
            .unwrap()
            .unwrap();
        assert_eq!(plan.vcpu_cpus, vec![1, 2]);
        assert_eq!(plan.service_cpu, None);
        let many = CpuTopology::new(6, 2).unwrap();
        let plan = plan_placement(Placement::Pinned, &many, &host)
            .unwrap()
            .unwrap();
        assert_eq!(plan.vcpu_cpus, vec![1, 2, 3, 0, 1, 2]);
        assert!(plan_placement(Placement::Floating, &many, &host)
            .unwrap()
            .is_none());
    }

    #[test]
    fn pinning_the_current_thread_takes_effect() {
        let cpu = *HostTopology::from_host()
            .unwrap()
            .online_cpus()
            .last()
            .unwrap();
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, cpu as i32);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(1 << 20).is_err());
    }
}
