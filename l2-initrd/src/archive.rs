//! Serialises planned entries as a newc archive, reproducibly: inode numbers by position,
//! uid/gid 0, mtime 0, optional gzip with a fixed header (no name, mtime 0).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use cpio::newc::{self, ModeFileType};

use crate::error::InitrdError;
use crate::layout::{plan, Content, Entry};
use crate::spec::{Compression, InitrdSpec};

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    /// Archive entries, the trailer not counted.
    pub entries: usize,
}

/// Writes the image described by `spec` to `out`. `out_name` names the destination in errors.
pub fn write_image<W: Write>(
    spec: &InitrdSpec,
    out: W,
    out_name: &Path,
) -> Result<ImageSummary, InitrdError> {
    let entries = plan(spec)?;
    let out_err = |e| InitrdError::io(out_name, e);
    match spec.compression {
        Compression::None => {
            let mut out = out;
            write_entries(&entries, &mut out, out_name)?;
            out.flush().map_err(out_err)?;
        }
        Compression::Gzip => {
            let mut gz = flate2::GzBuilder::new().write(out, flate2::Compression::default());
            write_entries(&entries, &mut gz, out_name)?;
            gz.finish().and_then(|mut w| w.flush()).map_err(out_err)?;
        }
    }
    Ok(ImageSummary {
        entries: entries.len(),
    })
}

/// Writes the image to `path` atomically: a sibling temporary file renamed into place, so
/// a reader (a VMM, a test) never sees half an image and a failure leaves no partial file.
pub fn write_image_file(spec: &InitrdSpec, path: &Path) -> Result<ImageSummary, InitrdError> {
    let file_name = path.file_name().ok_or_else(|| {
        InitrdError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(file_name);
    partial_name.push(".partial");
    let partial = path.with_file_name(partial_name);
    let result = File::create(&partial)
        .map_err(|e| InitrdError::io(&partial, e))
        .and_then(|file| write_image(spec, io::BufWriter::new(file), path))
        .and_then(|summary| {
            fs::rename(&partial, path).map_err(|e| InitrdError::io(path, e))?;
            Ok(summary)
        });
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&partial);
    }
    result
}

