//! cgroup v2 per unit, where a writable unified hierarchy exists.
//!
//! A unit's cgroup gives exact membership (double-forked and setsid'd
//! descendants included), `cgroup.kill` for a race-free SIGKILL of all of them,
//! and `cpu.stat` / `memory.current` for accounting. Without one the
//! supervisor falls back to process groups plus the `AIKORE_UNIT` marker.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::units::{Resources, TasksMax};

/// The subtree aikore owns: `<unified mount><our cgroup>/aikore-<tag>/`.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
}

/// Why cgroups are not used, for the log and /api/v1/system.
pub type ProbeFailure = String;

fn unified_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint options ... - fstype source superopts
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

fn own_cgroup_path() -> Option<String> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
}

impl CgroupRoot {
    /// Finds the cgroup2 mount and our place in it, creates `aikore-<tag>` and
    /// checks that processes can be moved there. `tag` keeps two aikore daemons
    /// on one machine (tests) out of each other's cgroups.
    pub fn probe(tag: &str) -> Result<CgroupRoot, ProbeFailure> {
        let mount = unified_mount().ok_or("no cgroup2 filesystem is mounted")?;
        let own = own_cgroup_path().ok_or("/proc/self/cgroup has no cgroup v2 entry")?;
        let base = mount.join(own.trim_start_matches('/'));
        let dir = base.join(format!("aikore-{tag}"));
        if let Err(e) = fs::create_dir_all(&dir) {
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
        // A test cgroup proves we may move processes (delegation, permissions).
        let probe = dir.join("probe");
        let _ = fs::create_dir(&probe);
        let writable = fs::OpenOptions::new().write(true).open(probe.join("cgroup.procs")).is_ok()
            && probe.join("cgroup.kill").exists();
        let _ = fs::remove_dir(&probe);
        if !writable {
            let _ = fs::remove_dir(&dir);
            return Err(format!("{} is not writable or lacks cgroup.kill", dir.display()));
        }
        // Moving every process of our cgroup is only ours to do as the
        // container's init: PID 1 at the root of its own cgroup namespace.
        let container_init = std::process::id() == 1 && own.trim() == "/";
        let missing = enable_controllers(&base, &dir, tag, container_init);
        if !missing.is_empty() {
            tracing::warn!(
                cgroup = %dir.display(),
                "cgroup v2 controllers not available to unit cgroups: {}; the resource keys that need them \
                 (MemoryMax=, CPUWeight=, TasksMax=, ...) are not enforced and each such unit's log says so",
                missing.join("; ")
            );
        }
        Ok(CgroupRoot { dir })
    }

    /// The controllers unit cgroups get (`cgroup.subtree_control` of our subtree).
    pub fn controllers(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("cgroup.subtree_control"))
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates (or reuses) the unit's cgroup and opens its `cgroup.procs` for
    /// the spawned child to join itself.
    pub fn unit(&self, unit: &str) -> std::io::Result<UnitCgroup> {
        let dir = self.dir.join(unit);
        fs::create_dir_all(&dir)?;
        Ok(UnitCgroup { dir })
    }

    /// Leftover unit cgroups from a previous run of this daemon (same tag):
    /// their processes are killed and the cgroups removed.
    pub fn clear_leftovers(&self) -> Vec<String> {
        let mut cleared = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else { return cleared };
        for entry in entries.flatten() {
            if !entry.path().join("cgroup.procs").exists() {
                continue;
            }
            let cg = UnitCgroup { dir: entry.path() };
            if !cg.pids().is_empty() {
                cleared.push(entry.file_name().to_string_lossy().into_owned());
                cg.kill_all();
                cg.wait_empty(std::time::Duration::from_secs(5));
            }
            cg.remove();
        }
        cleared
    }

    /// Removes our subtree at exit (only possible once every unit cgroup is empty and gone).
    pub fn remove(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().join("cgroup.procs").exists() {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

#[derive(Debug, Clone)]
pub struct UnitCgroup {
    dir: PathBuf,
}

impl UnitCgroup {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn open_procs(&self) -> std::io::Result<OwnedFd> {
        let file = fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs"))?;
        Ok(file.into())
    }

    /// Every process of the unit, those in child cgroups (`Delegate=`) included.
    pub fn pids(&self) -> Vec<i32> {
        subtree_pids(&self.dir).unwrap_or_default()
    }

    pub fn kill_all(&self) {
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.kill")) {
            let _ = f.write_all(b"1");
        }
    }

    pub fn signal_all(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill() with a pid read from the cgroup; no memory involved.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn wait_empty(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.pids().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Total CPU time of every process that ever ran in the cgroup, in microseconds.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        stat.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
    }

    /// Present only where the memory controller is delegated to us.
    pub fn memory_bytes(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("memory.current")).ok()?.trim().parse().ok()
    }

    /// `oom_kill` of `memory.events`: processes in this cgroup (or below)
    /// the kernel's OOM killer killed. None without the memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let events = fs::read_to_string(self.dir.join("memory.events")).ok()?;
        events.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    }

    /// Removes the cgroup and any child cgroups a delegated unit made, deepest first.
    pub fn remove(&self) {
        for dir in subtree(&self.dir).iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Writes MemoryMax= and the other resource keys into this cgroup's
    /// files. Returns one line per key that could not be applied (for the
    /// unit's log at each start: a limit believed but not enforced is worse
    /// than none).
    pub fn apply_resources(&self, memory_max: Option<u64>, r: &Resources) -> Vec<String> {
        let mut writes: Vec<(&str, &str, String)> = Vec::new();
        if let Some(bytes) = memory_max {
            writes.push(("MemoryMax", "memory.max", bytes.to_string()));
        }
        let bytes_or_max = |v: Option<u64>| v.map_or("max".to_string(), |b| b.to_string());
        if let Some(v) = r.memory_high {
            writes.push(("MemoryHigh", "memory.high", bytes_or_max(v)));
        }
        match r.memory_swap_max {
            Some(v) => writes.push(("MemorySwapMax", "memory.swap.max", bytes_or_max(v))),
            // A MemoryMax= that swap can dodge only slows the box down; where
            // swap accounting exists, no swap unless MemorySwapMax= says so.
            None if memory_max.is_some() && self.dir.join("memory.swap.max").exists() => {
                writes.push(("MemoryMax", "memory.swap.max", "0".to_string()))
            }
            None => {}
        }
        if let Some(w) = r.cpu_weight {
            writes.push(("CPUWeight", "cpu.weight", w.to_string()));
        }
        if r.cpu_idle {
            writes.push(("CPUWeight", "cpu.idle", "1".to_string()));
        }
        if let Some(percent) = r.cpu_quota_percent {
            // systemd's default period, 100 ms: the quota is percent * 1 ms.
            writes.push(("CPUQuota", "cpu.max", format!("{} 100000", percent * 1000)));
        }
        if let Some(cpus) = &r.allowed_cpus {
            writes.push(("AllowedCPUs", "cpuset.cpus", cpus.clone()));
        }
        if let Some(tasks) = r.tasks_max {
            let value = match tasks {
                None => "max".to_string(),
                Some(TasksMax::Count(n)) => n.to_string(),
                Some(TasksMax::Percent(p)) => {
                    let max: f64 = fs::read_to_string("/proc/sys/kernel/threads-max")
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(4_194_304.0);
                    ((max * p / 100.0).max(1.0) as u64).to_string()
                }
            };
            writes.push(("TasksMax", "pids.max", value));
        }
        if let Some(w) = r.io_weight {
            writes.push(("IOWeight", "io.weight", format!("default {w}")));
        }
        let mut problems = Vec::new();
        for (key, file, value) in writes {
            let path = self.dir.join(file);
            if !path.exists() {
                let controller = file.split('.').next().unwrap_or(file);
                problems.push(format!(
                    "{key}= is not enforced: {file} does not exist (the {controller} controller is not enabled for \
                     aikore's cgroups; see the daemon's log at start)"
                ));
            } else if let Err(e) = fs::write(&path, &value) {
                problems.push(format!("{key}= is not enforced: cannot write {value:?} to {file} ({e})"));
            }
        }
        problems
    }
}

/// The processes of the cgroup at `dir` and of every cgroup below it (a
/// delegated unit's children); None when `dir` is not a cgroup.
pub fn subtree_pids(dir: &Path) -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    for (i, cgroup) in subtree(dir).into_iter().enumerate() {
        match fs::read_to_string(cgroup.join("cgroup.procs")) {
            Ok(s) => pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
            Err(_) if i == 0 => return None,
            // A child removed meanwhile.
            Err(_) => {}
        }
    }
    Some(pids)
}

/// `dir` and every cgroup below it, parents before children.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = fs::read_dir(&all[i]) {
            // Only directories are child cgroups; a symlink is not followed (a delegated user could make one).
            all.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        i += 1;
    }
    all
}

