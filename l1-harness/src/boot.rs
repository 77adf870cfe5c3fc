//! Loading the kernel, the initramfs and the command line, and filling the zero page
//! (`boot_params`) as the x86 64-bit boot protocol describes (Documentation/arch/x86/boot.rst).

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::KernelImage;
use crate::error::VmmError;
use crate::layout::{
    MemoryLayout, CMDLINE_CAPACITY, CMDLINE_START, HIMEM_START, PAGE_SIZE, ZERO_PAGE_START,
};

/// Boot protocol 2.12 added `xloadflags`; XLF_KERNEL_64 says the 64-bit entry exists.
const BOOT_PROTOCOL_2_12: u16 = 0x020c;
const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry point sits this far into the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// boot_params holds at most this many e820 entries (E820_MAX_ENTRIES_ZEROPAGE).
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Where the vCPU starts, once memory is loaded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedImage {
    pub(crate) entry: u64,
    /// First byte above the kernel's memory footprint (its `init_size` for a bzImage).
    pub(crate) kernel_end: u64,
    setup: Option<setup_header>,
}

pub(crate) fn load_kernel(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: &KernelImage,
) -> Result<LoadedImage, VmmError> {
    match image {
        KernelImage::BzImage(path) => load_bzimage(mem, layout, path),
        KernelImage::Flat64(code) => {
            let end = HIMEM_START + code.len() as u64;
            if end > layout.low_ram_end() {
                return Err(VmmError::DoesNotFit {
                    what: "flat image",
                    reason: format!("{} bytes from {HIMEM_START:#x}", code.len()),
                });
            }
            mem.write_slice(code, GuestAddress(HIMEM_START))
                .map_err(|err| VmmError::Memory(format!("flat image: {err}")))?;
            Ok(LoadedImage {
                entry: HIMEM_START,
                kernel_end: end,
                setup: None,
            })
        }
    }
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
) -> Result<LoadedImage, VmmError> {
    let bad = |reason: String| VmmError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|reason| VmmError::Open {
        path: path.to_path_buf(),
        reason,
    })?;
    let file_len = file
        .metadata()
        .map_err(|err| bad(format!("cannot stat: {err}")))?
        .len();
    if HIMEM_START + file_len > layout.low_ram_end() {
        return Err(VmmError::DoesNotFit {
            what: "kernel",
            reason: format!("{} is {file_len} bytes", path.display()),
        });
    }
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|err| bad(format!("not a loadable bzImage: {err}")))?;
    let setup = loaded
        .setup_header
        .ok_or_else(|| bad("no setup header".to_string()))?;
    let (version, xloadflags, init_size) = (setup.version, setup.xloadflags, setup.init_size);
    if version < BOOT_PROTOCOL_2_12 || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(bad(format!(
            "boot protocol {}.{:02} without a 64-bit entry point",
            version >> 8,
            version & 0xff
        )));
    }
    let kernel_end = loaded.kernel_load.0 + u64::from(init_size);
    if kernel_end > layout.low_ram_end() {
        return Err(VmmError::DoesNotFit {
            what: "kernel",
            reason: format!("it needs {init_size} bytes from {HIMEM_START:#x} to decompress"),
        });
    }
    Ok(LoadedImage {
        entry: loaded.kernel_load.0 + STARTUP_64_OFFSET,
        kernel_end,
        setup: Some(setup),
    })
}

/// Places the initramfs at the top of low RAM (below the kernel's `initrd_addr_max`) and
/// returns its (address, size).
pub(crate) fn load_initrd(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedImage,
    path: &Path,
) -> Result<(u64, u64), VmmError> {
    let mut file = File::open(path).map_err(|reason| VmmError::Open {
        path: path.to_path_buf(),
        reason,
    })?;
    let size = file
        .metadata()
        .map_err(|reason| VmmError::Open {
            path: path.to_path_buf(),
            reason,
        })?
        .len();
    let ceiling = kernel.setup.map_or(layout.low_ram_end(), |setup| {
        layout
            .low_ram_end()
            .min(u64::from(setup.initrd_addr_max) + 1)
    });
    let address = ceiling
        .checked_sub(size)
        .map(|top| top & !(PAGE_SIZE - 1))
        .filter(|&address| address >= kernel.kernel_end)
        .ok_or_else(|| VmmError::DoesNotFit {
            what: "initramfs",
            reason: format!(
                "{} is {size} bytes, {} bytes are free above the kernel",
                path.display(),
                ceiling.saturating_sub(kernel.kernel_end)
            ),
        })?;
    let length = usize::try_from(size).map_err(|_| VmmError::DoesNotFit {
        what: "initramfs",
        reason: format!("{size} bytes"),
    })?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, length)
        .map_err(|err| VmmError::BadImage {
            path: path.to_path_buf(),
            reason: format!("cannot read: {err}"),
        })?;
    Ok((address, size))
}

