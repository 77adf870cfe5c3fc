//! Starting one L2 guest inside L1 with l1-harness (the VMM the host uses), and finding its
//! vCPU threads afterwards.
//!
//! Placement without a VMM hook: the thread that calls `Vm::run` restricts itself to the L2
//! CPUs and takes the VM's core-scheduling cookie first; the vCPU threads it then creates
//! inherit both (a clone copies the CPU mask, the cookie and, for the legacy interfaces, the
//! cgroup). That thread itself only waits for the VM's events.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use l1_harness::{
    KernelImage, LineSender, Placement, Vm, VmConfig, VmExit, VmStopHandle, VmmError,
};
use nix::sched::sched_getaffinity;
use nix::unistd::Pid;

use crate::coresched::{self, LegacyGroups};
use crate::detector::worker::{gettid, set_affinity};

/// Where the host puts the L2 kernel and initramfs in the L1 initramfs.
pub const L2_KERNEL: &str = "/l2/vmlinuz";
pub const L2_INITRD: &str = "/l2/initrd";
/// Two vCPUs per L2, as schedgaps' VMs; one thread per core is enough for the hwlat role.
pub const L2_VCPUS: u32 = 2;
const L2_THREADS_PER_CORE: u32 = 1;
/// l1-harness names vCPU thread i `vcpu<i>`.
const VCPU_THREAD_PREFIX: &str = "vcpu";
const TASK_SCAN_POLL: Duration = Duration::from_millis(10);
/// utime and stime in /proc/<pid>/task/<tid>/stat, counted from the field after the
/// command name (proc(5): fields 14 and 15; the state, field 3, is index 0).
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;

/// What the L2s tell the nested role, tagged with the VM's index.
#[derive(Debug)]
pub enum NestedEvent {
    /// One console line of the guest.
    Line(usize, String),
    /// The guest ended: a short name for the JSON (`poweroff`, `panic`, ...) and the detail.
    Ended(usize, &'static str, String),
}

/// How the two vCPU threads of each L2 share one core-scheduling cookie.
pub enum CookieSource {
    None,
    Prctl,
    /// One tagged cgroup per VM.
    Legacy(Arc<LegacyGroups>),
}

/// One L2 to start.
pub struct L2Launch<'a> {
    pub index: usize,
    pub cmdline: &'a str,
    pub mem_bytes: u64,
    pub cpus: &'a [usize],
    pub cookie: &'a CookieSource,
    pub events: Sender<NestedEvent>,
}

/// A started L2: what it takes to end it and wait for its VM thread.
pub struct RunningL2 {
    stop: VmStopHandle,
    thread: JoinHandle<()>,
}

