//! The machine: CPU, memory, swap, load, uptime (sysinfo) and the data
//! dir's filesystem (statvfs).
//!
//! One `System` lives as long as the collector and is refreshed only for CPU
//! usage and memory: sysinfo's process and disk scans would make a scrape
//! cost grow with the whole machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// What the host looks like at one scrape.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostSample {
    /// Busy share of all CPUs since the previous refresh, 0..1.
    pub cpu_usage_ratio: f64,
    pub cpu_per_core_ratio: Vec<f64>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// The data dir's filesystem; None when statvfs fails.
    pub disk: Option<DiskSample>,
    pub uptime_seconds: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskSample {
    pub path: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

pub struct HostCollector {
    system: System,
    /// When CPU usage was last refreshed: sysinfo measures usage between two
    /// refreshes, and refreshes closer than its minimum interval give noise.
    cpu_refreshed: Instant,
    data_dir: PathBuf,
}

impl HostCollector {
    pub fn new(data_dir: PathBuf) -> HostCollector {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::everything()),
        );
        HostCollector { system, cpu_refreshed: Instant::now(), data_dir }
    }

    pub fn sample(&mut self) -> HostSample {
        // Two scrapes within sysinfo's minimum interval (200 ms on Linux; the
        // dashboard and Prometheus may ask at once) share the previous window
        // instead of measuring a window too short to mean anything.
        let min_interval = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(200));
        if self.cpu_refreshed.elapsed() >= min_interval {
            self.system.refresh_cpu_usage();
            self.cpu_refreshed = Instant::now();
        }
        self.system.refresh_memory();
        let load = System::load_average();
        HostSample {
            cpu_usage_ratio: f64::from(self.system.global_cpu_usage()) / 100.0,
            cpu_per_core_ratio: self.system.cpus().iter().map(|c| f64::from(c.cpu_usage()) / 100.0).collect(),
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_free_bytes: self.system.free_swap(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            disk: disk_of(&self.data_dir),
            uptime_seconds: System::uptime(),
        }
    }
}

fn disk_of(path: &std::path::Path) -> Option<DiskSample> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    // f_frsize is the unit of the block counts (f_bsize is only the preferred I/O size).
    let unit = stat.fragment_size() as u64;
    Some(DiskSample {
        path: path.display().to_string(),
        total_bytes: stat.blocks() as u64 * unit,
        // f_bavail: what an unprivileged user (the units' User=) can still write.
        available_bytes: stat.blocks_available() as u64 * unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_a_plausible_host() {
        let mut host = HostCollector::new(std::env::temp_dir());
        let s = host.sample();
        assert!(s.memory_total_bytes > 0 && s.memory_available_bytes <= s.memory_total_bytes);
        assert!(!s.cpu_per_core_ratio.is_empty());
        assert!((0.0..=1.0).contains(&s.cpu_usage_ratio));
        let disk = s.disk.expect("statvfs of the temp dir");
        assert!(disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes);
        assert!(s.uptime_seconds > 0);
    }
}
