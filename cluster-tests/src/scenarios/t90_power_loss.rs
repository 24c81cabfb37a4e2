//! t90: power loss. Every node's data directory is on a [`crate::lazyfs::LazyFs`], which keeps
//! data written but not fsynced in memory and drops it on a power cut, as a machine losing power
//! loses its page cache (kill -9 keeps the page cache, so the other scenarios cannot catch a
//! missing fsync). Under the clients' load: a power cut on the leader, which comes back; then a
//! power cut on all three nodes at once, which come back. The checkers then require what they
//! require everywhere: the store opens, no acknowledged write is lost, the history is
//! linearizable, every increment is applied once.
//!
//! This test can fail, and does when the store does not fsync: `cluster-tests --only t90
//! --unsafe-no-fsync` starts the nodes with their log's fsync switched off, and the run reports
//! lost acknowledged writes (its output is in docs/benchmarks.md's durability section).

use anyhow::Result;

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 3, initial: 3, voters: 3, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: true };
pub const FAULT_SECS: u64 = 20;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let quarter = ctx.fault_time / 4;
    ctx.sleep(quarter).await;
    let (leader, term) = ctx.leader().await?;
    ctx.power_cut(leader, &format!("leader of term {term}"))?;
    let down = ctx.ms(1000, 3000);
    ctx.sleep(down).await;
    ctx.restart(leader)?;
    ctx.leader().await?;
    ctx.sleep(quarter).await;
    let all: Vec<usize> = (0..ctx.cluster.nodes.len()).collect();
    for &i in &all {
        ctx.power_cut(i, "all at once")?;
    }
    let down = ctx.ms(500, 2000);
    ctx.sleep(down).await;
    for &i in &all {
        ctx.restart(i)?;
    }
    ctx.leader().await?;
    ctx.sleep(quarter).await;
    Ok(())
}
