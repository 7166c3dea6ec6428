//! What each unit's processes use right now: processes, CPU time, memory.
//!
//! With a cgroup the kernel keeps the books (`cgroup.procs`, `cpu.stat`,
//! `memory.current`). Without one, a unit's processes are its main pid and
//! every descendant, found through `/proc/<pid>/task/*/children`: the cost of
//! a scrape grows with the unit's own processes, never with every process on
//! the machine. (Daemonised grandchildren re-parented to aikore are missed by
//! that walk; the supervisor's full-/proc marker scan finds them for stopping,
//! but is too costly to run on every scrape.)
//!
//! CPU time is exported as a counter, so it must never go down, though a new
//! run starts a new cgroup at zero and exited processes leave the per-process
//! sum. [`CpuAccount`] turns those readings into a monotonic total.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// One unit's usage at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitUsage {
    /// Live (non-zombie) processes; also what GPU memory is matched against.
    pub pids: Vec<i32>,
    /// Monotonic CPU seconds over every run this daemon has seen.
    pub cpu_seconds: f64,
    /// `memory.current` where the memory controller is delegated, else the
    /// sum of the processes' RSS (shared pages counted once per process).
    pub memory_bytes: u64,
}

/// One process as read from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    pub pid: i32,
    /// Clock ticks since boot when it started: tells a reused pid from the old one.
    pub start_ticks: u64,
    pub cpu_ticks: u64,
    pub rss_pages: u64,
    pub zombie: bool,
}

/// Parses `/proc/<pid>/stat`. The comm field may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1 with comm as 2; `fields[0]` is field 3 (state).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        zombie: *fields.first()? == "Z",
        cpu_ticks: field(14)? + field(15)?, // utime + stime
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `root` and all its live descendants, through every thread's `children`
/// file (a child belongs to the thread that forked it).
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let Some(stat) = read_stat(pid) else { continue };
        if stat.zombie {
            continue;
        }
        found.push(stat);
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            if let Ok(children) = fs::read_to_string(task.path().join("children")) {
                queue.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    found
}

/// Turns CPU readings that can restart from zero into a total that only grows.
#[derive(Debug, Default)]
pub struct CpuAccount {
    total_ticks: u64,
    /// Cgroup mode: the last `usage_usec` of the current cgroup.
    cgroup_last_usec: Option<u64>,
    total_usec: u64,
    /// Process mode: pid -> (start time, CPU ticks last seen).
    processes: HashMap<i32, (u64, u64)>,
}

impl CpuAccount {
    /// A cgroup's usage only grows while it lives; a smaller reading means a
    /// new cgroup (a new run), which counts from zero.
    pub fn observe_cgroup(&mut self, usage_usec: u64) {
        let delta = match self.cgroup_last_usec {
            Some(last) if usage_usec >= last => usage_usec - last,
            _ => usage_usec,
        };
        self.total_usec += delta;
        self.cgroup_last_usec = Some(usage_usec);
    }

    /// Adds each live process's growth since the last scrape; a process seen
    /// for the first time counts whole. A process that exited keeps what was
    /// counted (its last interval before exit is lost: at most one scrape
    /// interval of its CPU).
    pub fn observe_processes(&mut self, stats: &[ProcStat]) {
        let mut next = HashMap::with_capacity(stats.len());
        for s in stats {
            let delta = match self.processes.get(&s.pid) {
                Some(&(start, last)) if start == s.start_ticks => s.cpu_ticks.saturating_sub(last),
                _ => s.cpu_ticks,
            };
            self.total_ticks += delta;
            next.insert(s.pid, (s.start_ticks, s.cpu_ticks.max(self.last_ticks(s))));
        }
        self.processes = next;
        self.cgroup_last_usec = None;
    }

    fn last_ticks(&self, s: &ProcStat) -> u64 {
        match self.processes.get(&s.pid) {
            Some(&(start, last)) if start == s.start_ticks => last,
            _ => 0,
        }
    }

    /// Nothing runs: the next cgroup or process starts from zero.
    pub fn idle(&mut self) {
        self.cgroup_last_usec = None;
        self.processes.clear();
    }

    pub fn seconds(&self, ticks_per_second: f64) -> f64 {
        self.total_usec as f64 / 1e6 + self.total_ticks as f64 / ticks_per_second
    }
}

/// Samples units each scrape and keeps their CPU accounts between scrapes.
pub struct UnitSampler {
    /// aikore's cgroup subtree, where cgroups are in use: a unit's cgroup is `<root>/<unit>`.
    cgroup_root: Option<PathBuf>,
    ticks_per_second: f64,
    page_size: u64,
    accounts: HashMap<String, CpuAccount>,
    /// Each unit's cgroup files, kept open between scrapes.
    cgroups: HashMap<String, CgroupFiles>,
    /// One read buffer for every file of a scrape.
    buf: Vec<u8>,
}

