//! Which unit a GPU process belongs to.
//!
//! NVML lists the processes on each GPU by pid. Current drivers give those
//! pids in the caller's PID namespace (NVIDIA/open-gpu-kernel-modules#614),
//! so inside the container they are the pids aikore sees and match a unit's
//! processes directly. Older drivers give host pids (NVIDIA/nvidia-docker#1483).
//! Those are matched through the `NSpid:` line of `/proc/<pid>/status`, which
//! lists a process's pid in every namespace from the one of the procfs
//! mount inward: where aikore's /proc shows outer pids (aikore in the host
//! namespace, a unit in a nested one; or the host's /proc), the host pid is
//! there. Inside a container with its own /proc the line has only the
//! container's pid, and host pids cannot be matched at all: then
//! [`Attribution::foreign_pids`] says so (the API's `gpu_pid_note`), instead
//! of VRAM silently reading 0 for every instance.

use std::collections::HashMap;

use super::GpuSample;

/// What was matched on every GPU.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Attribution {
    /// unit -> gpu index -> bytes.
    pub by_unit: HashMap<String, HashMap<u32, u64>>,
    /// gpu index -> bytes some unit accounts for.
    pub attributed: HashMap<u32, u64>,
    /// GPU processes whose pid is neither a unit's nor any live process aikore can see.
    pub foreign_pids: usize,
}

/// The pids of the `NSpid:` line of a `/proc/<pid>/status` text, outermost first.
pub fn parse_nspid(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| rest.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The real reader: `/proc/<pid>/status`.
pub fn proc_status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// Matches every GPU process to a unit: by pid, else by any of its unit
/// processes' NSpid entries. `units` are (name, live pids as aikore sees them).
pub fn attribute(
    units: &[(String, Vec<u32>)],
    gpus: &[GpuSample],
    status: &dyn Fn(u32) -> Option<String>,
    visible: &dyn Fn(u32) -> bool,
) -> Attribution {
    let mut direct: HashMap<u32, &str> = HashMap::new();
    for (name, pids) in units {
        for pid in pids {
            direct.insert(*pid, name);
        }
    }
    let mut nspid: Option<HashMap<u32, &str>> = None;
    let mut out = Attribution::default();
    for gpu in gpus {
        for (&pid, &bytes) in &gpu.processes {
            let unit = match direct.get(&pid) {
                Some(u) => Some(*u),
                None => {
                    // Built only when some pid does not match directly (old drivers): one status read per unit process.
                    let table = nspid.get_or_insert_with(|| {
                        let mut t = HashMap::new();
                        for (name, pids) in units {
                            for pid in pids {
                                for other in status(*pid).map(|s| parse_nspid(&s)).unwrap_or_default() {
                                    t.entry(other).or_insert(name.as_str());
                                }
                            }
                        }
                        t
                    });
                    table.get(&pid).copied()
                }
            };
            match unit {
                Some(u) => {
                    *out.by_unit.entry(u.to_string()).or_default().entry(gpu.index).or_default() += bytes;
                    *out.attributed.entry(gpu.index).or_default() += bytes;
                }
                None if !visible(pid) => out.foreign_pids += 1,
                None => {}
            }
        }
    }
    out
}

/// Whether a pid is a live process in aikore's /proc.
pub fn pid_visible(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, procs: &[(u32, u64)]) -> GpuSample {
        GpuSample { index, processes: procs.iter().copied().collect(), ..Default::default() }
    }

    #[test]
    fn nspid_lines_parse() {
        assert_eq!(parse_nspid("Name:\tpython\nNSpid:\t845123\t17\nNSpgid:\t1\n"), [845123, 17]);
        assert_eq!(parse_nspid("NSpid:\t17\n"), [17]);
        assert!(parse_nspid("Name: x\n").is_empty());
    }

    #[test]
    fn namespace_local_pids_match_directly() {
        let units = vec![("sd".to_string(), vec![17, 18]), ("comfy".to_string(), vec![30])];
        let gpus = [gpu(0, &[(17, 2 << 30), (30, 1 << 30)]), gpu(1, &[(18, 3 << 30)])];
        let no_status = |_: u32| -> Option<String> { panic!("no status read needed when every pid matches") };
        let a = attribute(&units, &gpus, &no_status, &|_| true);
        assert_eq!(a.by_unit["sd"], [(0, 2 << 30), (1, 3 << 30)].into());
        assert_eq!(a.by_unit["comfy"], [(0, 1 << 30)].into());
        assert_eq!(a.attributed[&0], 3 << 30);
        assert_eq!(a.foreign_pids, 0);
    }

    #[test]
    fn host_pids_match_through_nspid() {
        // aikore's /proc shows the outer pids (845123) of processes it knows as 17: an old driver's host pids.
        let units = vec![("sd".to_string(), vec![17])];
        let status = |pid: u32| (pid == 17).then(|| "Name:\tpython\nNSpid:\t845123\t17\n".to_string());
        let gpus = [gpu(0, &[(845123, 2 << 30), (999999, 1 << 30)])];
        let a = attribute(&units, &gpus, &status, &|pid| pid == 17);
        assert_eq!(a.by_unit["sd"], [(0, 2 << 30)].into());
        assert_eq!(a.foreign_pids, 1, "999999 is nobody aikore can see: told, not dropped silently");
    }
}
