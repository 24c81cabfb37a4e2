//! t80: a rolling update under random partitions and leader kills. Five voters run a deployment
//! of five replicas; revision 2 is applied as the faults start (each step waits `minReady`, so the
//! rollout spans many faults), and after healing the cluster must converge to exactly five ready
//! instances of revision 2: no other instance records, and exactly those five units running on
//! the hosts (a stale instance left on a node that was cut off must have been stopped).
//!
//! The units are `sh` loops that end by themselves once the run's data directory is removed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use hsu_proto::v1 as pb;
use rand::Rng;

use super::DEFAULT_TIMING;
use crate::checks::Check;
use crate::cluster::{data_root, Spec};
use crate::nemesis::Ctx;

pub const SPEC: Spec =
    Spec { hosts: 5, initial: 5, voters: 5, timing: DEFAULT_TIMING, failpoints: None, lazy_disks: false };
pub const FAULT_SECS: u64 = 45;

const REPLICAS: usize = 5;

fn marker() -> std::path::PathBuf {
    data_root().join("units-alive")
}

fn spec(version: u32) -> String {
    let m = marker().display().to_string();
    format!(
        r#"apiVersion: hsu/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {REPLICAS}
  template:
    command: ["sh", "-c", "while [ -e {m} ]; do sleep 0.3; done"]
    env: {{VERSION: "{version}"}}
    readiness: {{exec: {{command: [test, -e, "{m}"]}}, period: 300ms}}
    stop: {{grace: 1s}}
  strategy: {{maxSurge: 1, maxUnavailable: 0, minReady: 4s, progressDeadline: 10m}}
"#
    )
}

async fn apply(ctx: &Ctx, text: String, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        for endpoint in ctx.cluster.endpoints() {
            let req = pb::ApplyRequest {
                files: vec![pb::SourceFile { name: "web.yaml".into(), content: text.clone() }],
                dry_run: false,
            };
            match hsu_sdk::client::connect_deployments(&ctx.cluster.admin, Some(&endpoint)).await {
                Ok(mut c) => match tokio::time::timeout(Duration::from_secs(5), c.apply(req)).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(s)) => last = format!("{endpoint}: {}", s.message()),
                    Err(_) => last = format!("{endpoint}: apply timed out"),
                },
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("apply did not succeed within {within:?}: {last}"))
}

async fn instances(ctx: &Ctx) -> Result<Vec<pb::InstanceInfo>, String> {
    let mut last = String::new();
    for endpoint in ctx.cluster.endpoints() {
        let req = pb::ListRequest { namespace: "default".into(), name: "web".into() };
        match hsu_sdk::client::connect_deployments(&ctx.cluster.admin, Some(&endpoint)).await {
            Ok(mut c) => match tokio::time::timeout(Duration::from_secs(3), c.list_instances(req)).await {
                Ok(Ok(r)) => return Ok(r.into_inner().instances),
                Ok(Err(s)) => last = format!("{endpoint}: {}", s.message()),
                Err(_) => last = format!("{endpoint}: timed out"),
            },
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The units running on this machine (every host shares the root's process table), by the
/// `HSU_UNIT` in their environment.
fn running_units() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            for kv in env.split(|b| *b == 0) {
                if let Some(name) = kv.strip_prefix(b"HSU_UNIT=web-") {
                    out.insert(format!("web-{}", String::from_utf8_lossy(name)));
                }
            }
        }
    }
    out
}

/// Before the faults: revision 1 running and ready everywhere, then revision 2 applied.
pub async fn prepare(ctx: &mut Ctx) -> Result<(), String> {
    std::fs::write(marker(), b"").map_err(|e| e.to_string())?;
    apply(ctx, spec(1), Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = instances(ctx).await.unwrap_or_default();
        let ready = list.iter().filter(|i| i.ready && i.revision == 1).count();
        if ready == REPLICAS {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("revision 1 not ready within 60 s: {ready}/{REPLICAS}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ctx.log(format!("revision 1: {REPLICAS} instances ready; applying revision 2"));
    apply(ctx, spec(2), Duration::from_secs(30)).await
}

/// Partitions (a minority cut off, or the leader isolated) and leader kills, one at a time.
pub async fn faults(ctx: &mut Ctx) -> Result<()> {
    let end = Instant::now() + ctx.fault_time;
    for _ in 0..200 {
        if Instant::now() >= end {
            break;
        }
        if let Ok(list) = instances(ctx).await {
            let new = list.iter().filter(|i| i.revision == 2).count();
            let ready = list.iter().filter(|i| i.revision == 2 && i.ready).count();
            ctx.log(format!("rollout: {ready} ready of {new} instances of revision 2, {} in total", list.len()));
        }
        let hold = ctx.ms(2000, 5000);
        match ctx.rng.gen_range(0..3) {
            0 => {
                let (i, _) = ctx.leader().await?;
                ctx.kill(i, "leader");
                ctx.sleep(hold).await;
                ctx.restart(i)?;
            }
            1 => {
                let (i, _) = ctx.leader().await?;
                ctx.isolate(i, "leader")?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
            _ => {
                ctx.split_majority_minority()?;
                ctx.sleep(hold).await;
                ctx.heal_network()?;
            }
        }
        let calm = ctx.ms(1000, 3000);
        ctx.sleep(calm).await;
    }
    Ok(())
}

/// After healing: exactly `REPLICAS` ready instances of revision 2 and exactly their units
/// running, within 120 s.
pub async fn converged(ctx: &mut Ctx) -> Check {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        match instances(ctx).await {
            Ok(list) => {
                let names: BTreeSet<String> = list.iter().map(|i| i.name.clone()).collect();
                let good = list.len() == REPLICAS
                    && list.iter().all(|i| i.revision == 2 && i.ready && i.desired == "run" && i.state == "running");
                let running = running_units();
                if good && running == names {
                    let nodes: BTreeSet<&str> = list.iter().map(|i| i.node.as_str()).collect();
                    ctx.log(format!(
                        "converged after {:.1}s: {REPLICAS} ready instances of revision 2 on {} nodes",
                        start.elapsed().as_secs_f64(),
                        nodes.len()
                    ));
                    return Check::pass(format!("{:.1}s", start.elapsed().as_secs_f64()));
                }
                last = format!(
                    "instances: {:?}; running units: {running:?}",
                    list.iter()
                        .map(|i| (&i.name, i.revision, &i.state, i.ready, &i.desired, &i.node))
                        .collect::<Vec<_>>()
                );
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Check::fail("no", format!("not converged within 120 s: {last}"))
}
