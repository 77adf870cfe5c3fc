//! The guest side of the dump region: guest-physical memory that our VMM backs with the host's
//! dump file (MAP_SHARED), written here through /dev/mem. The range is outside e820 RAM, which
//! STRICT_DEVMEM allows. What the guest writes is in the host file with no copy; the console
//! line `gapprobe-dump: trace=N json=M` tells the host how much of it is the trace and where the
//! JSON result that follows it ends.

use std::fs::OpenOptions;
use std::num::NonZeroUsize;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Console line prefix announcing the region's contents.
pub const DUMP_LINE_PREFIX: &str = "gapprobe-dump: ";

/// Guest-physical address and size, from `gapprobe.dump=0xADDR,0xSIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub address: u64,
    pub size: u64,
}

impl Region {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        let number = |text: &str| {
            let digits = text.trim().trim_start_matches("0x");
            u64::from_str_radix(digits, 16).with_context(|| format!("gapprobe.dump={value}"))
        };
        let Some((address, size)) = value.split_once(',') else {
            bail!("gapprobe.dump={value}: expected 0xADDR,0xSIZE");
        };
        Ok(Self {
            address: number(address)?,
            size: number(size)?,
        })
    }

    /// Writes `trace` then `json` at the start of the region. A trace too large for the region
    /// is cut (the returned length says how much went in).
    pub fn write(&self, trace: &[u8], json: &[u8]) -> anyhow::Result<(usize, usize)> {
        let size = self.size as usize;
        if json.len() > size {
            bail!(
                "the result ({} bytes) does not fit the dump region ({size} bytes)",
                json.len()
            );
        }
        let trace_len = trace.len().min(size - json.len());
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open("/dev/mem")
            .context("/dev/mem (the kernel needs CONFIG_DEVMEM)")?;
        let length = NonZeroUsize::new(size).context("empty dump region")?;
        // SAFETY: a fresh shared mapping of a range no Rust object aliases; unmapped below.
        let mapping = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &mem,
                self.address as libc::off_t,
            )
        }
        .with_context(|| format!("mmap /dev/mem at {:#x}", self.address))?;
        // SAFETY: the mapping is `size` bytes long and both copies stay inside it.
        unsafe {
            let base = mapping.as_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(trace.as_ptr(), base, trace_len);
            std::ptr::copy_nonoverlapping(json.as_ptr(), base.add(trace_len), json.len());
            munmap(mapping, size).context("munmap /dev/mem")?;
        }
        Ok((trace_len, json.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_vmm_key() {
        assert_eq!(
            Region::parse("0xf0000000,0x1000000").unwrap(),
            Region {
                address: 0xf000_0000,
                size: 0x100_0000
            }
        );
        assert!(Region::parse("0xf0000000").is_err());
        assert!(Region::parse("zz,0x10").is_err());
    }
}
