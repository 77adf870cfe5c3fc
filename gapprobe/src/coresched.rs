//! Core-scheduling cookies: the threads of one group (one "VM") may share a core with each
//! other but not with any other group, as the core-scheduling patches promise for vCPUs.
//!
//! Upstream (Linux 5.14+) gives cookies per task with `prctl(PR_SCHED_CORE, ...)`. The older
//! patch sets used a cgroup-v1 cpu controller file: `cpu.tag` (core scheduling v5-v10) or
//! `cpu.scheduled` (Amazon co-scheduling); each group then gets its own cgroup.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// From include/uapi/linux/prctl.h.
const PR_SCHED_CORE: libc::c_int = 62;
const PR_SCHED_CORE_GET: libc::c_ulong = 0;
const PR_SCHED_CORE_CREATE: libc::c_ulong = 1;
const PR_SCHED_CORE_SHARE_FROM: libc::c_ulong = 3;
/// `enum pid_type` in include/linux/pid.h: the cookie applies to one thread.
const PIDTYPE_PID: libc::c_ulong = 0;

/// Prefix of the cgroups made for the legacy interfaces; the pid follows, so that cgroups
/// left by a crashed run can be found and removed.
const CGROUP_PREFIX: &str = "gapprobe-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CoreSchedMode {
    /// Use whatever interface the kernel has; run without cookies if it has none.
    Auto,
    /// Insist on cookies: a kernel without an interface is an error.
    Group,
    /// No cookies.
    Off,
}

/// The interface that gives the groups their cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSchedInterface {
    Prctl,
    /// A cgroup-v1 cpu controller directory and the file name (`cpu.tag` or `cpu.scheduled`).
    LegacyCgroup {
        cpu_root: PathBuf,
        file: &'static str,
    },
}