/// Writes the command line and the zero page.
pub(crate) fn write_boot_params(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedImage,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp_address: u64,
) -> Result<(), VmmError> {
    // The kernel's limit excludes the terminating NUL.
    let limit = kernel
        .setup
        .map_or(CMDLINE_CAPACITY - 1, |setup| setup.cmdline_size as usize)
        .min(CMDLINE_CAPACITY - 1);
    if cmdline.len() > limit || cmdline.contains('\0') {
        return Err(VmmError::DoesNotFit {
            what: "command line",
            reason: format!("{} bytes, the kernel takes at most {limit}", cmdline.len()),
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|err| VmmError::Memory(format!("command line: {err}")))?;

    let mut params = boot_params::default();
    if let Some(setup) = kernel.setup {
        params.hdr = setup;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = bytes.len() as u32;
    if let Some((address, size)) = initrd {
        params.hdr.ramdisk_image = address as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp_address;
    let e820 = layout.e820();
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(VmmError::DoesNotFit {
            what: "e820 map",
            reason: format!("{} entries", e820.len()),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|err| VmmError::Memory(format!("zero page: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::E820_RAM;

    fn guest(layout: &MemoryLayout) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = layout
            .ram_ranges()
            .iter()
            .map(|&(start, size)| (GuestAddress(start), size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    /// A minimal bzImage: setup header fields at their boot-protocol offsets.
    fn fake_bzimage(version: u16, xloadflags: u16, init_size: u32) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut image = vec![0u8; (setup_sects as usize + 1) * 512 + 4096];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = 0x01; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        let payload = (setup_sects as usize + 1) * 512;
        image[payload..payload + 4].copy_from_slice(b"\x0f\x0b\xeb\xfe");
        image
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    #[test]
    fn bzimage_loads_at_1mib_with_64bit_entry() {
        let layout = MemoryLayout::new(64 << 20, None).unwrap();
        let mem = guest(&layout);
        let image = write_temp(&fake_bzimage(0x020f, XLF_KERNEL_64, 8 << 20));
        let kernel =
            load_kernel(&mem, &layout, &KernelImage::BzImage(image.path().into())).unwrap();
        assert_eq!(kernel.entry, HIMEM_START + STARTUP_64_OFFSET);
        assert_eq!(kernel.kernel_end, HIMEM_START + (8 << 20));
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(&code, b"\x0f\x0b\xeb\xfe");

        let initrd = write_temp(&[0x5a; 10_000]);
        let (address, size) = load_initrd(&mem, &layout, &kernel, initrd.path()).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(address % PAGE_SIZE, 0);
        assert!(address + size <= 64 << 20 && address >= kernel.kernel_end);

        write_boot_params(
            &mem,
            &layout,
            &kernel,
            "console=ttyS0",
            Some((address, size)),
            0xe0000,
        )
        .unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(
            ({ hdr.type_of_loader }, { hdr.cmd_line_ptr }),
            (0xff, CMDLINE_START as u32)
        );
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (address as u32, 10_000)
        );
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(params.e820_entries as usize, layout.e820().len());
        let last = params.e820_table[params.e820_entries as usize - 1];
        assert_eq!(
            ({ last.addr } + { last.size }, { last.r#type }),
            (64 << 20, E820_RAM)
        );
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
    }

    #[test]
    fn rejects_images_without_64bit_entry_or_room() {
        let layout = MemoryLayout::new(64 << 20, None).unwrap();
        let mem = guest(&layout);
        let old = write_temp(&fake_bzimage(0x020a, 0, 1 << 20));
        let err = load_kernel(&mem, &layout, &KernelImage::BzImage(old.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64-bit entry"), "{err}");
        let huge = write_temp(&fake_bzimage(0x020f, XLF_KERNEL_64, 128 << 20));
        let err = load_kernel(&mem, &layout, &KernelImage::BzImage(huge.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("decompress"), "{err}");
        let garbage = write_temp(&[0u8; 8192]);
        let err = load_kernel(&mem, &layout, &KernelImage::BzImage(garbage.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&garbage.path().display().to_string()), "{err}");
        let missing = KernelImage::BzImage("/nonexistent/vmlinuz".into());
        assert!(matches!(
            load_kernel(&mem, &layout, &missing),
            Err(VmmError::Open { .. })
        ));
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let layout = MemoryLayout::new(32 << 20, None).unwrap();
        let mem = guest(&layout);
        let kernel = load_kernel(&mem, &layout, &KernelImage::Flat64(vec![0xf4])).unwrap();
        let big = write_temp(&vec![0u8; 40 << 20]);
        assert!(matches!(
            load_initrd(&mem, &layout, &kernel, big.path()),
            Err(VmmError::DoesNotFit {
                what: "initramfs",
                ..
            })
        ));
    }

    #[test]
    fn overlong_command_line_is_refused() {
        let layout = MemoryLayout::new(32 << 20, None).unwrap();
        let mem = guest(&layout);
        let kernel = load_kernel(&mem, &layout, &KernelImage::Flat64(vec![0xf4])).unwrap();
        let long = "x".repeat(CMDLINE_CAPACITY);
        assert!(write_boot_params(&mem, &layout, &kernel, &long, None, 0).is_err());
    }
}
