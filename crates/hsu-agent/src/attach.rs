//! Finding an unmanaged unit's process: by pid file, by a substring of its command line, or by
//! the TCP port it listens on (`/proc/net/tcp{,6}` for the socket, `/proc/PID/fd` for its owner).
//! When several processes match, the oldest wins (a server's parent rather than its workers).

use std::collections::BTreeSet;

use hsu_model::unit::Attach;

use crate::process::{stat, ProcId};

/// The process `attach` designates now, if one runs.
pub fn find(attach: &Attach) -> Option<ProcId> {
    let me = std::process::id();
    let candidates: Vec<u32> = match attach {
        Attach::PidFile(path) => {
            let pid = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
            vec![pid]
        }
        Attach::Process(needle) => {
            pids().filter(|p| *p != me && cmdline(*p).is_some_and(|c| c.contains(needle.as_str()))).collect()
        }
        Attach::Port(port) => {
            let inodes = listening_inodes(*port);
            if inodes.is_empty() {
                return None;
            }
            pids().filter(|p| owns_socket(*p, &inodes)).collect()
        }
    };
    candidates.into_iter().filter_map(ProcId::of).filter(ProcId::alive).min_by_key(|p| (p.start_ticks, p.pid))
}

/// Says how `attach` looks for the process, for status messages.
pub fn describe(attach: &Attach) -> String {
    match attach {
        Attach::PidFile(p) => format!("pid file {}", p.display()),
        Attach::Process(s) => format!("a process whose command line contains {s:?}"),
        Attach::Port(p) => format!("the process listening on TCP port {p}"),
    }
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat(*p).is_some_and(|s| s.state != 'Z'))
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// Socket inodes listening on `port` (IPv4 or IPv6, any address).
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let local_port = local.rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                if let Ok(i) = inode.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

fn owns_socket(pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).any(|target| {
        target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
            .is_some_and(|i| inodes.contains(&i))
    })
}
