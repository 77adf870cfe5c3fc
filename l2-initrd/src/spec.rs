//! What goes into an image: /init, extra files, compression. Parsed from the command line.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::InitrdError;

/// One host file copied into the image: `SRC=DEST`, DEST a path inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub source: PathBuf,
    /// Normalised: relative to the image root, no empty, `.` or `..` components.
    pub dest: String,
}

impl FromStr for ExtraFile {
    type Err = InitrdError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InitrdError::InvalidExtraFile {
            spec: spec.to_string(),
            reason,
        };
        let (source, dest) = spec
            .split_once('=')
            .ok_or_else(|| invalid("expected SRC=DEST"))?;
        if source.is_empty() {
            return Err(invalid("empty SRC"));
        }
        let dest = normalise_dest(dest).map_err(invalid)?;
        Ok(ExtraFile {
            source: PathBuf::from(source),
            dest,
        })
    }
}

fn normalise_dest(dest: &str) -> Result<String, &'static str> {
    let relative = dest.trim_start_matches('/');
    if relative.is_empty() {
        return Err("empty DEST");
    }
    for component in relative.split('/') {
        match component {
            "" => return Err("DEST has an empty path component"),
            "." | ".." => return Err("DEST must not contain . or .. components"),
            _ => {}
        }
    }
    Ok(relative.to_string())
}

/// How the archive is wrapped; stock kernels (CONFIG_RD_GZIP) unpack gzip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain newc: fastest to unpack in slow (emulated) guests.
    #[default]
    None,
    Gzip,
}

impl FromStr for Compression {
    type Err = InitrdError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            _ => Err(InitrdError::UnknownCompression {
                name: name.to_string(),
            }),
        }
    }
}

/// A complete image description.
#[derive(Debug, Clone)]
pub struct InitrdSpec {
    /// Host path of the static executable that becomes /init.
    pub init: PathBuf,
    pub extra_files: Vec<ExtraFile>,
    pub compression: Compression,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_src_and_normalises_dest() {
        let extra: ExtraFile = "/boot/vmlinuz=/l2/vmlinuz".parse().unwrap();
        assert_eq!(extra.source, PathBuf::from("/boot/vmlinuz"));
        assert_eq!(extra.dest, "l2/vmlinuz");
        // Only the first '=' splits: DEST may contain '='.
        let extra: ExtraFile = "a=b=c".parse().unwrap();
        assert_eq!(extra.dest, "b=c");
    }

    #[test]
    fn refuses_malformed_extra_files() {
        for bad in [
            "nodest",
            "=x",
            "src=",
            "src=/",
            "src=a//b",
            "src=../x",
            "src=a/./b",
        ] {
            let err = bad.parse::<ExtraFile>().unwrap_err();
            assert!(
                matches!(err, InitrdError::InvalidExtraFile { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn parses_compression_names() {
        assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip);
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        let err = "lz4".parse::<Compression>().unwrap_err();
        assert!(err.to_string().contains("lz4"), "{err}");
    }
}