/// procfs and cgroupfs files make their text anew on every read at offset
/// 0, so an fd kept open re-reads them with one `pread`: no path walk, no
/// open and close per scrape (issue 15: a scrape of 100 units read ~600
/// paths). An fd of a process that ended, or of a cgroup removed at the end
/// of its run, fails its read; it is then opened again by path.
#[derive(Default)]
struct CgroupFiles {
    procs: Option<File>,
    cpu_stat: Option<File>,
    memory_current: Option<File>,
    /// `memory.current` is missing (no memory controller: a hybrid v1/v2
    /// host): not looked up again. The controllers a unit cgroup gets are
    /// the ones aikore's subtree delegates, set once at boot.
    no_memory_file: bool,
    /// `/proc/<pid>/statm` (or `stat`) of the processes the last scrape
    /// found in the cgroup: rebuilt each scrape, so an ended one is dropped.
    stats: HashMap<i32, File>,
}

/// Reads `file` whole from offset 0 into `buf` (cleared first).
fn pread_all(file: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut chunk, offset)?;
        buf.extend_from_slice(&chunk[..n]);
        // A short read is the whole text: these files are made in one go.
        if n < chunk.len() {
            return Ok(());
        }
        offset += n as u64;
    }
}

/// Reads the file kept in `slot`, opening `path` when there is none or the
/// kept one went stale. None: the file cannot be read now.
fn read_kept<'b>(slot: &mut Option<File>, path: impl FnOnce() -> PathBuf, buf: &'b mut Vec<u8>) -> Option<&'b str> {
    if let Some(file) = slot.as_ref() {
        if pread_all(file, buf).is_ok() {
            return std::str::from_utf8(buf).ok();
        }
    }
    *slot = None;
    let file = File::open(path()).ok()?;
    pread_all(&file, buf).ok()?;
    *slot = Some(file);
    std::str::from_utf8(buf).ok()
}

fn sysconf_or(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    if value > 0 {
        value as u64
    } else {
        fallback
    }
}

impl UnitSampler {
    pub fn new(cgroup_root: Option<PathBuf>) -> UnitSampler {
        UnitSampler {
            cgroup_root,
            // 100 Hz and 4 KiB are Linux's defaults on every architecture we run on.
            ticks_per_second: sysconf_or(libc::_SC_CLK_TCK, 100) as f64,
            page_size: sysconf_or(libc::_SC_PAGESIZE, 4096),
            accounts: HashMap::new(),
            cgroups: HashMap::new(),
            buf: Vec::with_capacity(4096),
        }
    }

    /// Forgets units no longer defined, so a reload does not leak accounts.
    pub fn retain(&mut self, names: &HashSet<&str>) {
        self.accounts.retain(|name, _| names.contains(name.as_str()));
        self.cgroups.retain(|name, _| names.contains(name.as_str()));
    }

    /// The processes' stats through the fds kept in `kept` (those read are
    /// kept again); `only_memory`: statm is enough (the cgroup has the CPU
    /// time), and cheaper for the kernel to make.
    fn stats(&mut self, pids: &[i32], only_memory: bool, kept: &mut HashMap<i32, File>) -> Vec<ProcStat> {
        let mut last = std::mem::take(kept);
        let mut out = Vec::with_capacity(pids.len());
        let name = if only_memory { "statm" } else { "stat" };
        for &pid in pids {
            let mut slot = last.remove(&pid);
            let Some(text) = read_kept(&mut slot, || PathBuf::from(format!("/proc/{pid}/{name}")), &mut self.buf)
            else {
                continue;
            };
            let stat = if only_memory { parse_statm(pid, text) } else { parse_stat(pid, text) };
            if let (Some(stat), Some(file)) = (stat, slot) {
                kept.insert(pid, file);
                if !stat.zombie {
                    out.push(stat);
                }
            }
        }
        out
    }

    /// Reads one unit: its cgroup when it has one, else its main pid's tree.
    pub fn sample(&mut self, unit: &str, main_pid: Option<i32>) -> UnitUsage {
        if let Some(dir) = self.cgroup_root.as_ref().map(|root| root.join(unit)) {
            if let Some(usage) = self.sample_cgroup(unit, &dir) {
                return usage;
            }
        }
        let account = self.accounts.entry(unit.to_string()).or_default();
        let stats = main_pid.map(descendants).unwrap_or_default();
        if stats.is_empty() {
            account.idle();
        } else {
            account.observe_processes(&stats);
        }
        UnitUsage {
            pids: stats.iter().map(|s| s.pid).collect(),
            cpu_seconds: account.seconds(self.ticks_per_second),
            memory_bytes: stats.iter().map(|s| s.rss_pages).sum::<u64>() * self.page_size,
        }
    }
}

