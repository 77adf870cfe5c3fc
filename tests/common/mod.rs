//! Helpers shared by the end-to-end tests: running gapprobe, injecting a clean stall, and
//! checking that the host's tracing state is left as it was.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub fn gapprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gapprobe"))
}

/// Tests that use the CPUs or tracefs run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (tracefs, SCHED_FIFO 99): run the suite as root, as .ci/run does"
    );
}

fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    l1_harness::host_topology::parse_cpulist(&text).unwrap()
}

/// The CPU the single-thread tests probe: the last one, away from CPU 0's housekeeping.
pub fn probe_cpu() -> usize {
    *online_cpus().last().unwrap()
}

/// Another CPU for the stall helper to flee to.
pub fn other_cpu(cpu: usize) -> usize {
    online_cpus()
        .into_iter()
        .find(|&other| other != cpu)
        .expect("the stall tests need at least two CPUs")
}

/// A clean stall, as DESIGN.md describes it: a thread pinned to `cpu` at SCHED_FIFO 99 that
/// sleeps `after`, busy-waits exactly `stall`, then migrates to `escape` before doing anything
/// else. Returns how long it really spun.
pub fn inject_stall(
    cpu: usize,
    escape: usize,
    stall: Duration,
    after: Duration,
) -> JoinHandle<Duration> {
    std::thread::spawn(move || {
        pin(cpu);
        let param = libc::sched_param { sched_priority: 99 };
        // SAFETY: plain syscall on the calling thread with a valid sched_param.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        assert_eq!(rc, 0, "SCHED_FIFO 99: {}", std::io::Error::last_os_error());
        std::thread::sleep(after.max(Duration::from_millis(1)));
        let start = Instant::now();
        while start.elapsed() < stall {
            std::hint::spin_loop();
        }
        let spun = start.elapsed();
        pin(escape);
        let normal = libc::sched_param { sched_priority: 0 };
        // SAFETY: as above.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) };
        spun
    })
}

fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// A running gapprobe whose stdout is collected line by line.
pub struct Watched {
    child: Child,
    output: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Watched {
    pub fn spawn(args: &[String]) -> Self {
        Self::spawn_command(gapprobe().args(args))
    }

    pub fn spawn_command(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gapprobe");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let collected = output.clone();
        let reader = std::thread::spawn(move || {
            let err_collected = collected.clone();
            let errors = std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    err_collected
                        .lock()
                        .unwrap()
                        .push_str(&format!("[stderr] {line}\n"));
                }
            });
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push_str(&format!("{line}\n"));
            }
            let _ = errors.join();
        });
        Self {
            child,
            output,
            reader: Some(reader),
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` has been printed; fails the test otherwise.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gapprobe exited ({status}) before printing {needle:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        panic!("no {needle:?} within {timeout:?}\n{}", self.output());
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit code; kills the process and returns None after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        code
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracefs_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"tracefs"))
        .map(|fields| PathBuf::from(fields[1]))
}

/// The host's global tracing state and the instances that exist: a run must leave all of it
/// as it found it.
#[derive(Debug, PartialEq, Eq)]
pub struct TracingState {
    pub root: PathBuf,
    pub files: Vec<(String, String)>,
    pub instances: BTreeSet<String>,
}

impl TracingState {
    pub fn capture() -> Self {
        let root = tracefs_root().unwrap_or_else(|| {
            // A fresh machine may not have it mounted yet: mount it where the kernel expects.
            let status = Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status()
                .expect("run mount");
            assert!(status.success(), "cannot mount tracefs");
            tracefs_root().expect("tracefs mounted")
        });
        let files = [
            "tracing_on",
            "current_tracer",
            "set_event",
            "trace_clock",
            "buffer_size_kb",
        ]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(root.join(name)).unwrap_or_default();
            (name.to_string(), text)
        })
        .collect();
        let instances = std::fs::read_dir(root.join("instances"))
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        Self {
            root,
            files,
            instances,
        }
    }

    pub fn assert_same_as(&self, before: &TracingState) {
        assert_eq!(self.files, before.files, "global tracing state changed");
        assert_eq!(
            self.instances, before.instances,
            "trace instances left behind"
        );
    }
}

/// One busy thread that never sleeps, on one CPU: the cleanest target for an injected stall.
/// Callers add the threshold, the duration and the output files.
pub fn single_thread_args(cpu: usize) -> Vec<String> {
    let cpu = cpu.to_string();
    [
        "--cpus",
        &cpu,
        "--groups",
        "1",
        "--threads-per-group",
        "1",
        "--busy",
        "1h",
        "--max-sleep",
        "0",
        // Ordinary neighbours on this shared machine would otherwise add CFS slices.
        "--nice",
        "-20",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}
