//! Test hosts as network namespaces: `hsuct-hub` holds a bridge; each host `hsuct-hN` is joined
//! to it by a veth pair and has its own address in 10.77.0.0/24; the root namespace (where the
//! test process and its clients run) is joined to the bridge by one more veth pair and has
//! 10.77.0.254. Nothing here leaves the machine: the subnet exists only on these links.
//!
//! [`Net`] removes everything it created when dropped (also while unwinding from a panic), and
//! [`Net::create`] first removes leftovers with the same name prefix from an earlier run that was
//! killed before it could clean up.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Every namespace, link and directory this harness creates starts with this.
pub const PREFIX: &str = "hsuct";
pub const HUB: &str = "hsuct-hub";
/// The root namespace's end of the link into the hub.
pub const ROOT_LINK: &str = "hsuct-root";
pub const ROOT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
const SUBNET: &str = "10.77.0.0/24";

/// One test host: a namespace with one interface and one address.
#[derive(Clone, Debug)]
pub struct Host {
    /// `h1`, `h2`, ... (also the node's name).
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The hosts and their links; removed when dropped.
pub struct Net {
    pub hosts: Vec<Host>,
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command whose failure does not matter (removing what may not exist).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Stops at once, saying how to run the suite, unless this process is root and has `ip`/`nft`.
pub fn require_root() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u.to_string()))
        .unwrap_or_default();
    if uid != "0" {
        bail!(
            "cluster-tests creates network namespaces, veth pairs and nftables rules, which needs root \
             (effective uid is {uid:?}).\nRun it as root: `sudo just cluster-test`, or \
             `cargo build -p hsu-cli --features failpoints && sudo target/debug/cluster-tests` \
             (build it first with `cargo build -p cluster-tests`)."
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("`{tool}` is missing: install it with `apt-get install -y {package}`");
        }
    }
    Ok(())
}

/// Removes namespaces and links named with [`PREFIX`] (left by a run that was killed), after
/// killing the processes still running inside those namespaces.
pub fn clean_leftovers() {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(String::from)
        .collect();
    for ns in &ours {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            run_quiet("kill", &["-CONT", pid]);
            run_quiet("kill", &["-KILL", pid]);
        }
    }
    for ns in &ours {
        run_quiet("ip", &["netns", "delete", ns]);
    }
    run_quiet("ip", &["link", "delete", ROOT_LINK]);
}

impl Net {
    /// Creates `n` hosts (`h1` = 10.77.0.11, `h2` = 10.77.0.12, ...) behind one bridge, and the
    /// root namespace's link to them.
    pub fn create(n: usize) -> Result<Net> {
        assert!((1..=9).contains(&n), "1 to 9 hosts");
        clean_leftovers();
        let existing = run("ip", &["-4", "route", "show", "to", "match", "10.77.0.1"]).unwrap_or_default();
        if existing.lines().any(|l| !l.starts_with("default")) {
            bail!("the root namespace already routes {SUBNET} ({}); refusing to add a second route", existing.trim());
        }
        // From here on, Drop removes whatever was made, also on an error part way.
        let mut net = Net { hosts: Vec::new() };
        run("ip", &["netns", "add", HUB])?;
        let hub = |args: &[&str]| -> Result<String> {
            let mut all = vec!["-n", HUB];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        hub(&["link", "set", "lo", "up"])?;
        hub(&["link", "add", "br0", "type", "bridge"])?;
        hub(&["link", "set", "br0", "up"])?;
        for i in 1..=n {
            let host = Host {
                name: format!("h{i}"),
                ns: format!("{PREFIX}-h{i}"),
                ip: Ipv4Addr::new(10, 77, 0, 10 + i as u8),
            };
            run("ip", &["netns", "add", &host.ns])?;
            net.hosts.push(host.clone());
            let port = format!("p{i}");
            hub(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.ns])?;
            hub(&["link", "set", &port, "master", "br0"])?;
            hub(&["link", "set", &port, "up"])?;
            let inside = |args: &[&str]| -> Result<String> {
                let mut all = vec!["-n", host.ns.as_str()];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            inside(&["link", "set", "lo", "up"])?;
            inside(&["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
        }
        run("ip", &["link", "add", ROOT_LINK, "type", "veth", "peer", "name", "proot", "netns", HUB])?;
        hub(&["link", "set", "proot", "master", "br0"])?;
        hub(&["link", "set", "proot", "up"])?;
        run("ip", &["addr", "add", &format!("{ROOT_ADDR}/24"), "dev", ROOT_LINK])?;
        run("ip", &["link", "set", ROOT_LINK, "up"])?;
        net.check_routes()?;
        Ok(net)
    }

    /// The root namespace must send the subnet through its own link (the clients run there).
    fn check_routes(&self) -> Result<()> {
        for h in &self.hosts {
            let route = run("ip", &["-4", "route", "get", &h.ip.to_string()])?;
            if !route.contains(ROOT_LINK) {
                bail!("the root namespace would not reach {} ({}) through {ROOT_LINK}: {}", h.name, h.ip, route.trim());
            }
        }
        Ok(())
    }

    /// Waits until the link layer works both ways between the root namespace and every host
    /// (bridge ports take a moment to forward): a TCP connect from root to a listener in each
    /// host, bounded in time.
    pub fn wait_reachable(&self, timeout: Duration) -> Result<()> {
        for h in &self.hosts {
            let start = Instant::now();
            // `nc` may be missing; a refused connection proves the path as well as an accepted one.
            loop {
                let addr = std::net::SocketAddr::from((h.ip, 9));
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(e) if start.elapsed() > timeout => {
                        bail!("the root namespace cannot reach {} at {} after {timeout:?}: {e}", h.name, h.ip)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let pids = run("ip", &["netns", "pids", &h.ns]).unwrap_or_default();
            for pid in pids.split_whitespace() {
                run_quiet("kill", &["-CONT", pid]);
                run_quiet("kill", &["-KILL", pid]);
            }
            run_quiet("ip", &["netns", "delete", &h.ns]);
        }
        run_quiet("ip", &["netns", "delete", HUB]);
        run_quiet("ip", &["link", "delete", ROOT_LINK]);
    }
}
