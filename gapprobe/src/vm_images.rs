//! The initramfs images `gapprobe vm` boots, and the memory they and the guests need.
//!
//! L1's image: `/init` = this static gapprobe, `/modules/<name>.ko` for `--modules`, and in
//! nested mode `/l2/vmlinuz` and `/l2/initrd` (an image whose /init is the same gapprobe).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use l2_initrd::{write_image_file, Compression, ExtraFile, InitrdError, InitrdSpec};

use crate::vm_guest_args::size_word;

/// Where L1's /init finds the modules `gapprobe.modules=` names (the kvm-target contract).
pub const L1_MODULES_DIR: &str = "/modules";
/// Where the nested role finds the L2 kernel and image in L1 (the kvm-target contract).
pub const L2_KERNEL_IN_L1: &str = "/l2/vmlinuz";
pub const L2_INITRD_IN_L1: &str = "/l2/initrd";

/// What an L1 kernel needs besides its initramfs and trace buffers: its own text and data,
/// page tables, and the detector's threads. A conservative floor, not a measurement.
pub const L1_KERNEL_RESERVE: u64 = 128 << 20;
/// The same floor for an L2 guest, which must also unpack its initramfs.
pub const L2_KERNEL_RESERVE: u64 = 64 << 20;
/// Memory per L2 guest unless `--l2-mem` says otherwise (and `--mem` leaves room for it).
pub const L2_DEFAULT_MEM: u64 = 256 << 20;
/// Guest memory sizes we choose are whole 2 MiB pages (hugepage-sized, as the VMM prefers).
const GUEST_MEM_ALIGN: u64 = 2 << 20;
/// L1 memory without --mem for the user target.
pub const L1_DEFAULT_MEM: u64 = 1 << 30;
/// The ELF magic every uncompressed kernel module starts with.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

#[derive(Debug, thiserror::Error)]
pub enum VmImageError {
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },
    #[error("--modules: two modules are named {name} (they share /modules in L1)")]
    DuplicateModule { name: String },
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error("{0}")]
    Memory(String),
}

fn input_error(path: &Path, reason: impl Into<String>) -> VmImageError {
    VmImageError::Input {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A readable regular file, or an error naming it.
pub fn check_readable_file(path: &Path, what: &str) -> Result<(), VmImageError> {
    let metadata =
        std::fs::metadata(path).map_err(|err| input_error(path, format!("{what}: {err}")))?;
    if !metadata.is_file() {
        return Err(input_error(path, format!("{what}: not a regular file")));
    }
    std::fs::File::open(path).map_err(|err| input_error(path, format!("{what}: {err}")))?;
    Ok(())
}

/// Checks each module (an uncompressed ELF file: /init loads it with finit_module and no
/// decompression flag) and returns the names they get under /modules, in order.
pub fn check_modules(modules: &[PathBuf]) -> Result<Vec<String>, VmImageError> {
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    for path in modules {
        check_readable_file(path, "--modules")?;
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut file| file.read_exact(&mut magic))
            .map_err(|err| input_error(path, format!("--modules: {err}")))?;
        if &magic != ELF_MAGIC {
            return Err(input_error(
                path,
                "--modules: not an uncompressed kernel module (decompress .ko.xz/.ko.zst first)",
            ));
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| input_error(path, "--modules: no file name"))?;
        if !seen.insert(name.clone()) {
            return Err(VmImageError::DuplicateModule { name });
        }
        names.push(name);
    }
    Ok(names)
}

/// The files of L1's image besides /init.
#[derive(Debug, Clone)]
pub struct L1Contents<'a> {
    pub modules: &'a [PathBuf],
    pub module_names: &'a [String],
    /// (L2 kernel, L2 initramfs) in nested mode.
    pub l2: Option<(&'a Path, &'a Path)>,
}

/// Writes an image whose /init is `init` and nothing else: the L2 image.
pub fn write_l2_image(init: &Path, output: &Path) -> Result<u64, VmImageError> {
    write_image(init, Vec::new(), output)
}

/// Writes L1's image; returns its size in bytes.
pub fn write_l1_image(
    init: &Path,
    contents: &L1Contents,
    output: &Path,
) -> Result<u64, VmImageError> {
    let mut extra: Vec<ExtraFile> = contents
        .modules
        .iter()
        .zip(contents.module_names)
        .map(|(path, name)| ExtraFile {
            source: path.clone(),
            dest: format!("{}/{name}", L1_MODULES_DIR.trim_start_matches('/')),
        })
        .collect();
    if let Some((kernel, initrd)) = contents.l2 {
        for (source, dest) in [(kernel, L2_KERNEL_IN_L1), (initrd, L2_INITRD_IN_L1)] {
            extra.push(ExtraFile {
                source: source.to_path_buf(),
                dest: dest.trim_start_matches('/').to_string(),
            });
        }
    }
    write_image(init, extra, output)
}

