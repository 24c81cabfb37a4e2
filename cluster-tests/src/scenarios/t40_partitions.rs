//! t40: random partitions of five voters: a minority (one or two nodes) against the majority,
//! and now and then a bridge node that sees both sides of a split; each held for 3-6 s, then
//! healed for 1-3 s.

use std::time::Instant;

use anyhow::Result;
use rand::Rng;

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 5, initial: 5, voters: 5, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 60;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    for _ in 0..200 {
        if Instant::now() >= end {
            break;
        }
        if ctx.rng.gen_range(0..4) == 0 {
            ctx.split_bridge()?;
        } else {
            ctx.split_majority_minority()?;
        }
        let hold = ctx.ms(3000, 6000);
        ctx.sleep(hold).await;
        ctx.heal_network()?;
        let calm = ctx.ms(1000, 3000);
        ctx.sleep(calm).await;
    }
    Ok(())
}
