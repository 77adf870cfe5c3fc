//! Parsing the text of a trace (the default `trace` output format), small and tolerant:
//!
//! ```text
//!           <comm>-<pid>  [(<tgid>)] [<cpu>] <flags> <secs>.<usecs>: <event>: <body>
//!      rcu_preempt-15      [001] d..2.   339.477027: sched_switch: prev_comm=rcu_preempt ...
//! ```
//!
//! The flags and tgid columns are optional (trace options `irq-info`, `record-tgid`). Lines that
//! do not match (headers, `##### CPU 1 buffer started ####`, continuation lines) are skipped.

/// The event name the kernel prints for `trace_marker` writes.
pub const TRACING_MARK_WRITE: &str = "tracing_mark_write";
/// The scheduler's context-switch event.
pub const SCHED_SWITCH: &str = "sched_switch";

const NS_PER_SEC: u64 = 1_000_000_000;

/// One parsed event line; `body` is the text after `event: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLine<'a> {
    /// The task's comm as the trace shows it (`<idle>`, `<...>` when unknown).
    pub task: &'a str,
    pub pid: u32,
    pub cpu: u32,
    /// Timestamp in ns of the trace clock (microsecond resolution in the text).
    pub timestamp_ns: u64,
    /// Empty when the line has no `name:` after the timestamp (e.g. function tracer lines).
    pub event: &'a str,
    pub body: &'a str,
}

impl TraceLine<'_> {
    /// The timestamp in seconds, as printed.
    pub fn timestamp_secs(&self) -> f64 {
        self.timestamp_ns as f64 / NS_PER_SEC as f64
    }
}

/// Byte offsets of the fixed part of a line, up to and including the timestamp.
struct Prefix {
    /// Where the task field ends (its leading padding is trimmed by `parse_line`).
    task_end: usize,
    pid: u32,
    cpu: u32,
    timestamp_ns: u64,
    /// Offset just after the timestamp's colon.
    rest: usize,
}

/// Parses one line of trace text (with or without its newline).
pub fn parse_line(line: &str) -> Option<TraceLine<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    let prefix = parse_prefix(line.as_bytes())?;
    let rest = line[prefix.rest..].trim_start_matches(' ');
    let (event, body) = match rest.split_once(' ') {
        Some((name, body)) if name.ends_with(':') => (&name[..name.len() - 1], body),
        _ if rest.ends_with(':') => (&rest[..rest.len() - 1], ""),
        _ => ("", rest),
    };
    Some(TraceLine {
        task: line[..prefix.task_end].trim_start_matches(' '),
        pid: prefix.pid,
        cpu: prefix.cpu,
        timestamp_ns: prefix.timestamp_ns,
        event,
        body,
    })
}

/// The timestamp of an event line, `None` for lines that are not events.
pub(crate) fn timestamp_ns(line: &[u8]) -> Option<u64> {
    parse_prefix(line).map(|prefix| prefix.timestamp_ns)
}

/// The first `trace_marker` line whose text contains `needle`.
pub fn find_marker<'a>(text: &'a str, needle: &str) -> Option<TraceLine<'a>> {
    text.lines()
        .filter_map(parse_line)
        .find(|line| line.event == TRACING_MARK_WRITE && line.body.contains(needle))
}

/// A stretch during which a thread was switched out, from `sched_switch` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffCpuInterval<'a> {
    pub switched_out_ns: u64,
    pub out_cpu: u32,
    /// `prev_state` at the switch-out: `R`/`R+` means preempted while runnable.
    pub prev_state: &'a str,
    /// `None` if the trace ends before the thread runs again.
    pub switched_in_ns: Option<u64>,
    pub in_cpu: Option<u32>,
}

impl OffCpuInterval<'_> {
    /// Length of the interval, if it ended inside the trace.
    pub fn duration_ns(&self) -> Option<u64> {
        self.switched_in_ns
            .map(|end| end.saturating_sub(self.switched_out_ns))
    }
}

