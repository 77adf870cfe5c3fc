//! Dumping an instance's trace as time-ordered text, fast and safely.
//!
//! Speed: almost all of a dump's time is the kernel formatting text in the reading thread, and
//! `trace` is one stream: one reader, one CPU, whatever the read size (seq_file hands out about a
//! page per read(2) however much is asked, so big reads save nothing). Each
//! `per_cpu/cpuN/trace` is a stream of its own: one reader thread per CPU formats in parallel
//! and finds each line's timestamp, and this thread merges the lines by (timestamp, CPU), the
//! order of `trace` (lines of the same microsecond may come in another order: the kernel orders
//! them by nanoseconds, which the text does not show). The per-CPU files repeat the global
//! header; it is written once, and `##### CPU N buffer started ####` marks are added as the
//! kernel does when events were overwritten. `examples/dump_bench.rs` measures this against
//! `cat trace`.
//!
//! Safety: the text goes to a new file created with `O_EXCL` and mode 0600 next to the target,
//! which is then renamed over the target; a target that is a symlink or not a regular file is
//! refused. If reading or writing fails midway, what was written is still renamed into place and
//! the report says `Partial` with the reason.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TracefsError};
use crate::trace_text;

/// Instance directory holding one `cpuN` directory per possible CPU.
const PER_CPU_DIR: &str = "per_cpu";
/// Size of the chunks of text a reader hands to the merger (filled by many read(2) calls).
const CHUNK_BYTES: usize = 1 << 20;
/// Upper bound on text read ahead of the merger, over all CPUs together.
const MAX_READ_AHEAD_BYTES: usize = 256 << 20;
/// Bounds on chunks each reader may run ahead: more lets readers keep formatting while the
/// merger is busy with another CPU's lines.
const MIN_CHUNKS_AHEAD: usize = 2;
const MAX_CHUNKS_AHEAD: usize = 32;
const OUTPUT_BUFFER_BYTES: usize = 4 << 20;
/// Tries at finding a free temporary name before giving up.
const TEMP_NAME_ATTEMPTS: u32 = 64;

/// What a dump produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpReport {
    pub path: PathBuf,
    /// Size of the file written.
    pub bytes: u64,
    /// From the call to the rename into place.
    pub duration: Duration,
    pub completeness: Completeness,
}

impl DumpReport {
    pub fn is_complete(&self) -> bool {
        self.completeness == Completeness::Complete
    }
}

/// Whether the dump holds the whole trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// Reading or writing failed midway; the file holds what came before the failure.
    Partial {
        reason: String,
    },
}

pub(crate) fn dump_instance(instance_dir: &Path, target: &Path) -> Result<DumpReport> {
    dump_with_chunk_bytes(instance_dir, target, CHUNK_BYTES)
}

fn dump_with_chunk_bytes(
    instance_dir: &Path,
    target: &Path,
    chunk_bytes: usize,
) -> Result<DumpReport> {
    let started = Instant::now();
    check_target(target)?;
    let cpu_files = per_cpu_trace_files(instance_dir)?;
    let (temp_path, file) = create_temp_beside(target)?;

    let mut out = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, file);
    let mut failure = merge_cpu_traces(&cpu_files, chunk_bytes, &mut out).err();
    if let Err(e) = out.into_inner() {
        failure.get_or_insert(format!("writing {}: {}", temp_path.display(), e.error()));
    }
    let bytes = fs::metadata(&temp_path).map(|md| md.len()).unwrap_or(0);
    if let Err(e) = fs::rename(&temp_path, target) {
        let _ = fs::remove_file(&temp_path);
        return Err(TracefsError::io(
            target,
            format!("renaming {} over it", temp_path.display()),
            e,
        ));
    }
    Ok(DumpReport {
        path: target.to_path_buf(),
        bytes,
        duration: started.elapsed(),
        completeness: match failure {
            None => Completeness::Complete,
            Some(reason) => Completeness::Partial { reason },
        },
    })
}

