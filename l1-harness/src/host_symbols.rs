//! Tells a hung guest from a broken host: a stopped vCPU whose RIP is the host kernel's own
//! VM-entry code holds the host's state, not the guest's. Emulated SVM (QEMU TCG, the virtual
//! bare metal of our tests) was seen doing that: the vCPU's registers read back as the host's
//! own, RIP just after the host's VMRUN and RSP on the host's stack, and it never ran again.

use std::fs;

/// What the hang report says after naming such a symbol; test harnesses look for it.
pub const HOST_STATE_IN_GUEST: &str =
    "the vCPU holds the host's own state (a fault of the host's virtualization, not of the guest)";

/// Where the host's kernel names its symbols (addresses are zero unless we are root).
const KALLSYMS: &str = "/proc/kallsyms";

/// The host routines that execute VMRUN / VMLAUNCH: a guest RIP inside one of them is the
/// host's own (arch/x86/kvm/svm/vmenter.S, arch/x86/kvm/vmx/vmenter.S).
const VM_ENTRY_SYMBOLS: &[&str] = &[
    "__svm_vcpu_run",
    "__svm_sev_es_vcpu_run",
    "__vmx_vcpu_run",
    "vmx_vmenter",
    "vmx_vmexit",
];

/// `__svm_vcpu_run+0x6c [kvm_amd]` when `address` lies in one of this host's VM-entry
/// routines, per /proc/kallsyms; None otherwise or when the symbols cannot be read.
pub(crate) fn host_vm_entry_symbol(address: u64) -> Option<String> {
    let kallsyms = fs::read_to_string(KALLSYMS).ok()?;
    let (start, name) = containing_text_symbol(&kallsyms, address)?;
    let bare_name = name.split_whitespace().next()?;
    VM_ENTRY_SYMBOLS
        .contains(&bare_name)
        .then(|| format!("{bare_name}+{:#x}{}", address - start, module_suffix(name)))
}

/// The symbol (start, rest of the line) that contains `address`: the highest start at or
/// below it, with the next symbol above it as the end; None unless it is text. Unsorted
/// input is fine (modules follow the kernel in /proc/kallsyms).
fn containing_text_symbol(kallsyms: &str, address: u64) -> Option<(u64, &str)> {
    let mut best: Option<(u64, &str, &str)> = None;
    let mut next_start = u64::MAX;
    for line in kallsyms.lines() {
        let mut fields = line.splitn(3, ' ');
        let (Some(start), Some(kind), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(start) = u64::from_str_radix(start, 16) else {
            continue;
        };
        if start == 0 {
            continue;
        }
        if start > address {
            next_start = next_start.min(start);
        } else if best.is_none_or(|(found, _, _)| start > found) {
            best = Some((start, kind, rest));
        }
    }
    let (start, kind, rest) = best.filter(|_| address < next_start)?;
    matches!(kind, "t" | "T").then_some((start, rest))
}

/// ` [kvm_amd]` for a module symbol, empty for the kernel's own.
fn module_suffix(rest: &str) -> String {
    rest.split_once('\t')
        .map(|(_, module)| format!(" {}", module.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS_SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff814835d0 t cpu_idle_poll.isra.0
ffffffff81483700 T default_idle
ffffffffc04aecd0 t svm_vcpu_enter_exit\t[kvm_amd]
ffffffffc04aed30 t __svm_vcpu_run\t[kvm_amd]
ffffffffc04aef40 t __svm_sev_es_vcpu_run\t[kvm_amd]
ffffffffc04ae000 d svm_data\t[kvm_amd]
";

    #[test]
    fn finds_the_symbol_around_an_address() {
        assert_eq!(
            containing_text_symbol(KALLSYMS_SAMPLE, 0xffff_ffff_c04a_edcc),
            Some((0xffff_ffff_c04a_ed30, "__svm_vcpu_run\t[kvm_amd]"))
        );
        assert_eq!(
            containing_text_symbol(KALLSYMS_SAMPLE, 0xffff_ffff_8148_35fb).map(|(start, _)| start),
            Some(0xffff_ffff_8148_35d0)
        );
        // Below the first symbol, in data, and past the last one (no end known: that symbol).
        assert_eq!(containing_text_symbol(KALLSYMS_SAMPLE, 0x1000), None);
        assert_eq!(
            containing_text_symbol(KALLSYMS_SAMPLE, 0xffff_ffff_c04a_e010),
            None
        );
        assert!(containing_text_symbol(KALLSYMS_SAMPLE, 0xffff_ffff_c04a_ef50).is_some());
    }

    #[test]
    fn zeroed_addresses_name_nothing() {
        // What an unprivileged reader sees (kptr_restrict).
        let hidden = "0000000000000000 T _stext\n0000000000000000 t __svm_vcpu_run\t[kvm_amd]\n";
        assert_eq!(containing_text_symbol(hidden, 0xffff_ffff_c04a_edcc), None);
    }

    #[test]
    fn module_suffix_names_the_module() {
        assert_eq!(module_suffix("__svm_vcpu_run\t[kvm_amd]"), " [kvm_amd]");
        assert_eq!(module_suffix("default_idle"), "");
    }
}