/// Every off-CPU interval of thread `tid` in a time-ordered trace text (a switch-in without a
/// preceding switch-out in the text is ignored: its start is unknown).
pub fn off_cpu_intervals(text: &str, tid: u32) -> Vec<OffCpuInterval<'_>> {
    let mut intervals = Vec::new();
    let mut open: Option<OffCpuInterval<'_>> = None;
    for line in text.lines().filter_map(parse_line) {
        if line.event != SCHED_SWITCH {
            continue;
        }
        let Some((prev, next)) = line.body.split_once(" ==> ") else {
            continue;
        };
        if field(next, "next_pid=").and_then(|v| v.parse().ok()) == Some(tid) {
            if let Some(mut interval) = open.take() {
                interval.switched_in_ns = Some(line.timestamp_ns);
                interval.in_cpu = Some(line.cpu);
                intervals.push(interval);
            }
        }
        if field(prev, "prev_pid=").and_then(|v| v.parse().ok()) == Some(tid) {
            open = Some(OffCpuInterval {
                switched_out_ns: line.timestamp_ns,
                out_cpu: line.cpu,
                prev_state: field(prev, "prev_state=").unwrap_or(""),
                switched_in_ns: None,
                in_cpu: None,
            });
        }
    }
    intervals.extend(open);
    intervals
}

/// The value of `key` (`prev_pid=`) in a `key=value key=value` body. The last occurrence wins:
/// comms come first and may themselves contain such text.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.rfind(key)? + key.len();
    let value = &text[start..];
    Some(value.split(' ').next().unwrap_or(value))
}

fn parse_prefix(line: &[u8]) -> Option<Prefix> {
    memchr::memchr_iter(b'[', line).find_map(|open| prefix_around_cpu_field(line, open))
}

/// Tries to read the line's fixed columns around a `[` that may open the CPU column.
fn prefix_around_cpu_field(line: &[u8], open: usize) -> Option<Prefix> {
    let digits_end = open + 1 + count_digits(&line[open + 1..]);
    if line.get(digits_end) != Some(&b']') {
        return None;
    }
    let cpu = u32::try_from(parse_decimal(&line[open + 1..digits_end])?).ok()?;

    let mut end = trim_spaces_before(line, open);
    if end > 0 && line[end - 1] == b')' {
        let tgid_open = memchr::memrchr(b'(', &line[..end])?;
        end = trim_spaces_before(line, tgid_open);
    }
    let pid_start = end
        - line[..end]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
    if pid_start == 0 || line[pid_start - 1] != b'-' {
        return None;
    }
    let pid = u32::try_from(parse_decimal(&line[pid_start..end])?).ok()?;

    // After the CPU: an optional flags column, then `<secs>.<usecs>:`.
    let mut pos = digits_end + 1;
    for _ in 0..2 {
        let start = pos + line[pos..].iter().take_while(|&&b| b == b' ').count();
        let token_end = memchr::memchr(b' ', &line[start..]).map_or(line.len(), |n| start + n);
        if let Some(timestamp_ns) = parse_timestamp(&line[start..token_end]) {
            return Some(Prefix {
                task_end: pid_start - 1,
                pid,
                cpu,
                timestamp_ns,
                rest: token_end,
            });
        }
        pos = token_end;
    }
    None
}

/// `339.470171:` -> ns. Clocks that count in other units (`counter`, `x86-tsc`) print an
/// integer, taken as is: only the order matters for them.
fn parse_timestamp(token: &[u8]) -> Option<u64> {
    let number = token.strip_suffix(b":")?;
    let Some(dot) = memchr::memchr(b'.', number) else {
        return parse_decimal(number);
    };
    let (secs, frac) = (&number[..dot], &number[dot + 1..]);
    if frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let frac_ns = parse_decimal(frac)? * 10u64.pow(9 - frac.len() as u32);
    parse_decimal(secs)?
        .checked_mul(NS_PER_SEC)?
        .checked_add(frac_ns)
}

/// A non-empty run of ASCII digits as a number (hand-rolled: it runs for every line of a dump).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

