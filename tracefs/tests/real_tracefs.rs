//! Tests on the machine's real tracefs. They need root and fail (never skip) without it.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use tracefs::trace_text::{find_marker, parse_line};
use tracefs::{Completeness, EventSpec, Instance, Tracefs, TracefsError};

/// Global files whose contents must be the same before and after every test.
const GLOBAL_STATE_FILES: [&str; 5] = [
    "tracing_on",
    "current_tracer",
    "set_event",
    "trace_clock",
    "buffer_size_kb",
];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests use the real tracefs and must run as root (euid is {euid})"
    );
}

fn tracefs() -> Tracefs {
    require_root();
    Tracefs::open().expect("tracefs should be found or mounted")
}

fn instance_name(test: &str) -> String {
    format!("gapprobe-test-{}-{test}", std::process::id())
}

fn global_state(tracefs: &Tracefs) -> Vec<String> {
    GLOBAL_STATE_FILES
        .iter()
        .map(|name| fs::read_to_string(tracefs.root().join(name)).unwrap())
        .collect()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lines that are events (no header or annotation lines), sorted.
fn sorted_event_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    lines.sort_unstable();
    lines
}

fn sched_instance(tracefs: &Tracefs, test: &str) -> Instance {
    let instance = tracefs.create_instance(&instance_name(test)).unwrap();
    instance.set_clock("mono").unwrap();
    instance.set_buffer_kb(1024).unwrap();
    instance
        .enable_events(&EventSpec::parse_list("sched,timer").unwrap())
        .unwrap();
    instance.set_tracing_on(true).unwrap();
    instance
}

