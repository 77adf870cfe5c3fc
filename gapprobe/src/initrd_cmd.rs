//! `gapprobe initrd`: write a newc initramfs whose /init is a static executable (by default
//! this gapprobe), for `gapprobe boot` or any VMM.

use std::path::PathBuf;

use anyhow::Context;
use l2_initrd::{write_image_file, Compression, ExtraFile, InitrdSpec};

use crate::exit::Outcome;

#[derive(Debug, clap::Args)]
pub struct InitrdArgs {
    /// Image file to write (replaced atomically).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Static executable to use as /init [default: this gapprobe].
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Copy host file SRC to DEST inside the image (parent directories are created).
    #[arg(long = "add", value_name = "SRC=DEST")]
    pub add: Vec<ExtraFile>,
    /// Compression: gzip (any stock kernel) or none (fastest to unpack).
    #[arg(long, value_name = "gzip|none", default_value = "none")]
    pub compress: Compression,
}

pub fn run(args: &InitrdArgs) -> anyhow::Result<Outcome> {
    let init = match &args.init {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating the running gapprobe for /init")?,
    };
    let spec = InitrdSpec {
        init,
        extra_files: args.add.clone(),
        compression: args.compress,
    };
    let summary = write_image_file(&spec, &args.output)?;
    let bytes = std::fs::metadata(&args.output)
        .with_context(|| format!("{}: reading back its size", args.output.display()))?
        .len();
    println!(
        "gapprobe: wrote {} ({} entries, {} bytes, /init = {})",
        args.output.display(),
        summary.entries,
        bytes,
        spec.init.display()
    );
    Ok(Outcome::Clean)
}
