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
        // Memory and CPU accounting need the controllers enabled on the way
        // down; best effort, since a parent may not delegate them.
        for path in [&base, &dir] {
            let _ = fs::write(path.join("cgroup.subtree_control"), "+memory +cpu +pids");
        }
        Ok(CgroupRoot { dir })
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

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
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

    /// MemoryMax=: `memory.max`, and `memory.swap.max` 0 where swap
    /// accounting exists (a limit that swap can dodge only slows the box
    /// down). Fails where the memory controller is not delegated to us.
    pub fn set_memory_max(&self, bytes: u64) -> std::io::Result<()> {
        fs::write(self.dir.join("memory.max"), bytes.to_string())?;
        let swap = self.dir.join("memory.swap.max");
        if swap.exists() {
            fs::write(swap, "0")?;
        }
        Ok(())
    }

    pub fn remove(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
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
        fs::write(dir.path().join("memory.swap.max"), "max\n").unwrap();
        cg.set_memory_max(64 << 20).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("memory.max")).unwrap(), "67108864");
        assert_eq!(fs::read_to_string(dir.path().join("memory.swap.max")).unwrap(), "0");
    }
}
