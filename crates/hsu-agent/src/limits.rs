//! Resource limits: rlimits set in the child before `exec`, and a cgroup per unit — v2 where the
//! unified hierarchy has the controllers, else v1 (memory, cpu, pids) — that the child joins
//! before `exec`, so nothing it does escapes the limits. A machine with neither says so: the
//! unit's status reports that its limits are not enforced instead of pretending.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use hsu_model::unit::Limits;
use rustix::process::{Resource, Rlimit};

/// Where this machine's cgroups are, as the agent found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// The unified hierarchy (mounted at the path) with the memory controller.
    V2(PathBuf),
    /// v1 controller hierarchies, each if mounted.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    None,
}

/// Finds the cgroup hierarchies under `/sys/fs/cgroup`.
pub fn detect() -> Cgroups {
    let root = Path::new("/sys/fs/cgroup");
    let has_memory = |p: &Path| {
        std::fs::read_to_string(p.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    };
    if has_memory(root) {
        return Cgroups::V2(root.to_path_buf());
    }
    let v1 = |name: &str| Some(root.join(name)).filter(|p| p.join("cgroup.procs").exists());
    let (memory, cpu, pids) = (v1("memory"), v1("cpu"), v1("pids"));
    if memory.is_none() && cpu.is_none() && pids.is_none() {
        Cgroups::None
    } else {
        Cgroups::V1 { memory, cpu, pids }
    }
}

/// A unit's cgroup(s): `hsu/NAME` in each hierarchy it needs.
#[derive(Clone, Debug)]
pub struct UnitCgroup {
    dirs: Vec<PathBuf>,
    /// The file whose `oom_kill N` line counts the unit's OOM kills.
    oom_file: Option<PathBuf>,
    /// How the limits are enforced, in words, for the status.
    pub describe: String,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("{}: {e}", dir.join(file).display()))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

impl UnitCgroup {
    /// Creates (or reuses) the unit's cgroup and writes its limits. `Ok(None)` when the spec
    /// has no cgroup limit; an error when a limit cannot be enforced here (the status says so).
    pub fn create(cgroups: &Cgroups, unit: &str, limits: &Limits) -> Result<Option<UnitCgroup>, String> {
        if !limits.needs_cgroup() {
            return Ok(None);
        }
        let mut parts = Vec::new();
        match cgroups {
            Cgroups::None => Err("limits not enforced: this machine mounts no cgroup hierarchy (v1 or v2)".into()),
            Cgroups::V2(root) => {
                // Controllers must be enabled in every ancestor's subtree_control.
                let parent = root.join("hsu");
                mkdir(&parent)?;
                for dir in [root.as_path(), parent.as_path()] {
                    for c in ["+memory", "+cpu", "+pids"] {
                        let _ = write(dir, "cgroup.subtree_control", c);
                    }
                }
                let dir = parent.join(unit);
                mkdir(&dir)?;
                if let Some(m) = limits.memory {
                    write(&dir, "memory.max", &m.0.to_string())?;
                    let _ = write(&dir, "memory.swap.max", "0");
                    parts.push(format!("memory {}", m.0));
                }
                if let Some(c) = limits.cpu {
                    write(&dir, "cpu.max", &format!("{} 100000", u64::from(c.0) * 100))?;
                    parts.push(format!("cpu {}m", c.0));
                }
                if let Some(p) = limits.pids {
                    write(&dir, "pids.max", &p.to_string())?;
                    parts.push(format!("pids {p}"));
                }
                Ok(Some(UnitCgroup {
                    oom_file: Some(dir.join("memory.events")),
                    dirs: vec![dir],
                    describe: format!("cgroup v2: {}", parts.join(", ")),
                }))
            }
            Cgroups::V1 { memory, cpu, pids } => {
                let mut dirs = Vec::new();
                let mut oom_file = None;
                let need = |what: &str, h: &Option<PathBuf>| -> Result<PathBuf, String> {
                    let h = h.as_ref().ok_or_else(|| format!("limits not enforced: no cgroup v1 {what} controller"))?;
                    let dir = h.join("hsu").join(unit);
                    mkdir(&dir)?;
                    Ok(dir)
                };
                if let Some(m) = limits.memory {
                    let dir = need("memory", memory)?;
                    // memsw must stay >= the memory limit: lower it after, raise it before.
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", "-1");
                    write(&dir, "memory.limit_in_bytes", &m.0.to_string())?;
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", &m.0.to_string());
                    oom_file = Some(dir.join("memory.oom_control"));
                    dirs.push(dir);
                    parts.push(format!("memory {}", m.0));
                }
                if let Some(c) = limits.cpu {
                    let dir = need("cpu", cpu)?;
                    write(&dir, "cpu.cfs_period_us", "100000")?;
                    write(&dir, "cpu.cfs_quota_us", &(u64::from(c.0) * 100).to_string())?;
                    dirs.push(dir);
                    parts.push(format!("cpu {}m", c.0));
                }
                if let Some(p) = limits.pids {
                    let dir = need("pids", pids)?;
                    write(&dir, "pids.max", &p.to_string())?;
                    dirs.push(dir);
                    parts.push(format!("pids {p}"));
                }
                Ok(Some(UnitCgroup { dirs, oom_file, describe: format!("cgroup v1: {}", parts.join(", ")) }))
            }
        }
    }

    /// OOM kills counted so far in the unit's cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(f) = &self.oom_file else { return 0 };
        std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// Pids in the unit's cgroups: every process of the unit, also those that left its process
    /// group (setsid, daemonizing).
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// SIGKILLs everything in the unit's cgroups (v2: `cgroup.kill`) until they are empty or
    /// `within` has passed; true if they emptied.
    pub async fn kill_all(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tracing::warn!(?pids, "killing what is left in the unit's cgroup");
            for d in &self.dirs {
                let _ = std::fs::write(d.join("cgroup.kill"), "1");
            }
            for pid in pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            crate::process::reap_orphans();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Removes the cgroups (they must be empty: call after the group is gone).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok())
            .collect()
    }
}