impl UnitSampler {
    /// None: the unit has no cgroup (now).
    fn sample_cgroup(&mut self, unit: &str, dir: &Path) -> Option<UnitUsage> {
        let mut files = self.cgroups.remove(unit).unwrap_or_default();
        let Some(procs) = read_kept(&mut files.procs, || dir.join("cgroup.procs"), &mut self.buf) else {
            // No cgroup now (the unit is stopped): nothing of its run stays open.
            return None;
        };
        let mut pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            // A Delegate= unit may have moved every process into cgroups of its own below.
            pids = crate::supervisor::cgroup::subtree_pids(dir).unwrap_or_default();
        }
        let usec = read_kept(&mut files.cpu_stat, || dir.join("cpu.stat"), &mut self.buf)
            .and_then(|stat| stat.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok()));
        let current = if files.no_memory_file {
            None
        } else {
            let read = read_kept(&mut files.memory_current, || dir.join("memory.current"), &mut self.buf)
                .and_then(|t| t.trim().parse::<u64>().ok());
            files.no_memory_file = read.is_none();
            read
        };
        let account = self.accounts.entry(unit.to_string()).or_default();
        // With the cpu and memory controllers the kernel has the totals:
        // three reads per unit, however many processes it has (issue 15:
        // a scrape's cost grows with units, not processes). Each
        // process's statm only where the memory controller is missing.
        if let (Some(usec), Some(memory_bytes)) = (usec, current) {
            account.observe_cgroup(usec);
            let cpu_seconds = account.seconds(self.ticks_per_second);
            files.stats.clear();
            self.cgroups.insert(unit.to_string(), files);
            return Some(UnitUsage { pids, cpu_seconds, memory_bytes });
        }
        let mut kept = std::mem::take(&mut files.stats);
        let stats = self.stats(&pids, usec.is_some(), &mut kept);
        files.stats = kept;
        self.cgroups.insert(unit.to_string(), files);
        let account = self.accounts.entry(unit.to_string()).or_default();
        match usec {
            Some(usec) => account.observe_cgroup(usec),
            // No cpu controller file: fall back to the processes' own times.
            None => account.observe_processes(&stats),
        }
        let rss = stats.iter().map(|s| s.rss_pages).sum::<u64>() * self.page_size;
        Some(UnitUsage {
            pids: stats.iter().map(|s| s.pid).collect(),
            cpu_seconds: account.seconds(self.ticks_per_second),
            memory_bytes: current.unwrap_or(rss),
        })
    }
}

/// Parses `/proc/<pid>/statm` (pages: size resident shared text lib data
/// dt). A zombie has no memory map: all zeros.
pub fn parse_statm(pid: i32, text: &str) -> Option<ProcStat> {
    let mut fields = text.split_ascii_whitespace();
    let size: u64 = fields.next()?.parse().ok()?;
    let rss_pages: u64 = fields.next()?.parse().ok()?;
    Some(ProcStat { pid, start_ticks: 0, cpu_ticks: 0, rss_pages, zombie: size == 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, start: u64, cpu: u64) -> ProcStat {
        ProcStat { pid, start_ticks: start, cpu_ticks: cpu, rss_pages: 1, zombie: false }
    }

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let text =
            "42 (a) b (c) S 1 42 42 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 5000 1000000 250 18446744073709551615";
        let s = parse_stat(42, text).unwrap();
        assert_eq!((s.cpu_ticks, s.start_ticks, s.rss_pages, s.zombie), (10, 5000, 250, false));
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn cgroup_cpu_survives_a_new_run() {
        let mut a = CpuAccount::default();
        a.observe_cgroup(2_000_000);
        a.observe_cgroup(3_000_000);
        a.idle();
        // The next run's cgroup starts from zero: its usage adds on top.
        a.observe_cgroup(500_000);
        assert_eq!(a.seconds(100.0), 3.5);
    }

    #[test]
    fn process_cpu_never_goes_down_when_a_process_exits() {
        let mut a = CpuAccount::default();
        a.observe_processes(&[stat(10, 1, 100), stat(11, 2, 50)]);
        assert_eq!(a.seconds(100.0), 1.5);
        // 11 exited: what it used stays counted; 10 grew by 20 ticks.
        a.observe_processes(&[stat(10, 1, 120)]);
        assert_eq!(a.seconds(100.0), 1.7);
        // pid 10 reused by a new process (different start): counted whole.
        a.observe_processes(&[stat(10, 9, 5)]);
        assert!((a.seconds(100.0) - 1.75).abs() < 1e-9);
    }

    #[test]
    fn walks_our_own_process_tree() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & sleep 30; true"]).spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = Vec::new();
        while std::time::Instant::now() < deadline {
            found = descendants(pid);
            if found.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let sleepers: Vec<i32> = found.iter().map(|s| s.pid).filter(|p| *p != pid).collect();
        for p in &sleepers {
            // SAFETY: killing the sleeps this test started.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 3, "sh and its two sleeps: {found:?}");
        let mut sampler = UnitSampler::new(None);
        assert_eq!(sampler.sample("gone", Some(pid)), UnitUsage::default());
    }
}