impl CoreSchedInterface {
    pub fn name(&self) -> &'static str {
        match self {
            CoreSchedInterface::Prctl => "prctl",
            CoreSchedInterface::LegacyCgroup { file, .. } => file,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreSchedError {
    #[error("core scheduling requested (--core-sched group) but the kernel has no interface: {0}")]
    Unavailable(String),
    #[error("prctl(PR_SCHED_CORE, {op}) for thread {tid} failed: {cause}")]
    Prctl {
        op: &'static str,
        tid: i32,
        cause: io::Error,
    },
    #[error("{}: {cause}", path.display())]
    Cgroup { path: PathBuf, cause: io::Error },
}

fn prctl_sched_core(op: libc::c_ulong, tid: i32, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: PR_SCHED_CORE takes plain integers, and for GET a pointer to a u64 we own.
    let rc = unsafe { libc::prctl(PR_SCHED_CORE, op, tid as libc::c_ulong, PIDTYPE_PID, arg) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why `PR_SCHED_CORE_GET` failed, in a kernel developer's words.
fn explain_prctl_failure(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EINVAL) => {
            "prctl(PR_SCHED_CORE) is not supported (kernel without CONFIG_SCHED_CORE)".into()
        }
        Some(libc::ENODEV) => {
            "prctl(PR_SCHED_CORE) says ENODEV: the machine has no SMT siblings".into()
        }
        _ => format!("prctl(PR_SCHED_CORE) failed: {err}"),
    }
}

/// Finds the interface this kernel offers: the prctl first, then a legacy file in the root of
/// a cgroup-v1 cpu controller listed in `mounts` (the text of /proc/mounts).
pub fn detect(mounts: &str) -> Result<CoreSchedInterface, String> {
    let prctl_reason = match cookie_of(0) {
        Ok(_) => return Ok(CoreSchedInterface::Prctl),
        Err(err) => explain_prctl_failure(&err),
    };
    for cpu_root in cgroup_v1_cpu_roots(mounts) {
        for file in ["cpu.tag", "cpu.scheduled"] {
            if cpu_root.join(file).exists() {
                return Ok(CoreSchedInterface::LegacyCgroup { cpu_root, file });
            }
        }
    }
    Err(format!(
        "{prctl_reason}; no cgroup cpu.tag or cpu.scheduled either"
    ))
}

/// Mount points of cgroup-v1 hierarchies that carry the cpu controller.
fn cgroup_v1_cpu_roots(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mount_point, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let has_cpu = options.split(',').any(|option| option == "cpu");
            (*fstype == "cgroup" && has_cpu).then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// The cookie of thread `tid` (0: the caller) as `PR_SCHED_CORE_GET` shows it: a hash of the
/// kernel's cookie, 0 for none. Threads with equal non-zero values may share a core.
fn cookie_of(tid: i32) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    prctl_sched_core(
        PR_SCHED_CORE_GET,
        tid,
        &mut cookie as *mut u64 as libc::c_ulong,
    )?;
    Ok(cookie)
}

/// [`cookie_of`] for thread `tid`, as this module's error.
pub fn prctl_get(tid: i32) -> Result<u64, CoreSchedError> {
    cookie_of(tid).map_err(|cause| CoreSchedError::Prctl {
        op: "GET",
        tid,
        cause,
    })
}

/// Gives thread `tid` a new cookie of its own (the group leader).
pub fn prctl_create(tid: i32) -> Result<(), CoreSchedError> {
    prctl_sched_core(PR_SCHED_CORE_CREATE, tid, 0).map_err(|cause| CoreSchedError::Prctl {
        op: "CREATE",
        tid,
        cause,
    })
}

/// Makes the calling thread share the cookie of `leader_tid`.
pub fn prctl_share_from(leader_tid: i32) -> Result<(), CoreSchedError> {
    prctl_sched_core(PR_SCHED_CORE_SHARE_FROM, leader_tid, 0).map_err(|cause| {
        CoreSchedError::Prctl {
            op: "SHARE_FROM",
            tid: leader_tid,
            cause,
        }
    })
}

/// One tagged cgroup per group for the legacy interfaces; removed on drop.
pub struct LegacyGroups {
    dirs: Vec<PathBuf>,
}

impl LegacyGroups {
    /// Creates `groups` cgroups under `cpu_root` with `file` set to 1.
    pub fn create(cpu_root: &Path, file: &str, groups: usize) -> Result<Self, CoreSchedError> {
        let mut made = LegacyGroups { dirs: Vec::new() };
        let pid = std::process::id();
        for group in 0..groups {
            let dir = cpu_root.join(format!("{CGROUP_PREFIX}{pid}-g{group}"));
            fs::create_dir(&dir).map_err(|cause| CoreSchedError::Cgroup {
                path: dir.clone(),
                cause,
            })?;
            made.dirs.push(dir.clone());
            write_file(&dir.join(file), "1")?;
        }
        Ok(made)
    }

    /// Moves thread `tid` into group `group`'s cgroup.
    pub fn join(&self, group: usize, tid: i32) -> Result<(), CoreSchedError> {
        write_file(&self.dirs[group].join("tasks"), &tid.to_string())
    }
}

impl Drop for LegacyGroups {
    fn drop(&mut self) {
        // The threads have exited by now, so the cgroups are empty and rmdir succeeds.
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CoreSchedError> {
    fs::write(path, value).map_err(|cause| CoreSchedError::Cgroup {
        path: path.to_path_buf(),
        cause,
    })
}

/// Removes cgroups that a run which died without cleaning up left under `cpu_root`.
pub fn remove_stale_cgroups(cpu_root: &Path) {
    let Ok(entries) = fs::read_dir(cpu_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(CGROUP_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
";

    #[test]
    fn finds_only_v1_hierarchies_with_the_cpu_controller() {
        assert_eq!(
            cgroup_v1_cpu_roots(MOUNTS),
            vec![PathBuf::from("/sys/fs/cgroup/cpu")]
        );
    }

    #[test]
    fn legacy_groups_tag_and_clean_up() {
        let root = tempfile::tempdir().unwrap();
        let groups = LegacyGroups::create(root.path(), "cpu.tag", 3).unwrap();
        let pid = std::process::id();
        let dir = root.path().join(format!("gapprobe-{pid}-g2"));
        assert_eq!(fs::read_to_string(dir.join("cpu.tag")).unwrap(), "1");
        groups.join(2, 4242).unwrap();
        assert_eq!(fs::read_to_string(dir.join("tasks")).unwrap(), "4242");
        // A real cgroup directory is empty once its tasks leave; the fake one holds files.
        fs::remove_file(dir.join("cpu.tag")).unwrap();
        fs::remove_file(dir.join("tasks")).unwrap();
        drop(groups);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_cgroups_of_dead_runs_are_removed() {
        let root = tempfile::tempdir().unwrap();
        // PID 0x7fffffff cannot exist (pid_max is at most 2^22); our own PID does.
        let dead = root.path().join("gapprobe-2147483647-g0");
        let alive = root
            .path()
            .join(format!("gapprobe-{}-g0", std::process::id()));
        let foreign = root.path().join("system.slice");
        for dir in [&dead, &alive, &foreign] {
            fs::create_dir(dir).unwrap();
        }
        remove_stale_cgroups(root.path());
        assert!(!dead.exists());
        assert!(alive.exists() && foreign.exists());
    }
}
