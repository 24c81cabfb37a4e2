//! Faults: kill -9 and restart, SIGSTOP/SIGCONT, partitions (leader isolated, majority/minority,
//! a bridge node that sees both sides), packet loss, a node slowed by the `quic-send` failpoint,
//! and a schedule that mixes them at random from a seed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::Cluster;
use crate::nft::{self, Rules};

/// The failpoint setting that adds 50 ms to every message a node sends to a peer.
pub const DELAY_50MS: &str = "quic-send=return(50)";

/// What a scenario's fault schedule works with.
pub struct Ctx {
    pub name: &'static str,
    pub cluster: Cluster,
    pub rng: SmallRng,
    /// How long the scenario injects faults.
    pub fault_time: Duration,
    pub epoch: Instant,
    pub events: Vec<String>,
}

impl Ctx {
    /// Logs a nemesis event (stderr, and kept for the failure report).
    pub fn log(&mut self, what: impl AsRef<str>) {
        let line = format!("[{} +{:.1}s] {}", self.name, self.epoch.elapsed().as_secs_f64(), what.as_ref());
        eprintln!("{line}");
        self.events.push(line);
    }

    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// A random duration in `[lo, hi]` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(lo..=hi))
    }

    /// The current leader (bounded wait).
    pub async fn leader(&mut self) -> Result<(usize, u64)> {
        let l = self.cluster.wait_leader(Duration::from_secs(15)).await;
        l.context("no node reported a leader within 15 s")
    }

    fn name_of(&self, i: usize) -> String {
        self.cluster.nodes[i].host.name.clone()
    }

    /// Members that have joined (indexes).
    pub fn members(&self) -> Vec<usize> {
        (0..self.cluster.nodes.len()).filter(|&i| self.cluster.nodes[i].id != 0).collect()
    }

    pub fn kill(&mut self, i: usize, why: &str) {
        self.log(format!("kill -9 {} ({why})", self.name_of(i)));
        self.cluster.kill(i);
    }

    /// A power cut on host `i` (its node dies, its disk forgets what was not fsynced).
    pub fn power_cut(&mut self, i: usize, why: &str) -> Result<()> {
        let lost = self.cluster.power_cut(i)?;
        self.log(format!("power cut on {} ({why}): {lost} bytes not fsynced are gone", self.name_of(i)));
        Ok(())
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.log(format!("restart {}", self.name_of(i)));
        self.cluster.restart(i)
    }

    pub fn pause(&mut self, i: usize, why: &str) -> Result<()> {
        self.log(format!("SIGSTOP {} ({why})", self.name_of(i)));
        self.cluster.pause(i)
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.log(format!("SIGCONT {}", self.name_of(i)));
        self.cluster.resume(i)
    }

    pub fn rules(&mut self, rules: &Rules, what: &str) -> Result<()> {
        self.log(what);
        nft::apply(&self.cluster.net.hosts, rules)
    }

    /// Cuts `i` off from every other host.
    pub fn isolate(&mut self, i: usize, why: &str) -> Result<()> {
        let others: Vec<usize> = self.members().into_iter().filter(|&j| j != i).collect();
        let what = format!("isolate {} ({why})", self.name_of(i));
        self.rules(&Rules::partition(&[vec![i], others]), &what)
    }

    /// A random minority (1..n/2 hosts) cut off from the rest.
    pub fn split_majority_minority(&mut self) -> Result<()> {
        let mut all = self.members();
        all.shuffle(&mut self.rng);
        let minority_size = self.rng.gen_range(1..=(all.len() - 1) / 2);
        let minority = all[..minority_size].to_vec();
        let majority = all[minority_size..].to_vec();
        let what = format!("partition minority {} | majority {}", self.names(&minority), self.names(&majority));
        self.rules(&Rules::partition(&[minority, majority]), &what)
    }

    /// Two sides that cannot talk, and one bridge node that talks to both.
    pub fn split_bridge(&mut self) -> Result<()> {
        let mut all = self.members();
        all.shuffle(&mut self.rng);
        let bridge = all.pop().expect("at least 3 nodes");
        let half = all.len() / 2;
        let (a, b) = (all[..half].to_vec(), all[half..].to_vec());
        let what = format!("bridge {} between {} | {}", self.name_of(bridge), self.names(&a), self.names(&b));
        self.rules(&Rules::partition(&[a, b]), &what)
    }

    pub fn loss(&mut self, percent: u8) -> Result<()> {
        self.rules(&Rules { blocked: vec![], loss: percent }, &format!("{percent}% packet loss on every link"))
    }

    pub fn heal_network(&mut self) -> Result<()> {
        self.rules(&Rules::default(), "heal the network")
    }

    /// Restarts node `i` (kill -9 first) with FAILPOINTS set to `failpoints` (None: without).
    pub fn restart_with_failpoints(&mut self, i: usize, failpoints: Option<&str>) -> Result<()> {
        self.kill(i, &format!("to restart it with FAILPOINTS={}", failpoints.unwrap_or("<none>")));
        self.cluster.nodes[i].failpoints = failpoints.map(String::from);
        self.restart(i)
    }

    pub fn names(&self, v: &[usize]) -> String {
        v.iter().map(|&i| self.name_of(i)).collect::<Vec<_>>().join(",")
    }
}

/// One step of the random schedule.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    KillLeader,
    KillAny,
    PauseLeader,
    IsolateLeader,
    MajorityMinority,
    Bridge,
    Loss,
    SlowNode,
}

const ALL: [Fault; 8] = [
    Fault::KillLeader,
    Fault::KillAny,
    Fault::PauseLeader,
    Fault::IsolateLeader,
    Fault::MajorityMinority,
    Fault::Bridge,
    Fault::Loss,
    Fault::SlowNode,
];

/// Faults drawn at random from the seed, one at a time: each held for 2-6 s, then undone, then
/// 1-3 s of calm, until `ctx.fault_time` has passed.
pub async fn random_mix(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    let mut steps = 0;
    while Instant::now() < end && steps < 1000 {
        steps += 1;
        let fault = *ALL.choose(&mut ctx.rng).expect("faults");
        let hold = ctx.ms(2000, 6000);
        match fault {
            Fault::KillLeader | Fault::KillAny => {
                let i = match fault {
                    Fault::KillLeader => ctx.leader().await?.0,
                    _ => *ctx.members().choose(&mut ctx.rng).expect("members"),
                };
                ctx.kill(i, &format!("{fault:?}"));
                ctx.sleep(hold).await;
                ctx.restart(i)?;
            }
            Fault::PauseLeader => {
                let (i, _) = ctx.leader().await?;
                ctx.pause(i, "leader")?;
                ctx.sleep(hold).await;
                ctx.resume(i)?;
            }
            Fault::IsolateLeader => {
                let (i, _) = ctx.leader().await?;
                ctx.isolate(i, "leader")?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
            Fault::MajorityMinority => {
                ctx.split_majority_minority()?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
            Fault::Bridge => {
                ctx.split_bridge()?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
            Fault::Loss => {
                ctx.loss(20)?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
            Fault::SlowNode => {
                let i = *ctx.members().choose(&mut ctx.rng).expect("members");
                ctx.restart_with_failpoints(i, Some(DELAY_50MS))?;
                ctx.sleep(hold).await;
                ctx.restart_with_failpoints(i, None)?;
            }
        }
        let calm = ctx.ms(1000, 3000);
        ctx.sleep(calm).await;
    }
    Ok(())
}