/// The controllers resource control uses: memory (MemoryMax=, MemoryHigh=,
/// MemorySwapMax=, OOM kills), cpu (CPUWeight=, CPUQuota=), cpuset
/// (AllowedCPUs=), io (IOWeight=), pids (TasksMax=).
pub const CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuset", "io", "pids"];

/// Enables [`CONTROLLERS`] on the way down to the unit cgroups: in `base`
/// (our own cgroup) and in `dir` (`aikore-<tag>`). cgroup v2 lets a cgroup
/// with processes in it hand no controller to its children (the "no
/// internal processes" rule, the root excepted): as PID 1 of a container,
/// every process in `base` is ours, so they move to the leaf
/// `aikore-<tag>-daemon` first, as systemd moves itself to `init.scope`.
/// Returns what is missing and why, per controller.
fn enable_controllers(base: &Path, dir: &Path, tag: &str, container_init: bool) -> Vec<String> {
    let available = |p: &Path| -> Vec<String> {
        fs::read_to_string(p.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    };
    let offered = available(base);
    let mut missing = Vec::new();
    for c in CONTROLLERS {
        if !offered.iter().any(|o| o == c) {
            missing.push(format!("{c}: not offered to {} (cgroup.controllers; a hybrid v1/v2 host binds it to v1, or the parent does not delegate it)", base.display()));
            continue;
        }
        let mut result = fs::write(base.join("cgroup.subtree_control"), format!("+{c}"));
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) && container_init {
            if let Err(e) = move_processes_to_leaf(base, &base.join(format!("aikore-{tag}-daemon"))) {
                tracing::warn!(error = %e, "cannot move the container's processes into a leaf cgroup");
            }
            result = fs::write(base.join("cgroup.subtree_control"), format!("+{c}"));
        }
        // Already enabled (by whoever made `base`) is as good.
        let enabled_in_base =
            fs::read_to_string(base.join("cgroup.subtree_control")).is_ok_and(|s| s.split_whitespace().any(|e| e == c));
        if !enabled_in_base {
            let why = match result {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => format!(
                    "{e}: processes live in {} itself, and aikore is not the container's PID 1 (at the root of its \
                     cgroup namespace), so it does not move them",
                    base.display()
                ),
                Err(e) => e.to_string(),
                Ok(()) => "not enabled".to_string(),
            };
            missing.push(format!("{c}: cannot enable it in {}/cgroup.subtree_control ({why})", base.display()));
            continue;
        }
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            missing.push(format!("{c}: cannot enable it in {}/cgroup.subtree_control ({e})", dir.display()));
        }
    }
    missing
}