/// Refuses targets that are symlinks or not regular files; a missing target is fine.
fn check_target(target: &Path) -> Result<()> {
    let refuse = |reason| TracefsError::UnsafeDumpTarget {
        path: target.to_path_buf(),
        reason,
    };
    if target.file_name().is_none() {
        return Err(refuse("the path has no file name"));
    }
    match fs::symlink_metadata(target) {
        Ok(md) if md.file_type().is_symlink() => Err(refuse("it is a symbolic link")),
        Ok(md) if !md.is_file() => Err(refuse("it exists and is not a regular file")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TracefsError::io(target, "checking the dump target", e)),
    }
}

/// `per_cpu/cpuN/trace` of the instance, by CPU number.
fn per_cpu_trace_files(instance_dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let dir = instance_dir.join(PER_CPU_DIR);
    let list_error = |e| TracefsError::io(&dir, "listing per-CPU buffers", e);
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let cpu = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(cpu) = cpu {
            files.push((cpu, entry.path().join("trace")));
        }
    }
    if files.is_empty() {
        return Err(list_error(io::Error::new(
            io::ErrorKind::NotFound,
            "no cpuN directories",
        )));
    }
    files.sort();
    Ok(files)
}

/// A new file beside `target`, created with O_EXCL (never through a symlink) and mode 0600.
fn create_temp_beside(target: &Path) -> Result<(PathBuf, File)> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let dir = target
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default();
    let mut last_error = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let path = dir.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = e,
            Err(e) => return Err(TracefsError::io(path, "creating the dump file", e)),
        }
    }
    Err(TracefsError::io(
        dir,
        "finding a free temporary file name",
        last_error,
    ))
}

/// Whole lines of one CPU's trace, with where each line ends and its merge key.
struct Lines {
    text: Vec<u8>,
    marks: Vec<LineMark>,
}

#[derive(Clone, Copy)]
struct LineMark {
    /// Offset just past the line's newline.
    end: usize,
    /// The line's timestamp; lines without one (continuations) carry the previous line's.
    timestamp_ns: u64,
}

/// What a reader thread hands to the merger.
enum Piece {
    /// The leading `#` lines of the file (sent once, first).
    Header(Vec<u8>),
    Lines(Lines),
    Failed(io::Error),
}

/// Reads one per-CPU trace file in chunks of whole lines, finding each line's timestamp (the
/// parsing runs here, in parallel, not in the merger), until EOF or until the merger hangs up.
/// Buffers come back from the merger through `recycled`: reusing them avoids page faults.
fn read_cpu_trace(
    path: &Path,
    chunk_bytes: usize,
    tx: &SyncSender<Piece>,
    recycled: &Receiver<Lines>,
) {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            let _ = tx.send(Piece::Failed(e));
            return;
        }
    };
    let mut header = Some(Vec::new());
    let mut carry = Vec::new();
    let mut last_timestamp = 0;
    loop {
        let mut lines = recycled.try_recv().unwrap_or_else(|_| Lines {
            text: Vec::with_capacity(chunk_bytes),
            marks: Vec::new(),
        });
        let text = &mut lines.text;
        text.clear();
        text.extend_from_slice(&carry);
        let mut filled = text.len();
        text.resize(filled + chunk_bytes, 0);
        let mut eof = false;
        while filled < text.len() {
            match file.read(&mut text[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Piece::Failed(e));
                    return;
                }
            }
        }
        text.truncate(filled);
        if eof && text.last().is_some_and(|&b| b != b'\n') {
            text.push(b'\n');
        }
        let whole = memchr::memrchr(b'\n', text).map_or(0, |i| i + 1);
        carry.clear();
        carry.extend_from_slice(&text[whole..]);
        text.truncate(whole);

        if let Some(head) = header.as_mut() {
            let body_start = header_len(text);
            head.extend_from_slice(&text[..body_start]);
            text.drain(..body_start);
            if text.is_empty() && !eof {
                continue;
            }
            if tx
                .send(Piece::Header(header.take().unwrap_or_default()))
                .is_err()
            {
                return;
            }
        }
        if !text.is_empty() {
            mark_lines(&mut lines, &mut last_timestamp);
            if tx.send(Piece::Lines(lines)).is_err() {
                return;
            }
        }
        if eof {
            return;
        }
    }
}

