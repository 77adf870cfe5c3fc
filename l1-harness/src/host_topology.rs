//! Host CPU topology from sysfs: which CPUs are online and which of them are SMT siblings.
//!
//! Both targets need it: the user target packs its threads on the two siblings of one core,
//! and performance mode pins vCPU 2k and 2k+1 to the two threads of one host core. Reading
//! from a root directory (not a fixed path) lets tests feed synthetic sysfs trees.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the kernel publishes CPU topology (Documentation/ABI/stable/sysfs-devices-system-cpu).
pub const SYSFS_CPU_ROOT: &str = "/sys/devices/system/cpu";

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid CPU list {list:?}: {reason}")]
    BadCpuList { list: String, reason: String },
    // `cause`, not `source`: the OS error is in the message, and anyhow's `{:#}` would
    // print a source a second time.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("CPU {cpu} is not online (online: {online})")]
    Offline { cpu: usize, online: String },
    #[error(
        "need {needed} SMT sibling pair(s) on cores other than CPU 0's, the host has {available}"
    )]
    NotEnoughSiblingPairs { needed: usize, available: usize },
}

/// Parses the kernel's cpulist format (`0-3,8,10-11`), as in `online` or `--cpus`.
/// The result is sorted and free of duplicates.
pub fn parse_cpulist(list: &str) -> Result<Vec<usize>, TopologyError> {
    let bad = |reason: &str| TopologyError::BadCpuList {
        list: list.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = list.trim();
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let mut cpus = Vec::new();
    for part in trimmed.split(',') {
        let number = |text: &str| {
            text.trim()
                .parse::<usize>()
                .map_err(|_| bad(&format!("{text:?} is not a CPU number")))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(bad(&format!("range {part:?} runs backwards")));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs in the kernel's cpulist format, folding runs into ranges.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let first = sorted[index];
        let mut last = first;
        while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
            index += 1;
            last = sorted[index];
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        index += 1;
    }
    parts.join(",")
}

/// The online CPUs and their SMT sibling groups (one group per physical core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTopology {
    online: Vec<usize>,
    /// Each core's online threads, sorted; groups ordered by their first CPU.
    cores: Vec<Vec<usize>>,
}

impl HostTopology {
    /// Reads the running host's topology.
    pub fn from_host() -> Result<Self, TopologyError> {
        Self::read(Path::new(SYSFS_CPU_ROOT))
    }

    /// Reads `online` and every online CPU's `topology/thread_siblings_list` under `root`.
    pub fn read(root: &Path) -> Result<Self, TopologyError> {
        let online = parse_cpulist(&read_sysfs(&root.join("online"))?)?;
        let mut cores: Vec<Vec<usize>> = Vec::new();
        for &cpu in &online {
            let path = root.join(format!("cpu{cpu}/topology/thread_siblings_list"));
            let mut siblings = parse_cpulist(&read_sysfs(&path)?)?;
            siblings.retain(|sibling| online.contains(sibling));
            if !cores.contains(&siblings) {
                cores.push(siblings);
            }
        }
        cores.sort_by_key(|core| core[0]);
        Ok(Self { online, cores })
    }

    pub fn online_cpus(&self) -> &[usize] {
        &self.online
    }

    /// One entry per physical core: its online SMT threads.
    pub fn sibling_groups(&self) -> &[Vec<usize>] {
        &self.cores
    }

    /// The CPUs the user target packs its threads on, as schedgaps does: the two SMT
    /// siblings of the first core other than CPU 0's; without SMT, the last two CPUs.
    pub fn default_probe_cpus(&self) -> Vec<usize> {
        if let Some(pair) = self.pairs_after_cpu0_core().next() {
            return pair.to_vec();
        }
        let start = self.online.len().saturating_sub(2);
        self.online[start..].to_vec()
    }

    /// The CPUs a user asked for, all of which must be online, or the default probe CPUs.
    pub fn select_cpus(&self, requested: Option<&[usize]>) -> Result<Vec<usize>, TopologyError> {
        let Some(requested) = requested else {
            return Ok(self.default_probe_cpus());
        };
        if let Some(&cpu) = requested.iter().find(|cpu| !self.online.contains(cpu)) {
            return Err(TopologyError::Offline {
                cpu,
                online: format_cpulist(&self.online),
            });
        }
        Ok(requested.to_vec())
    }

    /// Host CPUs for `n_pairs` SMT pairs of vCPUs (vCPU 2k, 2k+1 on the two threads of one
    /// core), starting at the core after CPU 0's, which stays free for the host.
    pub fn vcpu_sibling_pairs(&self, n_pairs: usize) -> Result<Vec<[usize; 2]>, TopologyError> {
        let pairs: Vec<[usize; 2]> = self.pairs_after_cpu0_core().collect();
        if pairs.len() < n_pairs {
            return Err(TopologyError::NotEnoughSiblingPairs {
                needed: n_pairs,
                available: pairs.len(),
            });
        }
        Ok(pairs[..n_pairs].to_vec())
    }

    /// The first two threads of every SMT core that does not hold CPU 0.
    fn pairs_after_cpu0_core(&self) -> impl Iterator<Item = [usize; 2]> + '_ {
        self.cores
            .iter()
            .filter(|core| core.len() >= 2 && !core.contains(&0))
            .map(|core| [core[0], core[1]])
    }
}

