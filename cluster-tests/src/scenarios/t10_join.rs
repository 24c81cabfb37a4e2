//! t10: three nodes form the cluster through the real join flow on three hosts (init on h1,
//! `hsu node join` with the token on h2 and h3); a fourth joins while the clients run and
//! becomes a learner (three voters are the target).

use anyhow::{bail, Result};

use super::DEFAULT_TIMING;
use crate::cluster::Spec;
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 4, initial: 3, voters: 3, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 15;

fn roles(s: &hsu_proto::v1::StatusResponse) -> Vec<(String, String)> {
    s.members.iter().map(|m| (m.name.clone(), m.role.clone())).collect()
}

pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let s = ctx.cluster.status_any().await.map_err(anyhow::Error::msg)?;
    let voters = s.members.iter().filter(|m| m.role == "voter").count();
    if voters != 3 {
        bail!("after three joins the cluster has {voters} voters: {:?}", roles(&s));
    }
    ctx.log(format!("three voters: {:?}; h4 joins with --role auto", roles(&s)));
    ctx.cluster.join(3, "auto").await?;
    let s = ctx.cluster.status_any().await.map_err(anyhow::Error::msg)?;
    match s.members.iter().find(|m| m.name == "h4") {
        Some(m) if m.role == "learner" => ctx.log(format!("h4 is a learner: {:?}", roles(&s))),
        other => bail!("h4 should be a learner (3 voters already), found {other:?}"),
    }
    ctx.sleep(ctx.fault_time).await;
    Ok(())
}