fn mark_lines(lines: &mut Lines, last_timestamp: &mut u64) {
    lines.marks.clear();
    let mut start = 0;
    for newline in memchr::memchr_iter(b'\n', &lines.text) {
        if let Some(ts) = trace_text::timestamp_ns(&lines.text[start..newline]) {
            *last_timestamp = ts;
        }
        start = newline + 1;
        lines.marks.push(LineMark {
            end: start,
            timestamp_ns: *last_timestamp,
        });
    }
}

/// Length of the leading run of lines that start with `#`.
fn header_len(text: &[u8]) -> usize {
    let mut pos = 0;
    while text.get(pos) == Some(&b'#') {
        match memchr::memchr(b'\n', &text[pos..]) {
            Some(nl) => pos += nl + 1,
            None => return text.len(),
        }
    }
    pos
}

/// True when the header's `entries-in-buffer/entries-written: A/B` shows overwritten events.
/// The kernel then marks where each later CPU's data begins (trace option `annotate`, on by
/// default); the merge does the same, since per-CPU files do not.
fn header_shows_overrun(header: &[u8]) -> bool {
    const KEY: &str = "entries-in-buffer/entries-written:";
    let text = String::from_utf8_lossy(header);
    let Some(start) = text.find(KEY) else {
        return false;
    };
    let counts = text[start + KEY.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("");
    let mut numbers = counts.split('/').map(|n| n.parse::<u64>().ok());
    matches!((numbers.next(), numbers.next()), (Some(Some(kept)), Some(Some(written))) if written > kept)
}

/// One CPU's stream of lines as seen by the merger.
struct CpuStream {
    cpu: u32,
    path: PathBuf,
    rx: Receiver<Piece>,
    recycle: Sender<Lines>,
    lines: Lines,
    /// Index in `lines.marks` of the next line to write.
    next: usize,
    started: bool,
}

impl CpuStream {
    /// Moves to the next chunk: `Ok(false)` at the end of the stream.
    fn next_chunk(&mut self) -> std::result::Result<bool, String> {
        loop {
            match self.rx.recv() {
                Ok(Piece::Lines(lines)) => {
                    let used = std::mem::replace(&mut self.lines, lines);
                    // The reader may be gone already; the buffer is then simply freed.
                    let _ = self.recycle.send(used);
                    self.next = 0;
                    return Ok(true);
                }
                Ok(Piece::Header(_)) => {}
                Ok(Piece::Failed(e)) => {
                    return Err(format!("reading {}: {e}", self.path.display()))
                }
                Err(mpsc::RecvError) => return Ok(false),
            }
        }
    }

    fn key(&self) -> u64 {
        self.lines.marks[self.next].timestamp_ns
    }

    fn line_start(&self, index: usize) -> usize {
        index
            .checked_sub(1)
            .map_or(0, |prev| self.lines.marks[prev].end)
    }
}

/// Runs one reader thread per CPU and merges their lines by (timestamp, CPU) into `out`.
/// Returns the first failure, after writing everything that could be read.
fn merge_cpu_traces(
    cpu_files: &[(u32, PathBuf)],
    chunk_bytes: usize,
    out: &mut impl Write,
) -> std::result::Result<(), String> {
    // Many CPUs get smaller chunks, so that read-ahead stays within MAX_READ_AHEAD_BYTES.
    let cpus = cpu_files.len().max(1);
    let chunk_bytes = chunk_bytes
        .min(MAX_READ_AHEAD_BYTES / (cpus * MIN_CHUNKS_AHEAD))
        .max(1);
    let chunks_ahead =
        (MAX_READ_AHEAD_BYTES / (cpus * chunk_bytes)).clamp(MIN_CHUNKS_AHEAD, MAX_CHUNKS_AHEAD);
    let write_error = |e: io::Error| format!("writing the dump: {e}");
    thread::scope(|scope| {
        let mut failure: Option<String> = None;
        let mut streams = Vec::with_capacity(cpu_files.len());
        for (cpu, path) in cpu_files {
            let (tx, rx) = mpsc::sync_channel(chunks_ahead);
            let (recycle, recycled) = mpsc::channel();
            let spawned = thread::Builder::new()
                .name(format!("dump-cpu{cpu}"))
                .spawn_scoped(scope, move || {
                    read_cpu_trace(path, chunk_bytes, &tx, &recycled)
                });
            if let Err(e) = spawned {
                failure.get_or_insert(format!("starting a reader for {}: {e}", path.display()));
                continue;
            }
            streams.push(CpuStream {
                cpu: *cpu,
                path: path.clone(),
                rx,
                recycle,
                lines: Lines {
                    text: Vec::new(),
                    marks: Vec::new(),
                },
                next: 0,
                started: false,
            });
        }

        // Every per-CPU file repeats the same header (its counts cover all CPUs): keep one.
        let mut header = None;
        for stream in &streams {
            match stream.rx.recv() {
                Ok(Piece::Header(text)) => {
                    header.get_or_insert(text);
                }
                Ok(Piece::Failed(e)) => {
                    failure.get_or_insert(format!("reading {}: {e}", stream.path.display()));
                }
                Ok(Piece::Lines(_)) | Err(mpsc::RecvError) => {
                    failure.get_or_insert(format!("{}: no header", stream.path.display()));
                }
            }
        }
        let header = header.unwrap_or_default();
        out.write_all(&header).map_err(write_error)?;
        let annotate = header_shows_overrun(&header);

        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (index, stream) in streams.iter_mut().enumerate() {
            match stream.next_chunk() {
                Ok(true) => heap.push(Reverse((stream.key(), index))),
                Ok(false) => {}
                Err(reason) => {
                    failure.get_or_insert(reason);
                }
            }
        }

        let mut emitted_any = false;
        while let Some(Reverse((_, index))) = heap.pop() {
            let bound = heap.peek().map(|Reverse(key)| *key);
            let below_bound = |key: u64| bound.is_none_or(|b| (key, index) <= b);
            let stream = &mut streams[index];
            if annotate && !stream.started && emitted_any {
                writeln!(out, "##### CPU {} buffer started ####", stream.cpu)
                    .map_err(write_error)?;
            }
            stream.started = true;
            emitted_any = true;
            loop {
                // Write the longest run of this CPU's lines that sorts before every other CPU.
                let marks = &stream.lines.marks;
                let mut end = stream.next + 1;
                while end < marks.len() && below_bound(marks[end].timestamp_ns) {
                    end += 1;
                }
                let run = stream.line_start(stream.next)..marks[end - 1].end;
                out.write_all(&stream.lines.text[run])
                    .map_err(write_error)?;
                stream.next = end;
                if end < marks.len() {
                    heap.push(Reverse((stream.key(), index)));
                    break;
                }
                match stream.next_chunk() {
                    Ok(true) if below_bound(stream.key()) => {}
                    Ok(true) => {
                        heap.push(Reverse((stream.key(), index)));
                        break;
                    }
                    Ok(false) => break,
                    Err(reason) => {
                        failure.get_or_insert(reason);
                        break;
                    }
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const HEADER: &str = "# tracer: nop\n#\n# entries-in-buffer/entries-written: 5/5   #P:2\n#\n";

    fn fake_instance(cpu_bodies: &[&str], header: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (cpu, body) in cpu_bodies.iter().enumerate() {
            let cpu_dir = dir.path().join(format!("{PER_CPU_DIR}/cpu{cpu}"));
            fs::create_dir_all(&cpu_dir).unwrap();
            fs::write(cpu_dir.join("trace"), format!("{header}{body}")).unwrap();
        }
        dir
    }

    const CPU0: &str = "\
 a-1 [000] ..... 1.000000: e: one\n\
 a-1 [000] ..... 3.000000: e: three\n\
 => stack line of three\n\
 a-1 [000] ..... 3.000000: e: three-b\n\
 a-1 [000] ..... 6.000000: e: six";
    const CPU1: &str = "\
 b-2 [001] ..... 2.000000: e: two\n\
 b-2 [001] ..... 3.000000: e: three-cpu1\n\
 b-2 [001] ..... 4.000000: e: four\n\
 b-2 [001] ..... 5.000000: e: five\n";
    const MERGED: &str = "\
 a-1 [000] ..... 1.000000: e: one\n\
 b-2 [001] ..... 2.000000: e: two\n\
 a-1 [000] ..... 3.000000: e: three\n\
 => stack line of three\n\
 a-1 [000] ..... 3.000000: e: three-b\n\
 b-2 [001] ..... 3.000000: e: three-cpu1\n\
 b-2 [001] ..... 4.000000: e: four\n\
 b-2 [001] ..... 5.000000: e: five\n\
 a-1 [000] ..... 6.000000: e: six\n";

    #[test]
    fn merges_by_timestamp_then_cpu_for_any_chunk_size() {
        let instance = fake_instance(&[CPU0, CPU1], HEADER);
        let out = tempfile::tempdir().unwrap();
        for chunk_bytes in [1, 7, 40, 64, 1000, CHUNK_BYTES] {
            let target = out.path().join("log");
            let report = dump_with_chunk_bytes(instance.path(), &target, chunk_bytes).unwrap();
            let text = fs::read_to_string(&target).unwrap();
            assert_eq!(
                text,
                format!("{HEADER}{MERGED}"),
                "chunk size {chunk_bytes}"
            );
            assert!(report.is_complete());
            assert_eq!(report.bytes, text.len() as u64);
            assert_eq!(report.path, target);
        }
    }

    #[test]
    fn annotates_cpu_starts_when_events_were_overwritten() {
        let header = HEADER.replace("5/5", "5/9");
        let instance = fake_instance(&[CPU0, CPU1], &header);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("log");
        dump_with_chunk_bytes(instance.path(), &target, 16).unwrap();
        let text = fs::read_to_string(&target).unwrap();
        let expected = MERGED.replacen(
            "b-2 [001] ..... 2.000000",
            "##### CPU 1 buffer started ####\nb-2 [001] ..... 2.000000",
            1,
        );
        assert_eq!(text, format!("{header}{expected}"));
    }

    #[test]
    fn header_overrun_detection() {
        assert!(!header_shows_overrun(HEADER.as_bytes()));
        assert!(header_shows_overrun(
            b"# entries-in-buffer/entries-written: 2566965/3007715   #P:2\n"
        ));
        assert!(!header_shows_overrun(b"# tracer: nop\n"));
        assert_eq!(header_len(b"#a\n#b\n x\n#c\n"), 6);
        assert_eq!(header_len(b"#only"), 5);
    }

    #[test]
    fn empty_buffers_give_the_header_only_and_a_0600_file() {
        let instance = fake_instance(&["", ""], HEADER);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("log");
        fs::write(&target, b"old content").unwrap();
        let report = dump_with_chunk_bytes(instance.path(), &target, CHUNK_BYTES).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), HEADER);
        assert!(report.is_complete());
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the target is left: the temporary file was renamed onto it.
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_symlinks_and_non_regular_targets() {
        let instance = fake_instance(&[CPU0], HEADER);
        let out = tempfile::tempdir().unwrap();
        let victim = out.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = out.path().join("log");
        symlink(&victim, &link).unwrap();
        assert!(matches!(
            dump_instance(instance.path(), &link),
            Err(TracefsError::UnsafeDumpTarget { path, .. }) if path == link
        ));
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let dir_target = out.path().join("adir");
        fs::create_dir(&dir_target).unwrap();
        assert!(matches!(
            dump_instance(instance.path(), &dir_target),
            Err(TracefsError::UnsafeDumpTarget { .. })
        ));
        assert!(matches!(
            dump_instance(instance.path(), Path::new("/")),
            Err(TracefsError::UnsafeDumpTarget { .. })
        ));
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_missing_cpu_file_gives_a_partial_dump_with_the_reason() {
        let instance = fake_instance(&[CPU0, CPU1], HEADER);
        fs::remove_file(instance.path().join("per_cpu/cpu1/trace")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("log");
        let report = dump_instance(instance.path(), &target).unwrap();
        match &report.completeness {
            Completeness::Partial { reason } => assert!(reason.contains("cpu1/trace"), "{reason}"),
            Completeness::Complete => panic!("reported complete"),
        }
        let text = fs::read_to_string(&target).unwrap();
        assert_eq!(text, format!("{HEADER}{CPU0}\n"));
    }

    #[test]
    fn missing_per_cpu_directory_is_an_error_naming_it() {
        let instance = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = dump_instance(instance.path(), &out.path().join("log")).unwrap_err();
        assert!(
            matches!(&err, TracefsError::Io { path, .. } if path.ends_with(PER_CPU_DIR)),
            "{err}"
        );
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    }
}