#[test]
fn instance_marker_stop_dump_and_remove_leave_global_state_alone() {
    let tracefs = tracefs();
    let before = global_state(&tracefs);
    let instance = sched_instance(&tracefs, "lifecycle");
    let path = instance.path().to_path_buf();
    assert!(path.starts_with(tracefs.root().join("instances")));

    let marker = instance.marker().unwrap();
    sleep(Duration::from_millis(20));
    let text = format!("gapprobe test marker {}", std::process::id());
    let mono_before = monotonic_ns();
    marker.mark(text.as_bytes()).unwrap();
    let mono_after = monotonic_ns();
    sleep(Duration::from_millis(20));
    marker.stop().unwrap();
    assert_eq!(fs::read_to_string(path.join("tracing_on")).unwrap(), "0\n");
    let after_stop = marker.mark(b"written after stop").unwrap_err();
    assert_eq!(after_stop.raw_os_error(), Some(libc::EBADF), "{after_stop}");

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("log");
    let report = instance.dump_to(&target).unwrap();
    assert_eq!(report.completeness, Completeness::Complete);
    let dump = fs::read_to_string(&target).unwrap();
    assert_eq!(report.bytes, dump.len() as u64);

    let mark = find_marker(&dump, &text).expect("the marker is in the dump");
    // The instance clock is CLOCK_MONOTONIC, printed with microsecond resolution.
    assert!(
        mark.timestamp_ns + 1_000 >= mono_before && mark.timestamp_ns <= mono_after,
        "marker at {} ns, written between {mono_before} and {mono_after}",
        mark.timestamp_ns
    );
    assert!(find_marker(&dump, "written after stop").is_none());
    assert!(
        dump.contains(": sched_switch: "),
        "no sched_switch in the dump"
    );

    let timestamps: Vec<u64> = dump
        .lines()
        .filter_map(parse_line)
        .map(|l| l.timestamp_ns)
        .collect();
    assert!(
        timestamps.windows(2).all(|w| w[0] <= w[1]),
        "dump not time-ordered"
    );

    // Same header and same events as the kernel's own merged `trace` file.
    let kernel = fs::read_to_string(path.join("trace")).unwrap();
    let header = |t: &str| {
        t.lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(header(&dump), header(&kernel));
    assert_eq!(sorted_event_lines(&dump), sorted_event_lines(&kernel));

    drop(marker);
    instance.remove().unwrap();
    assert!(!path.exists());
    assert_eq!(global_state(&tracefs), before);
}

#[test]
fn drop_removes_the_instance() {
    let tracefs = tracefs();
    let instance = sched_instance(&tracefs, "drop");
    let path = instance.path().to_path_buf();
    assert!(path.join("trace").exists());
    drop(instance);
    assert!(!path.exists());
}

#[test]
fn remove_with_an_open_marker_is_busy_and_names_the_instance() {
    let tracefs = tracefs();
    let instance = tracefs.create_instance(&instance_name("busy")).unwrap();
    let path = instance.path().to_path_buf();
    let marker = instance.marker().unwrap();
    match instance.remove() {
        Err(TracefsError::InstanceBusy { path: p }) => assert_eq!(p, path),
        other => panic!("expected InstanceBusy, got {other:?}"),
    }
    drop(marker);
    fs::remove_dir(&path).unwrap();
}

#[test]
fn unknown_events_and_clocks_are_typed_errors() {
    let tracefs = tracefs();
    let instance = tracefs.create_instance(&instance_name("unknown")).unwrap();
    let specs = EventSpec::parse_list("sched:sched_switch,sched:no_such_event").unwrap();
    match instance.enable_events(&specs) {
        Err(TracefsError::UnknownEvent { spec, path }) => {
            assert_eq!(spec, "sched:no_such_event");
            assert_eq!(path, instance.path().join("events/sched/no_such_event"));
        }
        other => panic!("expected UnknownEvent, got {other:?}"),
    }
    let enabled = fs::read_to_string(instance.path().join("events/sched/sched_switch/enable"));
    assert_eq!(
        enabled.unwrap(),
        "0\n",
        "nothing is enabled when one spec is unknown"
    );
    assert!(matches!(
        instance.set_clock("no-such-clock"),
        Err(TracefsError::UnknownClock { .. })
    ));
    instance.set_clock("mono").unwrap();
    let clock = fs::read_to_string(instance.path().join("trace_clock")).unwrap();
    assert!(clock.contains("[mono]"), "{clock}");
    instance.remove().unwrap();
}

#[test]
fn stale_instances_of_dead_processes_are_removed() {
    let tracefs = tracefs();
    let prefix = format!("gapprobe-staletest{}-", std::process::id());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let instances = tracefs.root().join("instances");
    let dead = instances.join(format!("{prefix}{dead_pid}"));
    let alive = instances.join(format!("{prefix}1"));
    fs::create_dir(&dead).unwrap();
    fs::create_dir(&alive).unwrap();
    // A stale name whose files are open is in use (another pid namespace): left alone.
    let in_use = tracefs
        .create_instance(&format!("{prefix}{}", i32::MAX))
        .unwrap();
    let in_use_marker = in_use.marker().unwrap();

    let removed = tracefs.remove_stale_instances(&prefix).unwrap();
    assert_eq!(removed, vec![dead.clone()]);
    assert!(!dead.exists());
    assert!(alive.exists(), "the instance of a live pid was removed");
    assert!(in_use.path().exists(), "an instance in use was removed");
    fs::remove_dir(&alive).unwrap();
    drop(in_use_marker);
    in_use.remove().unwrap();
}

#[test]
fn a_full_filesystem_gives_a_partial_dump_that_is_kept() {
    let tracefs = tracefs();
    let instance = tracefs.create_instance(&instance_name("partial")).unwrap();
    instance.set_buffer_kb(1024).unwrap();
    let marker = instance.marker().unwrap();
    for i in 0..4000 {
        marker
            .mark(format!("gapprobe partial dump filler line {i:05}").as_bytes())
            .unwrap();
    }
    marker.stop().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let small_fs = dir.path();
    mount_small_tmpfs(small_fs);
    let target = small_fs.join("log");
    let result = instance.dump_to(&target);
    let kept = fs::read_to_string(&target);
    // SAFETY: the path is a valid C string; MNT_DETACH cannot leave us with a busy mount.
    let path = std::ffi::CString::new(small_fs.as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };

    let report = result.unwrap();
    match &report.completeness {
        Completeness::Partial { reason } => {
            assert!(reason.contains("No space left"), "{reason}")
        }
        Completeness::Complete => panic!("a 64 KiB filesystem took {} bytes", report.bytes),
    }
    let kept = kept.unwrap();
    assert!(kept.len() as u64 == report.bytes && report.bytes > 0);
    assert!(kept.contains("filler line 00000"));
    drop(marker);
    instance.remove().unwrap();
}

fn mount_small_tmpfs(dir: &Path) {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"gapprobe-test".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=64k,mode=0700".as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
}
