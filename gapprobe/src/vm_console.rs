//! The host's reading of L1's console: the protocol lines the guest init prints (see
//! `guest/mod.rs` and `guest/dump_region.rs`), kernel log lines, and everything else, which
//! is the role's report (in nested mode also the `vm<i>: ` lines L1 relays from its L2s).

use crate::guest::dump_region::DUMP_LINE_PREFIX;
use crate::guest::EXIT_LINE_PREFIX;

/// One console line, as the host treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleLine<'a> {
    /// `gapprobe-exit: N`: the role's exit code, the last line before power-off.
    Exit(u8),
    /// `gapprobe-dump: trace=N json=M`: what the guest left in the dump region.
    Dump(DumpContents),
    /// A kernel log line (`[    1.234567] ...`); with `quiet` only errors and warnings.
    Kernel(&'a str),
    /// Anything else: the role's output and notes from the guest init.
    Report(&'a str),
}

/// The dump region's layout as the guest announced it: `trace` bytes of trace text at
/// offset 0, then `json` bytes of the role's JSON result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpContents {
    pub trace: u64,
    pub json: u64,
}

/// Classifies a line. A protocol prefix with a malformed value is reported as it is rather
/// than guessed at, so the user sees it.
pub fn classify(line: &str) -> ConsoleLine<'_> {
    if let Some(code) = line.strip_prefix(EXIT_LINE_PREFIX) {
        if let Ok(code) = code.trim().parse() {
            return ConsoleLine::Exit(code);
        }
    }
    if let Some(rest) = line.strip_prefix(DUMP_LINE_PREFIX) {
        if let Some(contents) = parse_dump_contents(rest) {
            return ConsoleLine::Dump(contents);
        }
    }
    if is_kernel_log_line(line) {
        return ConsoleLine::Kernel(line);
    }
    ConsoleLine::Report(line)
}

/// `trace=N json=M`.
fn parse_dump_contents(text: &str) -> Option<DumpContents> {
    let mut words = text.split_whitespace();
    let trace = words.next()?.strip_prefix("trace=")?.parse().ok()?;
    let json = words.next()?.strip_prefix("json=")?.parse().ok()?;
    words
        .next()
        .is_none()
        .then_some(DumpContents { trace, json })
}

/// printk's timestamp prefix: `[` spaces, seconds `.` microseconds `]`.
fn is_kernel_log_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    let Some((seconds, fraction)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    !seconds.is_empty()
        && !fraction.is_empty()
        && seconds.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        assert_eq!(classify("gapprobe-exit: 1"), ConsoleLine::Exit(1));
        assert_eq!(classify("gapprobe-exit: 0"), ConsoleLine::Exit(0));
        assert_eq!(
            classify("gapprobe-dump: trace=12345 json=678"),
            ConsoleLine::Dump(DumpContents {
                trace: 12345,
                json: 678
            })
        );
    }

    #[test]
    fn malformed_protocol_lines_are_shown_not_guessed() {
        for line in [
            "gapprobe-exit: one",
            "gapprobe-exit: 300",
            "gapprobe-dump: trace=1",
            "gapprobe-dump: json=1 trace=2",
            "gapprobe-dump: trace=1 json=2 extra",
        ] {
            assert_eq!(classify(line), ConsoleLine::Report(line), "{line}");
        }
    }

    #[test]
    fn relayed_l2_protocol_lines_are_report_lines() {
        // Only column 0 counts: an L2's exit line relayed by L1 is not L1's.
        let line = "vm3: gapprobe-exit: 0";
        assert_eq!(classify(line), ConsoleLine::Report(line));
    }

    #[test]
    fn kernel_lines_by_their_timestamp() {
        let line = "[    0.123456] x86/fpu: XSAVE consistency problem";
        assert_eq!(classify(line), ConsoleLine::Kernel(line));
        assert_eq!(
            classify("[12345.000001] Kernel panic - not syncing: x"),
            ConsoleLine::Kernel("[12345.000001] Kernel panic - not syncing: x")
        );
        for report in [
            "Max latency: 47 ms (119754120 ticks, 16 online)",
            "[not a stamp] text",
            "[ .5] text",
            "[1.] text",
            "[",
        ] {
            assert_eq!(classify(report), ConsoleLine::Report(report), "{report}");
        }
    }
}
