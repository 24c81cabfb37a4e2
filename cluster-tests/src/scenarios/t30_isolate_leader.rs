//! t30: the leader is cut off from every other node (nftables drop rules in the hosts), then
//! healed, repeatedly.

use std::time::Instant;

use anyhow::Result;

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 3, initial: 3, voters: 3, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 40;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    for _ in 0..200 {
        if Instant::now() >= end {
            break;
        }
        let (leader, term) = ctx.leader().await?;
        ctx.isolate(leader, &format!("leader of term {term}"))?;
        let hold = ctx.ms(3000, 6000);
        ctx.sleep(hold).await;
        ctx.heal_network()?;
        let calm = ctx.ms(2000, 4000);
        ctx.sleep(calm).await;
    }
    Ok(())
}
