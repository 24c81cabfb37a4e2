//! nftables rules inside the host namespaces: one table `inet hsuct` per host with an input and
//! an output chain. Partitions are `drop` rules between address pairs; packet loss is a
//! `numgen random mod 100 < N drop` rule on what a host receives from the other hosts (so each
//! direction of each link loses N%). The root namespace's address (the clients) is never
//! dropped: like Jepsen's clients, ours see every node.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::net::{Host, ROOT_ADDR};

const TABLE: &str = "table inet hsuct";

/// Runs an nft script inside `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {ns} failed: {}\nscript:\n{script}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Creates the (empty) table and chains in every host.
pub fn setup(hosts: &[Host]) -> Result<()> {
    for h in hosts {
        let script = format!(
            "{TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n  \
             chain output {{ type filter hook output priority 0; policy accept; }}\n}}\n"
        );
        nft(&h.ns, &script)?;
    }
    Ok(())
}

/// What the network does, as a whole: which address pairs cannot talk, and how much is lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Unordered pairs of hosts (indexes) that cannot reach each other.
    pub blocked: Vec<(usize, usize)>,
    /// Percent of packets between hosts dropped at random (0 = none).
    pub loss: u8,
}

impl Rules {
    /// Blocks every pair of hosts that are in different groups; hosts in no group keep all their
    /// links (a bridge node sees both sides).
    pub fn partition(groups: &[Vec<usize>]) -> Rules {
        let mut blocked = Vec::new();
        for (gi, a) in groups.iter().enumerate() {
            for b in &groups[gi + 1..] {
                for &x in a {
                    for &y in b {
                        blocked.push((x.min(y), x.max(y)));
                    }
                }
            }
        }
        blocked.sort_unstable();
        blocked.dedup();
        Rules { blocked, loss: 0 }
    }
}

/// Replaces the rules of every host with `rules` (an empty `Rules` heals everything).
pub fn apply(hosts: &[Host], rules: &Rules) -> Result<()> {
    for (i, h) in hosts.iter().enumerate() {
        let mut script = String::from("flush chain inet hsuct input\nflush chain inet hsuct output\n");
        let peers: Vec<Ipv4Addr> = rules
            .blocked
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .map(|j| hosts[j].ip)
            .collect();
        for ip in peers {
            script += &format!("add rule inet hsuct input ip saddr {ip} drop\n");
            script += &format!("add rule inet hsuct output ip daddr {ip} drop\n");
        }
        if rules.loss > 0 {
            script += &format!(
                "add rule inet hsuct input ip saddr 10.77.0.0/24 ip saddr != {ROOT_ADDR} numgen random mod 100 < {} drop\n",
                rules.loss
            );
        }
        nft(&h.ns, &script)?;
    }
    Ok(())
}
