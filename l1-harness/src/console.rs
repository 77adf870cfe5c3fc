//! Where the guest console goes, and the watch for a kernel panic on it.
//!
//! The console is a trait so that `gapprobe boot` can stream it to stdout while the L1 init
//! (booting L2 guests) can collect it line by line from a channel.

use std::io::Write;
use std::sync::mpsc::Sender;

use crate::exits::VmEvent;

/// What the kernel prints when it panics (kernel/panic.c).
pub const KERNEL_PANIC_MARKER: &str = "Kernel panic - not syncing";

/// Receives the guest's console output, byte for byte as the guest wrote it.
pub trait ConsoleSink: Send {
    fn write_bytes(&mut self, bytes: &[u8]);
}

/// Any writer (stdout, a file) is a sink; it is flushed at once so the output keeps the
/// guest's timing. Write errors (a closed pipe) must not stop the guest: they are dropped.
impl<W: Write + Send> ConsoleSink for W {
    fn write_bytes(&mut self, bytes: &[u8]) {
        let _ = self.write_all(bytes).and_then(|()| self.flush());
    }
}

/// Sends each complete console line (without its line ending) to a channel.
pub struct LineSender {
    sender: Sender<String>,
    partial: Vec<u8>,
}

impl LineSender {
    pub fn new(sender: Sender<String>) -> Self {
        Self {
            sender,
            partial: Vec::new(),
        }
    }
}

impl ConsoleSink for LineSender {
    fn write_bytes(&mut self, bytes: &[u8]) {
        for_each_line(&mut self.partial, bytes, |line| {
            // A receiver that went away no longer wants lines; the guest keeps running.
            let _ = self.sender.send(line.to_string());
        });
    }
}

/// Splits `bytes` into lines, carrying an unfinished line over in `partial`.
fn for_each_line(partial: &mut Vec<u8>, bytes: &[u8], mut on_line: impl FnMut(&str)) {
    for &byte in bytes {
        if byte == b'\n' {
            let text = String::from_utf8_lossy(partial);
            on_line(text.trim_end_matches('\r'));
            partial.clear();
        } else {
            partial.push(byte);
        }
    }
}

/// The UART's output: forwards to the sink and reports a panic line to the VM's event loop.
pub(crate) struct ConsoleWriter {
    sink: Box<dyn ConsoleSink>,
    line: Vec<u8>,
    events: Sender<VmEvent>,
}

impl ConsoleWriter {
    pub(crate) fn new(sink: Box<dyn ConsoleSink>, events: Sender<VmEvent>) -> Self {
        Self {
            sink,
            line: Vec::new(),
            events,
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.sink.write_bytes(bytes);
        let events = &self.events;
        for_each_line(&mut self.line, bytes, |line| {
            if line.contains(KERNEL_PANIC_MARKER) {
                let _ = events.send(VmEvent::Panic(line.trim().to_string()));
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn line_sender_splits_lines_across_writes() {
        let (sender, receiver) = channel();
        let mut sink = LineSender::new(sender);
        sink.write_bytes(b"hello wo");
        sink.write_bytes(b"rld\r\nsecond\nthi");
        let lines: Vec<String> = receiver.try_iter().collect();
        assert_eq!(lines, vec!["hello world", "second"]);
        sink.write_bytes(b"rd\n");
        assert_eq!(receiver.try_recv().unwrap(), "third");
    }

    #[test]
    fn panic_line_becomes_an_event_and_output_passes_through() {
        let (events, received) = channel();
        let (lines, printed) = channel();
        let mut writer = ConsoleWriter::new(Box::new(LineSender::new(lines)), events);
        writer
            .write_all(b"[    1.0] ok\n[    2.0] Kernel panic - not sync")
            .unwrap();
        assert!(
            received.try_recv().is_err(),
            "reported before the line ended"
        );
        writer
            .write_all(b"ing: VFS: Unable to mount root fs\n")
            .unwrap();
        match received.try_recv().unwrap() {
            VmEvent::Panic(line) => assert_eq!(
                line,
                "[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs"
            ),
            other => panic!("unexpected event {other:?}"),
        }
        assert_eq!(printed.try_iter().count(), 2);
    }
}
