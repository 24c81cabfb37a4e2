//! The node's capacity and use, for the scheduler: CPU cores and load, memory (sysinfo), and the
//! space of the filesystem holding the agent's data directory (statvfs).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sysinfo::System;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpu_cores: u32,
    /// Busy share of all cores since the previous sample, 0-100 (0 on the first sample).
    pub cpu_used_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The filesystem of the data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
}

/// Keeps the state sysinfo needs to turn CPU counters into a usage between two samples.
pub struct Sampler {
    sys: System,
}

impl Sampler {
    pub fn new() -> Result<Sampler, crate::Error> {
        let mut sys = System::new().map_err(|e| crate::Error::System(format!("reading system information: {e}")))?;
        sys.refresh_cpu_usage();
        Ok(Sampler { sys })
    }

    pub fn sample(&mut self, data_dir: &Path) -> Result<NodeResources, crate::Error> {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let fs = rustix::fs::statvfs(data_dir)
            .map_err(|e| crate::Error::System(format!("statvfs {}: {e}", data_dir.display())))?;
        Ok(NodeResources {
            cpu_cores: self.sys.cpus().len() as u32,
            cpu_used_percent: self.sys.global_cpu_usage(),
            memory_total_bytes: self.sys.total_memory(),
            memory_available_bytes: self.sys.available_memory(),
            disk_total_bytes: fs.f_blocks * fs.f_frsize,
            disk_available_bytes: fs.f_bavail * fs.f_frsize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meminfo_kib(field: &str) -> u64 {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn capacity_matches_what_the_kernel_reports() {
        let dir = tempfile::tempdir().unwrap();
        let r = Sampler::new().unwrap().sample(dir.path()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(r.cpu_cores >= cores, "{} cores, {cores} usable by this process", r.cpu_cores);
        assert_eq!(r.memory_total_bytes, meminfo_kib("MemTotal:") * 1024);
        assert!(0 < r.memory_available_bytes && r.memory_available_bytes <= r.memory_total_bytes);
        assert!(0 < r.disk_available_bytes && r.disk_available_bytes <= r.disk_total_bytes);
        assert!((0.0..=100.0).contains(&r.cpu_used_percent));
    }
}