fn write_entries<W: Write>(
    entries: &[Entry],
    out: &mut W,
    out_name: &Path,
) -> Result<(), InitrdError> {
    let out_err = |e| InitrdError::io(out_name, e);
    for (index, entry) in entries.iter().enumerate() {
        // Inode 0 is avoided: some unpackers treat it as "no inode".
        let ino = u32::try_from(index + 1).map_err(|_| {
            out_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many entries for newc inode numbers",
            ))
        })?;
        let builder = newc::Builder::new(&entry.path)
            .ino(ino)
            .uid(0)
            .gid(0)
            .mtime(0)
            .mode(entry.permissions);
        match &entry.content {
            Content::Directory => {
                builder
                    .set_mode_file_type(ModeFileType::Directory)
                    .nlink(2)
                    .write(&mut *out, 0)
                    .finish()
                    .map_err(out_err)?;
            }
            Content::CharDevice { major, minor } => {
                builder
                    .set_mode_file_type(ModeFileType::Char)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut *out, 0)
                    .finish()
                    .map_err(out_err)?;
            }
            Content::File { source, size } => {
                let mut input = File::open(source).map_err(|e| InitrdError::io(source, e))?;
                let mut writer = builder
                    .set_mode_file_type(ModeFileType::Regular)
                    .write(&mut *out, *size);
                // A copy error may come from either side; name both.
                io::copy(&mut input, &mut writer).map_err(|e| {
                    InitrdError::io(
                        source,
                        io::Error::new(
                            e.kind(),
                            format!("copying into {}: {e}", out_name.display()),
                        ),
                    )
                })?;
                // finish() fails if the file changed size since it was measured.
                writer.finish().map_err(|e| InitrdError::io(source, e))?;
            }
        }
    }
    newc::trailer(out).map_err(out_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct ReadBack {
        name: String,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u32,
        rdev: (u32, u32),
        ino: u32,
        data: Vec<u8>,
    }

    /// Parses a whole newc archive with the cpio crate's reader.
    fn read_back(mut archive: &[u8]) -> Vec<ReadBack> {
        let mut entries = Vec::new();
        loop {
            let mut reader = newc::Reader::new(archive).unwrap();
            if reader.entry().is_trailer() {
                return entries;
            }
            let e = reader.entry().clone();
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            entries.push(ReadBack {
                name: e.name().to_string(),
                mode: e.mode(),
                uid: e.uid(),
                gid: e.gid(),
                mtime: e.mtime(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                ino: e.ino(),
                data,
            });
            archive = reader.finish().unwrap();
        }
    }

    fn spec_in(dir: &Path, compression: Compression) -> InitrdSpec {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("report.sh");
        fs::write(&script, b"#!/bin/sh\necho report\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
        let odd = dir.join("odd");
        fs::write(&odd, b"12345").unwrap();
        InitrdSpec {
            init: std::env::current_exe().unwrap(),
            extra_files: vec![
                format!("{}=/etc/rc/report.sh", script.display())
                    .parse()
                    .unwrap(),
                format!("{}=bin/odd", odd.display()).parse().unwrap(),
            ],
            compression,
        }
    }

    #[test]
    fn round_trips_through_the_cpio_reader() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path(), Compression::None);
        let mut image = Vec::new();
        let summary = write_image(&spec, &mut image, Path::new("mem")).unwrap();
        let entries = read_back(&image);
        assert_eq!(summary.entries, entries.len());

        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/odd",
                "dev",
                "dev/console",
                "dev/mem",
                "dev/null",
                "etc",
                "etc/rc",
                "etc/rc/report.sh",
                "init",
                "proc",
                "run",
                "sys",
                "tmp"
            ]
        );
        for (index, e) in entries.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            assert_eq!(e.ino, index as u32 + 1, "{}", e.name);
        }
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("dev/console").mode, 0o020600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert_eq!(by_name("dev/null").rdev, (1, 3));
        assert_eq!(by_name("dev/mem").rdev, (1, 1));
        assert_eq!(by_name("tmp").mode, 0o041777);
        assert_eq!(by_name("etc/rc").mode, 0o040755);
        let report = by_name("etc/rc/report.sh");
        assert_eq!(report.mode, 0o100750);
        assert_eq!(report.data, b"#!/bin/sh\necho report\n");
        // 5 bytes: exercises the data padding to 4 bytes before the next header.
        assert_eq!(by_name("bin/odd").data, b"12345");
        let init = by_name("init");
        assert_eq!(init.mode, 0o100755);
        assert_eq!(init.data, fs::read(&spec.init).unwrap());
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        for compression in [Compression::None, Compression::Gzip] {
            let spec = spec_in(dir.path(), compression);
            let (first, second) = (dir.path().join("1.img"), dir.path().join("2.img"));
            write_image_file(&spec, &first).unwrap();
            // Touch the sources: host mtimes must not leak into the image.
            let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            for extra in &spec.extra_files {
                File::options()
                    .write(true)
                    .open(&extra.source)
                    .unwrap()
                    .set_modified(later)
                    .unwrap();
            }
            write_image_file(&spec, &second).unwrap();
            assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
        }
    }

    #[test]
    fn gzip_image_decompresses_to_the_plain_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut plain = Vec::new();
        write_image(
            &spec_in(dir.path(), Compression::None),
            &mut plain,
            Path::new("mem"),
        )
        .unwrap();
        let mut gzipped = Vec::new();
        write_image(
            &spec_in(dir.path(), Compression::Gzip),
            &mut gzipped,
            Path::new("mem"),
        )
        .unwrap();
        // gzip magic (RFC 1952) and a zero MTIME field: no build time in the image.
        assert_eq!(&gzipped[..2], &[0x1f, 0x8b]);
        assert_eq!(&gzipped[4..8], &[0, 0, 0, 0]);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, plain);
    }

    #[test]
    fn failure_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_in(dir.path(), Compression::None);
        spec.init = "/bin/ls".into();
        let out = dir.path().join("out.img");
        let err = write_image_file(&spec, &out).unwrap_err();
        assert!(
            matches!(err, InitrdError::DynamicExecutable { .. }),
            "{err}"
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("out.img"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn unwritable_destination_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path(), Compression::None);
        let out = dir.path().join("no-such-dir").join("out.img");
        let err = write_image_file(&spec, &out).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
