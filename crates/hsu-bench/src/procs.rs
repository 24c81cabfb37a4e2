//! The processes a benchmark starts. Each runs in its own process group, and the whole group is
//! killed when its handle is dropped, so an error, a panic or Ctrl-C leaves nothing running.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};
use rustix::process::{kill_process_group, Pid, Signal};

/// One child process in its own process group, with its output appended to a log file.
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
        let out = File::options().create(true).append(true).open(&log).with_context(|| log.display().to_string())?;
        let child = Command::new(program)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc { name: name.to_string(), log, child: Some(child) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it has not been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with the end of the log when the process has exited by itself.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else { bail!("{} was killed", self.name) };
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}); the end of its log:\n{}", self.name, self.log_tail(30));
        }
        Ok(())
    }

    /// SIGKILL to the process group, then reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pgid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process_group(pgid, Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Ports handed out in this run: a port is released by the probe before the server binds it,
/// so the next probe must not hand it out again.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A 127.0.0.1 port free for both TCP and UDP (HSU's API is TCP, its node-to-node QUIC is UDP).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        if !given.contains(&addr.port()) && UdpSocket::bind(addr).is_ok() {
            given.insert(addr.port());
            return Ok(addr);
        }
    }
    bail!("no 127.0.0.1 port free for both TCP and UDP after 200 tries")
}

/// The resident set size of a process in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The sum of the RSS of `pids`, in KiB; a process that is gone counts 0.
pub fn rss_sum_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p)).sum()
}

/// An executable called `name` in a directory of $PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