/// The rlimits a spec asks for.
fn rlimits(limits: &Limits) -> Vec<(Resource, u64)> {
    let mut v = Vec::new();
    if let Some(n) = limits.open_files {
        v.push((Resource::Nofile, n));
    }
    if let Some(n) = limits.processes {
        v.push((Resource::Nproc, n));
    }
    if let Some(b) = limits.core {
        v.push((Resource::Core, b.0));
    }
    if let Some(b) = limits.address_space {
        v.push((Resource::As, b.0));
    }
    v
}

/// The user and group a unit runs as (resolved before the fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Makes the child set its rlimits, join its cgroups and then take its identity, in that order,
/// between fork and exec: the first two need root, so the switch to the unit's user comes last
/// (std's own `uid`/`gid` would switch before any `pre_exec` runs).
#[allow(unsafe_code)]
pub fn apply_in_child(
    cmd: &mut tokio::process::Command,
    limits: &Limits,
    cgroup: Option<&UnitCgroup>,
    identity: Identity,
) {
    let rl = rlimits(limits);
    let procs = cgroup.map(UnitCgroup::procs_files).unwrap_or_default();
    if rl.is_empty() && procs.is_empty() && identity.uid.is_none() && identity.gid.is_none() {
        return;
    }
    let errno = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
    // SAFETY: the closure runs in the forked child before exec. It only makes system calls
    // (setrlimit, getpid, open, write, setgroups, setgid, setuid) on data prepared before the fork, and formats the pid into
    // a stack buffer: no allocation, no lock, nothing another thread of the parent could hold.
    unsafe {
        cmd.pre_exec(move || {
            for (res, n) in &rl {
                rustix::process::setrlimit(*res, Rlimit { current: Some(*n), maximum: Some(*n) }).map_err(errno)?;
            }
            if !procs.is_empty() {
                let mut buf = [0u8; 20];
                let mut pid = rustix::process::getpid().as_raw_nonzero().get() as u64;
                let mut at = buf.len();
                loop {
                    at -= 1;
                    buf[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                for path in &procs {
                    let fd = rustix::fs::open(path.as_c_str(), rustix::fs::OFlags::WRONLY, rustix::fs::Mode::empty())
                        .map_err(errno)?;
                    rustix::io::write(&fd, &buf[at..]).map_err(errno)?;
                }
            }
            // The child has one thread, so the per-thread calls change the whole process.
            if let Some(g) = identity.gid {
                let gid = rustix::process::Gid::from_raw(g);
                rustix::thread::set_thread_groups(&[gid]).map_err(errno)?;
                rustix::thread::set_thread_gid(gid).map_err(errno)?;
            }
            if let Some(u) = identity.uid {
                rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(u)).map_err(errno)?;
            }
            Ok(())
        });
    }
}