fn write_image(
    init: &Path,
    extra_files: Vec<ExtraFile>,
    output: &Path,
) -> Result<u64, VmImageError> {
    let spec = InitrdSpec {
        init: init.to_path_buf(),
        extra_files,
        // Unpacking plain newc is fastest in a guest that may be emulated.
        compression: Compression::None,
    };
    write_image_file(&spec, output)?;
    std::fs::metadata(output)
        .map(|metadata| metadata.len())
        .map_err(|err| input_error(output, format!("reading back its size: {err}")))
}

/// Guest memory sizes, decided before anything boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub l1_mem: u64,
    /// Per L2 guest, in nested mode.
    pub l2_mem: Option<u64>,
}

/// What the sizes are computed from.
#[derive(Debug, Clone, Copy)]
pub struct MemoryNeeds {
    /// L1's initramfs; the kernel holds it and its unpacked copy at once while booting.
    pub l1_image: u64,
    /// L1's trace buffers (per-CPU buffer size x vCPUs).
    pub trace_buffers: u64,
    /// `--mem`, if given.
    pub mem: Option<u64>,
    /// (`--l2-vms`, `--l2-mem` if given, L2 kernel + image) in nested mode.
    pub nested: Option<(u32, Option<u64>, u64)>,
}

/// Decides L1's (and each L2's) memory, or says in one line why it cannot fit.
pub fn plan_memory(needs: MemoryNeeds) -> Result<MemoryPlan, VmImageError> {
    let l1_own = needs
        .l1_image
        .saturating_mul(2)
        .saturating_add(needs.trace_buffers)
        .saturating_add(L1_KERNEL_RESERVE);
    let Some((vms, l2_mem, l2_payload)) = needs.nested else {
        let l1_mem = needs
            .mem
            .unwrap_or(L1_DEFAULT_MEM.max(l1_own).next_multiple_of(GUEST_MEM_ALIGN));
        if l1_mem < l1_own {
            return Err(VmImageError::Memory(format!(
                "--mem {} is too small: L1's initramfs is {} (held twice while it unpacks), its \
                 trace buffers {} and the kernel needs {}; give at least --mem {}",
                size_word(l1_mem),
                mib(needs.l1_image),
                mib(needs.trace_buffers),
                mib(L1_KERNEL_RESERVE),
                mib_up(l1_own)
            )));
        }
        return Ok(MemoryPlan {
            l1_mem,
            l2_mem: None,
        });
    };
    let l2_floor = l2_payload
        .saturating_mul(2)
        .saturating_add(L2_KERNEL_RESERVE)
        .next_multiple_of(GUEST_MEM_ALIGN);
    let l2_mem = match (l2_mem, needs.mem) {
        (Some(l2_mem), _) if !l2_mem.is_multiple_of(1 << 20) => {
            return Err(VmImageError::Memory(format!(
                "--l2-mem {l2_mem} bytes: give whole MiB (e.g. 256M)"
            )));
        }
        (Some(l2_mem), _) => l2_mem,
        (None, None) => L2_DEFAULT_MEM.max(l2_floor),
        // "Or what fits": share what --mem leaves after L1's own needs.
        (None, Some(mem)) => {
            let share = mem.saturating_sub(l1_own) / u64::from(vms.max(1));
            (share / GUEST_MEM_ALIGN * GUEST_MEM_ALIGN).min(L2_DEFAULT_MEM.max(l2_floor))
        }
    };
    if l2_mem < l2_floor {
        return Err(VmImageError::Memory(format!(
            "{} per L2 guest is too small: its kernel and initramfs are {} (the image is held \
             twice while it unpacks) and it needs {} more; give --l2-mem {} or more{}",
            size_word(l2_mem),
            mib(l2_payload),
            mib(L2_KERNEL_RESERVE),
            mib_up(l2_floor),
            if needs.mem.is_some() {
                " or a larger --mem"
            } else {
                ""
            }
        )));
    }
    let l2_total = l2_mem.saturating_mul(u64::from(vms));
    let needed = l1_own.saturating_add(l2_total);
    let l1_mem = needs
        .mem
        .unwrap_or(needed.next_multiple_of(GUEST_MEM_ALIGN));
    if l1_mem < needed {
        return Err(VmImageError::Memory(format!(
            "--mem {} cannot hold {vms} L2 guests of {} ({}) plus L1's own {} (initramfs {} \
             held twice, trace buffers {}, kernel {}); give at least --mem {}",
            size_word(l1_mem),
            size_word(l2_mem),
            mib(l2_total),
            mib(l1_own),
            mib(needs.l1_image),
            mib(needs.trace_buffers),
            mib(L1_KERNEL_RESERVE),
            mib_up(needed)
        )));
    }
    Ok(MemoryPlan {
        l1_mem,
        l2_mem: Some(l2_mem),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// A size to suggest: whole MiB, rounded up.
fn mib_up(bytes: u64) -> String {
    format!("{}M", bytes.div_ceil(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn needs(mem: Option<u64>, nested: Option<(u32, Option<u64>, u64)>) -> MemoryNeeds {
        MemoryNeeds {
            l1_image: 20 * MIB,
            trace_buffers: 64 * MIB,
            mem,
            nested,
        }
    }

    #[test]
    fn user_target_memory() {
        assert_eq!(
            plan_memory(needs(None, None)).unwrap(),
            MemoryPlan {
                l1_mem: L1_DEFAULT_MEM,
                l2_mem: None
            }
        );
        let own = 40 * MIB + 64 * MIB + L1_KERNEL_RESERVE;
        assert_eq!(plan_memory(needs(Some(own), None)).unwrap().l1_mem, own);
        let err = plan_memory(needs(Some(own - 1), None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mem"), "{err}");
        assert!(
            err.contains(&format!("at least --mem {}M", own / MIB)),
            "{err}"
        );
    }

    #[test]
    fn nested_memory_defaults_and_checks() {
        let own = 40 * MIB + 64 * MIB + L1_KERNEL_RESERVE;
        let plan = plan_memory(needs(None, Some((8, None, 30 * MIB)))).unwrap();
        assert_eq!(plan.l2_mem, Some(L2_DEFAULT_MEM));
        assert_eq!(plan.l1_mem, own + 8 * L2_DEFAULT_MEM);
        let odd = MemoryNeeds {
            l1_image: 20 * MIB + 12345,
            ..needs(None, Some((2, None, 30 * MIB + 777)))
        };
        let plan = plan_memory(odd).unwrap();
        assert!(plan.l1_mem.is_multiple_of(GUEST_MEM_ALIGN), "{plan:?}");
        assert!(
            plan.l2_mem.unwrap().is_multiple_of(GUEST_MEM_ALIGN),
            "{plan:?}"
        );

        // A given --mem is shared out when --l2-mem is not given.
        let plan =
            plan_memory(needs(Some(own + 8 * 200 * MIB), Some((8, None, 30 * MIB)))).unwrap();
        assert_eq!(plan.l2_mem, Some(200 * MIB));

        // Too little for N L2s of the given size: say so.
        let err = plan_memory(needs(Some(1 << 30), Some((8, Some(256 * MIB), 30 * MIB))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold 8 L2 guests of 256M"), "{err}");

        let err = plan_memory(needs(None, Some((2, Some(256 * MIB + 1), 30 * MIB))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole MiB"), "{err}");

        // An L2 smaller than its own kernel and image.
        let err = plan_memory(needs(None, Some((2, Some(64 * MIB), 30 * MIB))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("per L2 guest is too small"), "{err}");
    }

    #[test]
    fn modules_must_be_plain_elf_with_distinct_names() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("kvm.ko");
        std::fs::write(&good, b"\x7fELF rest").unwrap();
        assert_eq!(
            check_modules(std::slice::from_ref(&good)).unwrap(),
            ["kvm.ko"]
        );

        let packed = dir.path().join("kvm-amd.ko.xz");
        std::fs::write(&packed, b"\xfd7zXZ").unwrap();
        let err = check_modules(&[packed]).unwrap_err().to_string();
        assert!(
            err.contains("kvm-amd.ko.xz") && err.contains("uncompressed"),
            "{err}"
        );

        let missing = dir.path().join("absent.ko");
        let err = check_modules(&[missing]).unwrap_err().to_string();
        assert!(err.contains("absent.ko"), "{err}");

        let other = dir.path().join("sub");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("kvm.ko"), b"\x7fELF").unwrap();
        let err = check_modules(&[good, other.join("kvm.ko")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("two modules are named kvm.ko"), "{err}");
    }
}