/// Moves every process of `from` into the (new) cgroup `leaf`.
fn move_processes_to_leaf(from: &Path, leaf: &Path) -> std::io::Result<()> {
    fs::create_dir_all(leaf)?;
    for _ in 0..3 {
        // Processes forked meanwhile land in `from` again: a few passes.
        let pids = fs::read_to_string(from.join("cgroup.procs"))?;
        if pids.trim().is_empty() {
            break;
        }
        // "0": a process outside our PID namespace; writing 0 would move ourselves, not it.
        for pid in pids.lines().map(str::trim).filter(|p| *p != "0") {
            // A process that exited meanwhile (ESRCH) is fine.
            let _ = fs::write(leaf.join("cgroup.procs"), pid);
        }
    }
    Ok(())
}

/// The host's OOM kills since boot (`/proc/vmstat` `oom_kill`, Linux 4.13+).
pub fn host_oom_kills() -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files as the kernel lays them out (cgroup v2's memory.events), in a
    /// plain dir: the parsing and writing, not the kernel's enforcement.
    #[test]
    fn reads_oom_kills_and_writes_the_memory_limit_without_swap() {
        let dir = tempfile::tempdir().unwrap();
        let cg = UnitCgroup { dir: dir.path().to_path_buf() };
        assert_eq!(cg.oom_kills(), None, "no memory controller");
        fs::write(dir.path().join("memory.events"), "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
            .unwrap();
        assert_eq!(cg.oom_kills(), Some(2));
        for file in ["memory.max", "memory.swap.max", "memory.high", "cpu.weight", "cpu.max", "pids.max"] {
            fs::write(dir.path().join(file), "max\n").unwrap();
        }
        let r = Resources {
            memory_high: Some(Some(32 << 20)),
            cpu_weight: Some(50),
            cpu_quota_percent: Some(150),
            tasks_max: Some(Some(TasksMax::Count(16))),
            io_weight: Some(300),
            ..Resources::default()
        };
        let problems = cg.apply_resources(Some(64 << 20), &r);
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.high"), "33554432");
        assert_eq!(
            (read("cpu.weight"), read("cpu.max"), read("pids.max")),
            ("50".into(), "150000 100000".into(), "16".into())
        );
        // No io.weight file: the io controller is missing, and the unit is told.
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("IOWeight= is not enforced: io.weight does not exist (the io controller"));
        // MemorySwapMax= given wins over the no-swap default.
        let r = Resources { memory_swap_max: Some(None), ..Resources::default() };
        cg.apply_resources(Some(1 << 20), &r);
        assert_eq!(read("memory.swap.max"), "max");
    }
}
