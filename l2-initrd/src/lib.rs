//! Reproducible newc initramfs images whose /init is a static executable (by default
//! gapprobe itself), with the directories and device nodes /init needs and extra files.
//!
//! Stock kernels unpack these as they are or gzip-compressed (CONFIG_RD_GZIP).

mod archive;
mod elf_static;
mod error;
mod layout;
mod spec;

pub use archive::{write_image, write_image_file, ImageSummary};
pub use elf_static::check_static_executable;
pub use error::InitrdError;
pub use spec::{Compression, ExtraFile, InitrdSpec};
