//! t20: the leader is killed (-9) and restarted (`hsu node run --data-dir`), in a loop.

use std::time::Instant;

use anyhow::Result;

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 3, initial: 3, voters: 3, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 60;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    for _ in 0..200 {
        if Instant::now() >= end {
            break;
        }
        let (leader, term) = ctx.leader().await?;
        ctx.kill(leader, &format!("leader of term {term}"));
        let down = ctx.ms(1000, 4000);
        ctx.sleep(down).await;
        ctx.restart(leader)?;
        let up = ctx.ms(2000, 4000);
        ctx.sleep(up).await;
    }
    Ok(())
}
