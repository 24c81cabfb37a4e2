//! t70: a random mix of all the faults above on five voters, drawn from the seed: kill the
//! leader or any node, pause the leader, isolate the leader, minority/majority splits, a bridge,
//! 20% loss, a node restarted with 50 ms added to its peer messages.

use anyhow::Result;

use super::SLOW_TIMING;
use crate::cluster::Spec;
use crate::nemesis::{self, Ctx};

pub const SPEC: Spec =
    Spec { hosts: 5, initial: 5, voters: 5, timing: SLOW_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 60;

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    nemesis::random_mix(ctx).await
}
