//! t60: every node runs with the `quic-send` failpoint adding 50 ms to every message it sends
//! to a peer (FAILPOINTS=quic-send=return(50), from the start), and for the fault period every
//! link between hosts drops 20% of its packets (nftables `numgen random`). The delay stays on
//! when the loss ends: the cluster must serve writes within 5 s even so.

use anyhow::Result;

use super::SLOW_TIMING;
use crate::cluster::Spec;
use crate::nemesis::{Ctx, DELAY_50MS};

pub const SPEC: Spec =
    Spec { hosts: 3, initial: 3, voters: 3, timing: SLOW_TIMING, failpoints: Some(DELAY_50MS), lazy_disks: false };
pub const FAULT_SECS: u64 = 30;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    ctx.loss(20)?;
    ctx.sleep(ctx.fault_time).await;
    ctx.heal_network()
}