impl RunningL2 {
    /// Asks the VM to stop; `join` waits for it.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Waits until the VM thread is done, i.e. its vCPU threads have left KVM_RUN (or were
    /// given up on after l1-harness's grace period).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Sets the VM up and starts its threads: one relays console lines, one runs the VM and
/// reports its end. Errors are those of `Vm::new` (a missing or too large image, KVM).
pub fn start(launch: L2Launch<'_>) -> anyhow::Result<RunningL2> {
    let index = launch.index;
    let (line_sender, lines) = channel();
    let config = VmConfig {
        kernel: KernelImage::BzImage(PathBuf::from(L2_KERNEL)),
        initrd: Some(PathBuf::from(L2_INITRD)),
        cmdline: launch.cmdline.to_string(),
        vcpus: L2_VCPUS,
        threads_per_core: L2_THREADS_PER_CORE,
        mem_bytes: launch.mem_bytes,
        // The nested role's own deadline ends every L2 (L1 powers off).
        timeout: None,
        nested: false,
        dump: None,
        placement: Placement::Floating,
        console: Box::new(LineSender::new(line_sender)),
    };
    let vm = Vm::new(config).with_context(|| format!("vm{index}"))?;
    let stop = vm.stop_handle();

    let relay = launch.events.clone();
    std::thread::Builder::new()
        .name(format!("l2-con{index}"))
        .spawn(move || {
            // Ends when the VM's console goes away with the VM.
            for line in lines {
                if relay.send(NestedEvent::Line(index, line)).is_err() {
                    return;
                }
            }
        })
        .context("spawning a console relay thread")?;

    let cpus = launch.cpus.to_vec();
    let cookie = match launch.cookie {
        CookieSource::None => CookieSource::None,
        CookieSource::Prctl => CookieSource::Prctl,
        CookieSource::Legacy(groups) => CookieSource::Legacy(Arc::clone(groups)),
    };
    let events = launch.events;
    let thread = std::thread::Builder::new()
        .name(format!("l2-vm{index}"))
        .spawn(move || {
            let ended = match place_this_thread(index, &cpus, &cookie) {
                Err(reason) => ("error", reason),
                Ok(()) => match vm.run(|_| {}) {
                    Ok(exit) => describe_exit(exit),
                    // L1 ended the run: not the guest's end, nothing to report.
                    Err(VmmError::Stopped) => return,
                    Err(err) => ("error", err.to_string()),
                },
            };
            let _ = events.send(NestedEvent::Ended(index, ended.0, ended.1));
        })
        .context("spawning a VM thread")?;
    Ok(RunningL2 { stop, thread })
}

/// Restricts the calling thread to `cpus` and gives it VM `index`'s cookie, for the vCPU
/// threads it creates to inherit.
fn place_this_thread(index: usize, cpus: &[usize], cookie: &CookieSource) -> Result<(), String> {
    set_affinity(cpus).map_err(|err| format!("sched_setaffinity to CPUs {cpus:?}: {err}"))?;
    let tid = gettid();
    match cookie {
        CookieSource::None => Ok(()),
        CookieSource::Prctl => coresched::prctl_create(tid).map_err(|err| err.to_string()),
        CookieSource::Legacy(groups) => groups.join(index, tid).map_err(|err| err.to_string()),
    }
}

fn describe_exit(exit: VmExit) -> (&'static str, String) {
    match exit {
        VmExit::PowerOff => ("poweroff", "powered off".to_string()),
        VmExit::Reset => ("reset", "reset the machine".to_string()),
        VmExit::Panic(line) => ("panic", line),
        VmExit::Timeout(limit) => ("timeout", format!("still running after {limit:?}")),
        VmExit::Crash(reason) => ("crash", reason),
    }
}

/// Waits up to `timeout` for `count` vCPU threads of this process that are not in `known`;
/// returns those found (and adds them to `known`). VMs are started one at a time, so the
/// new ones belong to the VM started last.
pub fn wait_for_new_vcpu_threads(
    known: &mut BTreeSet<i32>,
    count: usize,
    timeout: Duration,
) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    loop {
        for tid in vcpu_threads() {
            if known.insert(tid) {
                found.push(tid);
            }
        }
        if found.len() >= count || Instant::now() >= deadline {
            found.sort_unstable();
            return found;
        }
        std::thread::sleep(TASK_SCAN_POLL);
    }
}

/// This process's threads named by l1-harness as vCPU threads.
fn vcpu_threads() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: i32 = task.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            comm.starts_with(VCPU_THREAD_PREFIX).then_some(tid)
        })
        .collect()
}

/// `103 R user 140.21s sys 0.52s`: a thread's scheduler state and CPU time from /proc. A
/// vCPU thread's guest time counts as user time, time in L1's KVM as system time: this tells
/// a guest spinning in its boot from one that waits or one that keeps KVM busy.
pub fn thread_cpu_summary(tid: i32) -> String {
    let path = format!("/proc/self/task/{tid}/stat");
    let Ok(stat) = std::fs::read_to_string(&path) else {
        return format!("{tid} gone");
    };
    // Fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    match (fields.first(), ticks(STAT_UTIME), ticks(STAT_STIME)) {
        (Some(state), Some(utime), Some(stime)) => format!(
            "{tid} {state} user {:.2}s sys {:.2}s",
            utime as f64 / hz,
            stime as f64 / hz
        ),
        _ => format!("{tid} unreadable"),
    }
}

/// The CPUs thread `tid` may run on.
pub fn thread_affinity(tid: i32) -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(tid))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_threads_named_like_vcpu_threads_once() {
        let (ready, wait) = channel();
        let (done, finish) = channel::<()>();
        let vcpu = std::thread::Builder::new()
            .name("vcpu7".to_string())
            .spawn(move || {
                set_affinity(&[0]).unwrap();
                ready.send(gettid()).unwrap();
                let _ = finish.recv();
            })
            .unwrap();
        let tid = wait.recv().unwrap();
        let mut known = BTreeSet::new();
        let found = wait_for_new_vcpu_threads(&mut known, 1, Duration::from_secs(5));
        assert!(found.contains(&tid), "{found:?} lacks {tid}");
        assert_eq!(thread_affinity(tid).unwrap(), vec![0]);
        // Already known: not found again.
        let again = wait_for_new_vcpu_threads(&mut known, 1, Duration::from_millis(30));
        assert!(!again.contains(&tid));
        let summary = thread_cpu_summary(tid);
        assert!(
            summary.starts_with(&format!("{tid} S user ")) && summary.contains("s sys "),
            "{summary}"
        );
        assert_eq!(thread_cpu_summary(i32::MAX), format!("{} gone", i32::MAX));
        done.send(()).unwrap();
        vcpu.join().unwrap();
    }
}
