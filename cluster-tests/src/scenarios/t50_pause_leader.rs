//! t50: the leader is paused (SIGSTOP) for longer than the election timeout, so the others
//! elect a new leader; then it is resumed (SIGCONT) and must step down. Repeated.

use std::time::Instant;

use anyhow::Result;

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 3, initial: 3, voters: 3, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 30;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    for _ in 0..100 {
        if Instant::now() >= end {
            break;
        }
        let (leader, term) = ctx.leader().await?;
        ctx.pause(leader, &format!("leader of term {term}"))?;
        // A follower campaigns after 0.75-1 s of silence (DEFAULT_TIMING): 3-5 s is well past it.
        let hold = ctx.ms(3000, 5000);
        ctx.sleep(hold).await;
        ctx.resume(leader)?;
        let calm = ctx.ms(2000, 4000);
        ctx.sleep(calm).await;
    }
    Ok(())
}