fn trim_spaces_before(line: &[u8], end: usize) -> usize {
    line[..end]
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = "     rcu_preempt-15      [001] d..2.   339.477027: sched_switch: \
        prev_comm=rcu_preempt prev_pid=15 prev_prio=120 prev_state=I ==> next_comm=swapper/1 \
        next_pid=0 next_prio=120\n";

    #[test]
    fn parses_a_sched_switch_line() {
        let line = parse_line(SWITCH).unwrap();
        assert_eq!(line.task, "rcu_preempt");
        assert_eq!(line.pid, 15);
        assert_eq!(line.cpu, 1);
        assert_eq!(line.timestamp_ns, 339_477_027_000);
        assert!((line.timestamp_secs() - 339.477027).abs() < 1e-9);
        assert_eq!(line.event, "sched_switch");
        assert!(line.body.starts_with("prev_comm=rcu_preempt "));
        assert!(line.body.ends_with("next_prio=120"));
    }

    #[test]
    fn parses_odd_comms_tgid_and_missing_flags() {
        let line =
            parse_line("  my-app [1]-42    [000] .....  10.000001: tracing_mark_write: a: b")
                .unwrap();
        assert_eq!((line.task, line.pid, line.cpu), ("my-app [1]", 42, 0));
        assert_eq!(line.event, TRACING_MARK_WRITE);
        assert_eq!(line.body, "a: b");

        let tgid =
            parse_line("  bash-7731    (   7731) [003] ...1.  5.5: sched_waking: x=1").unwrap();
        assert_eq!(
            (tgid.pid, tgid.cpu, tgid.timestamp_ns),
            (7731, 3, 5_500_000_000)
        );

        let no_flags = parse_line("<idle>-0 [002] 7.000000009: irq_handler_entry: irq=4").unwrap();
        assert_eq!(
            (no_flags.task, no_flags.timestamp_ns),
            ("<idle>", 7_000_000_009)
        );
        assert_eq!(no_flags.event, "irq_handler_entry");

        let counter = parse_line("a-1 [000] ..... 123456: e: f").unwrap();
        assert_eq!(counter.timestamp_ns, 123_456);
    }

    #[test]
    fn rejects_lines_that_are_not_events() {
        for text in [
            "# tracer: nop",
            "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
            "##### CPU 1 buffer started ####",
            "CPU:1 [LOST 12 EVENTS]",
            " => __schedule",
            "",
            "a-1 [000] ..... notatime: e: f",
            "a-x [000] ..... 1.0: e: f",
        ] {
            assert_eq!(parse_line(text), None, "{text:?}");
        }
    }

    #[test]
    fn finds_the_first_matching_marker() {
        let text = "\
 t-5 [000] ..... 1.000000: tracing_mark_write: other\n\
 t-5 [000] ..... 2.000000: sched_waking: comm=gap pid=9\n\
 t-5 [001] ..... 3.000000: tracing_mark_write: gapprobe gap 130ms tid=9\n\
 t-5 [001] ..... 4.000000: tracing_mark_write: gapprobe gap 140ms tid=9\n";
        let marker = find_marker(text, "gapprobe gap").unwrap();
        assert_eq!((marker.cpu, marker.timestamp_ns), (1, 3_000_000_000));
        assert_eq!(find_marker(text, "comm=gap"), None);
    }

    #[test]
    fn computes_off_cpu_intervals_across_cpus() {
        let text = "\
 w-9 [000] d..2. 1.000000: sched_switch: prev_comm=w prev_pid=9 prev_prio=120 prev_state=R+ ==> next_comm=hog next_pid=99 next_prio=0\n\
 x-7 [001] d..2. 1.010000: sched_switch: prev_comm=x prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=w next_pid=90 next_prio=120\n\
 h-99 [000] d..2. 1.050000: sched_switch: prev_comm=hog prev_pid=99 prev_prio=0 prev_state=S ==> next_comm=w next_pid=9 next_prio=120\n\
 w-9 [000] d..2. 2.000000: sched_switch: prev_comm=w prev_pid=9 prev_prio=120 prev_state=S ==> next_comm=i next_pid=0 next_prio=120\n\
 i-0 [001] d..2. 2.500000: sched_switch: prev_comm=i prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=w next_pid=9 next_prio=120\n\
 w-9 [001] d..2. 3.000000: sched_switch: prev_comm=w prev_pid=9 prev_prio=120 prev_state=R ==> next_comm=i next_pid=0 next_prio=120\n";
        let intervals = off_cpu_intervals(text, 9);
        assert_eq!(intervals.len(), 3);
        assert_eq!(intervals[0].duration_ns(), Some(50_000_000));
        assert_eq!(
            (intervals[0].prev_state, intervals[0].in_cpu),
            ("R+", Some(0))
        );
        assert_eq!(intervals[1].duration_ns(), Some(500_000_000));
        assert_eq!((intervals[1].out_cpu, intervals[1].in_cpu), (0, Some(1)));
        assert_eq!(intervals[2].switched_in_ns, None);
        assert_eq!(intervals[2].duration_ns(), None);
        assert!(off_cpu_intervals(text, 90).is_empty());
    }
}
