//! Is an executable safe as /init of an empty root? Only if it needs no program interpreter:
//! the kernel would look for the PT_INTERP path (ld-linux) inside the initramfs and fail.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::InitrdError;

const ELFMAG: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
/// Size of the larger (ELF64) file header; an ELF32 header is a prefix-compatible 52 bytes.
const ELF64_EHDR_SIZE: usize = 64;
/// Longest interpreter path worth quoting in an error.
const INTERP_QUOTE_MAX: u64 = 256;

/// Field offsets and widths that differ between ELF32 and ELF64 (from elf.h).
struct Layout {
    e_type: usize,
    e_phoff: usize,
    e_phentsize: usize,
    e_phnum: usize,
    p_offset: usize,
    p_filesz: usize,
    word: usize,
    /// sizeof(Elf32_Phdr) / sizeof(Elf64_Phdr): a smaller e_phentsize is corrupt.
    phdr_size: u64,
}

const ELF32: Layout = Layout {
    e_type: 16,
    e_phoff: 28,
    e_phentsize: 42,
    e_phnum: 44,
    p_offset: 4,
    p_filesz: 16,
    word: 4,
    phdr_size: 32,
};

const ELF64: Layout = Layout {
    e_type: 16,
    e_phoff: 32,
    e_phentsize: 54,
    e_phnum: 56,
    p_offset: 8,
    p_filesz: 32,
    word: 8,
    phdr_size: 56,
};

struct Decoder {
    layout: &'static Layout,
    big_endian: bool,
}

impl Decoder {
    fn uint(&self, bytes: &[u8], at: usize, width: usize) -> Option<u64> {
        let field = bytes.get(at..at + width)?;
        let fold = |acc: u64, b: &u8| (acc << 8) | u64::from(*b);
        Some(if self.big_endian {
            field.iter().fold(0, fold)
        } else {
            field.iter().rev().fold(0, fold)
        })
    }

    fn word(&self, bytes: &[u8], at: usize) -> Option<u64> {
        self.uint(bytes, at, self.layout.word)
    }
}

/// Succeeds when `path` is an ELF executable (static or static-pie) without PT_INTERP.
pub fn check_static_executable(path: &Path) -> Result<(), InitrdError> {
    let not_elf = |reason| InitrdError::NotElf {
        path: path.to_path_buf(),
        reason,
    };
    let io_err = |e| InitrdError::io(path, e);
    let mut file = File::open(path).map_err(io_err)?;
    let mut header = Vec::with_capacity(ELF64_EHDR_SIZE);
    (&mut file)
        .take(ELF64_EHDR_SIZE as u64)
        .read_to_end(&mut header)
        .map_err(io_err)?;
    if !header.starts_with(ELFMAG) {
        return Err(not_elf("no ELF magic"));
    }
    let layout = match header.get(EI_CLASS) {
        Some(&ELFCLASS32) => &ELF32,
        Some(&ELFCLASS64) => &ELF64,
        _ => return Err(not_elf("unknown ELF class")),
    };
    let big_endian = match header.get(EI_DATA) {
        Some(&ELFDATA2LSB) => false,
        Some(&ELFDATA2MSB) => true,
        _ => return Err(not_elf("unknown ELF data encoding")),
    };
    let elf = Decoder { layout, big_endian };
    let truncated = || not_elf("truncated ELF header");
    let e_type = elf.uint(&header, layout.e_type, 2).ok_or_else(truncated)?;
    if e_type != u64::from(ET_EXEC) && e_type != u64::from(ET_DYN) {
        return Err(not_elf("neither ET_EXEC nor ET_DYN"));
    }
    let phoff = elf.word(&header, layout.e_phoff).ok_or_else(truncated)?;
    let phentsize = elf
        .uint(&header, layout.e_phentsize, 2)
        .ok_or_else(truncated)?;
    let phnum = elf.uint(&header, layout.e_phnum, 2).ok_or_else(truncated)?;
    if phnum == 0 {
        return Err(not_elf("no program headers"));
    }
    if phentsize < layout.phdr_size {
        return Err(not_elf("program header entries too small"));
    }

    let table_len = phentsize * phnum;
    let mut table = Vec::new();
    file.seek(SeekFrom::Start(phoff)).map_err(io_err)?;
    (&mut file)
        .take(table_len)
        .read_to_end(&mut table)
        .map_err(io_err)?;
    if (table.len() as u64) < table_len {
        return Err(not_elf("truncated program header table"));
    }
    for entry in table.chunks_exact(phentsize as usize) {
        if elf.uint(entry, 0, 4) != Some(u64::from(PT_INTERP)) {
            continue;
        }
        let offset = elf.word(entry, layout.p_offset).ok_or_else(truncated)?;
        let size = elf.word(entry, layout.p_filesz).ok_or_else(truncated)?;
        let mut interp = Vec::new();
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        (&mut file)
            .take(size.min(INTERP_QUOTE_MAX))
            .read_to_end(&mut interp)
            .map_err(io_err)?;
        let interpreter = String::from_utf8_lossy(&interp)
            .trim_end_matches('\0')
            .to_string();
        return Err(InitrdError::DynamicExecutable {
            path: path.to_path_buf(),
            interpreter,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_dynamic_executable_and_names_it() {
        let err = check_static_executable(Path::new("/bin/ls")).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, InitrdError::DynamicExecutable { .. }),
            "{message}"
        );
        assert!(message.contains("/bin/ls"), "{message}");
        assert!(message.contains("ld-linux"), "{message}");
    }

    #[test]
    fn accepts_this_static_test_binary() {
        // The workspace builds every target binary with crt-static (.cargo/config.toml),
        // so the running test executable is itself a static-pie like gapprobe.
        let me = std::env::current_exe().unwrap();
        check_static_executable(&me).unwrap();
    }

    #[test]
    fn refuses_a_script_and_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("init.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let err = check_static_executable(&script).unwrap_err();
        assert!(matches!(err, InitrdError::NotElf { .. }), "{err}");
        assert!(err.to_string().contains("init.sh"), "{err}");

        let missing = dir.path().join("missing");
        let err = check_static_executable(&missing).unwrap_err();
        assert!(matches!(err, InitrdError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn refuses_a_truncated_program_header_table() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &me[..ELF64_EHDR_SIZE + 8]).unwrap();
        let err = check_static_executable(&cut).unwrap_err();
        assert!(matches!(err, InitrdError::NotElf { .. }), "{err}");
    }
}