fn read_sysfs(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path).map_err(|cause| TopologyError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a synthetic sysfs CPU tree: `siblings[cpu]` is that CPU's thread_siblings_list.
    fn fake_sysfs(online: &str, siblings: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("online"), format!("{online}\n")).expect("online");
        for (cpu, list) in siblings.iter().enumerate() {
            let topology = dir.path().join(format!("cpu{cpu}/topology"));
            fs::create_dir_all(&topology).expect("mkdir");
            fs::write(topology.join("thread_siblings_list"), format!("{list}\n")).expect("write");
        }
        dir
    }

    #[test]
    fn cpulist_round_trip() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpulist("3,2,2").unwrap(), vec![2, 3]);
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[5]), "5");
    }

    #[test]
    fn cpulist_rejects_garbage() {
        for bad in ["", "a", "3-1", "1-", "1,,2", "-2"] {
            assert!(parse_cpulist(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn smt_host_probes_the_second_core() {
        // 4 cores x 2 threads, Intel-style numbering: siblings are n and n+4.
        let tree = fake_sysfs(
            "0-7",
            &["0,4", "1,5", "2,6", "3,7", "0,4", "1,5", "2,6", "3,7"],
        );
        let topology = HostTopology::read(tree.path()).unwrap();
        assert_eq!(topology.sibling_groups().len(), 4);
        assert_eq!(topology.default_probe_cpus(), vec![1, 5]);
        assert_eq!(
            topology.vcpu_sibling_pairs(2).unwrap(),
            vec![[1, 5], [2, 6]]
        );
        assert!(matches!(
            topology.vcpu_sibling_pairs(4),
            Err(TopologyError::NotEnoughSiblingPairs {
                needed: 4,
                available: 3
            })
        ));
    }

    #[test]
    fn host_without_smt_probes_the_last_two_cpus() {
        let tree = fake_sysfs("0-3", &["0", "1", "2", "3"]);
        let topology = HostTopology::read(tree.path()).unwrap();
        assert_eq!(topology.default_probe_cpus(), vec![2, 3]);
        assert!(topology.vcpu_sibling_pairs(1).is_err());
    }

    #[test]
    fn selected_cpus_must_be_online() {
        let tree = fake_sysfs("0-3", &["0", "1", "2", "3"]);
        let topology = HostTopology::read(tree.path()).unwrap();
        assert_eq!(topology.select_cpus(None).unwrap(), vec![2, 3]);
        assert_eq!(topology.select_cpus(Some(&[1])).unwrap(), vec![1]);
        let err = topology.select_cpus(Some(&[1, 7])).unwrap_err().to_string();
        assert_eq!(err, "CPU 7 is not online (online: 0-3)");
    }

    #[test]
    fn offline_siblings_do_not_count() {
        // CPU 3 is offline: core {1,3} has one thread left and cannot host a vCPU pair.
        let tree = fake_sysfs("0-2", &["0,2", "1,3", "0,2"]);
        let topology = HostTopology::read(tree.path()).unwrap();
        assert_eq!(topology.sibling_groups(), &[vec![0, 2], vec![1]]);
        assert!(topology.vcpu_sibling_pairs(1).is_err());
    }

    #[test]
    fn this_host_reads() {
        let topology = HostTopology::from_host().expect("real sysfs topology");
        assert!(!topology.online_cpus().is_empty());
        let grouped: usize = topology.sibling_groups().iter().map(Vec::len).sum();
        assert_eq!(grouped, topology.online_cpus().len());
    }
}
