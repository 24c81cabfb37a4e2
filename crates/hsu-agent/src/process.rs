//! Processes as the agent sees them: spawning a unit in its own process group with its logs as
//! files, signalling the whole group, and reading `/proc` to tell a live process from a zombie,
//! a reused pid from the process the agent started, and to find a group's members.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Identifies one process across agent restarts: a pid plus its start time (clock ticks after
/// boot, field 22 of `/proc/PID/stat`), so a pid the kernel gave to another process is not
/// mistaken for the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub start_ticks: u64,
    pub rss_pages: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/stat`; `None` when there is no such process.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
        rss_pages: f.get(21)?.parse().ok()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

impl ProcId {
    /// The process with this pid, as it is now.
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|s| ProcId { pid, start_ticks: s.start_ticks })
    }

    /// True while this very process runs (not a zombie, not a reused pid).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && s.state != 'Z' && s.state != 'X')
    }
}

/// Every process of the system: pid → stat.
fn all() -> BTreeMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
        .collect()
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all().into_iter().filter(|(_, s)| s.pgrp == pgid && s.state != 'Z' && s.state != 'X').map(|(p, _)| p).collect()
}

/// Live members of group `pgid` that carry `HSU_UNIT=unit` in their environment: what is left of
/// a unit whose main process died while no agent watched. The environment check keeps a group id
/// that the kernel reused for unrelated processes from being taken for the unit.
pub fn unit_members(pgid: u32, unit: &str) -> Vec<u32> {
    let needle = format!("HSU_UNIT={unit}");
    group_members(pgid)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Every process of group `pgid`, zombies included (for the tests' "nothing left behind").
pub fn group_members_with_zombies(pgid: u32) -> Vec<(u32, char)> {
    all().into_iter().filter(|(_, s)| s.pgrp == pgid).map(|(p, s)| (p, s.state)).collect()
}

/// The signal a spec names.
pub fn signal_of(s: hsu_model::unit::StopSignal) -> Signal {
    use hsu_model::unit::StopSignal as S;
    match s {
        S::Term => Signal::TERM,
        S::Int => Signal::INT,
        S::Hup => Signal::HUP,
        S::Quit => Signal::QUIT,
        S::Usr1 => Signal::USR1,
        S::Usr2 => Signal::USR2,
        S::Kill => Signal::KILL,
    }
}

/// Sends `signal` to every process of group `pgid`. A group already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) -> std::io::Result<()> {
    let Some(pid) = Pid::from_raw(pgid as i32) else { return Ok(()) };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until group `pgid` has no live member and no zombie this process must reap, up to
/// `within`; true if it emptied. Orphans re-parented here are reaped on the way.
pub async fn wait_group_empty(pgid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let me = std::process::id();
    loop {
        reap_orphans();
        let left = all().into_values().any(|s| s.pgrp == pgid && (s.state != 'Z' && s.state != 'X' || s.ppid == me));
        if !left {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes this process the reaper of its orphaned descendants (a unit's grandchildren whose parent
/// died), so they do not stay zombies when init does not reap. Linux only; harmless twice.
pub fn become_subreaper() {
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!("cannot become the child subreaper ({e}); orphans of units are left to init");
    }
}

/// The direct children whose exit status belongs to someone else (tokio reaps the processes the
/// agent spawned and waits on). Process-wide, like the subreaper role: every agent of the process
/// (tests run several) spawns and reaps under this one lock, so a child is registered before a
/// reaper can see it exit.
static OWN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn own() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    OWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns `cmd` and registers its pid as owned, atomically with respect to [`reap_orphans`].
pub fn spawn_owned(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut own = own();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        own.insert(pid);
    }
    Ok(child)
}

/// Releases a pid registered by [`spawn_owned`] once its status was read, or when its `Child` is
/// dropped without waiting (then the reaper takes care of it).
pub fn disown(pid: u32) {
    own().remove(&pid);
}

/// Reaps zombies that are children of this process and not owned: orphans of units re-parented
/// here by [`become_subreaper`], and units whose `Child` was dropped.
pub fn reap_orphans() {
    let own = own();
    let me = std::process::id();
    for (pid, s) in all() {
        if s.ppid == me && s.state == 'Z' && !own.contains(&pid) {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// Opens a log file for appending (created 0640 if missing). With `O_APPEND` every write lands
/// at the current end, so the agent can truncate the file under a running process.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// A tokio command for the unit: its own process group (so it outlives the agent and is
/// signalled as a whole), stdin closed, stdout/stderr appended to the given files.
pub fn command(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &Path,
    stdout: File,
    stderr: File,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        // The agent may exit (or be killed) while units run on: never kill them on drop.
        .kill_on_drop(false);
    cmd
}

/// Clock ticks per second, for CPU time from `/proc/PID/stat`.
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The page size, for RSS from `/proc/PID/stat`.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Resolves a user (name or uid) to its uid and primary gid, from `/etc/passwd`.
pub fn lookup_user(user: &str) -> Result<(u32, u32), crate::Error> {
    let text = std::fs::read_to_string("/etc/passwd").map_err(crate::Error::io("/etc/passwd"))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && (f[0] == user || f[2] == user) {
            let bad = |what: &str| crate::Error::Account(format!("/etc/passwd: bad {what} for {user}"));
            let uid = f[2].parse().map_err(|_| bad("uid"))?;
            let gid = f[3].parse().map_err(|_| bad("gid"))?;
            return Ok((uid, gid));
        }
    }
    match user.parse() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(crate::Error::Account(format!("user {user:?} is not in /etc/passwd"))),
    }
}

/// Resolves a group (name or gid) from `/etc/group`.
pub fn lookup_group(group: &str) -> Result<u32, crate::Error> {
    let text = std::fs::read_to_string("/etc/group").map_err(crate::Error::io("/etc/group"))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && (f[0] == group || f[2] == group) {
            return f[2].parse().map_err(|_| crate::Error::Account(format!("/etc/group: bad gid for {group}")));
        }
    }
    group.parse().map_err(|_| crate::Error::Account(format!("group {group:?} is not in /etc/group")))
}
