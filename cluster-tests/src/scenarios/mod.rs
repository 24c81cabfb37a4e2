//! The scenarios and the driver every one of them goes through: start the cluster, start the
//! clients and the leader poller, run the scenario's faults, heal everything, measure how long
//! until a write succeeds, let the clients run a little longer on the healed cluster, stop
//! them, read the set back, and run the checkers.

pub mod t10_join;
pub mod t20_kill_leader;
pub mod t30_isolate_leader;
pub mod t40_partitions;
pub mod t50_pause_leader;
pub mod t60_loss_delay;
pub mod t70_random_mix;
pub mod t80_rollout;
pub mod t90_power_loss;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;

use crate::checks::{self, Check, LeaderPoller};
use crate::cluster::{Cluster, Spec, Timing};
use crate::nemesis::Ctx;
use crate::workload::{self, Clients, WorkloadConfig};

/// HSU's defaults (a follower campaigns after 0.75-1 s without a leader).
pub const DEFAULT_TIMING: Timing = Timing { heartbeat: "150ms", election_timeout: "250ms" };
/// For runs with loss and added delay: an append gets one heartbeat interval to complete.
pub const SLOW_TIMING: Timing = Timing { heartbeat: "300ms", election_timeout: "600ms" };

/// After the faults stop, a write must succeed within this.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(5);
/// Clients and pollers stop by themselves after this, whatever happens.
const MAX_RUN: Duration = Duration::from_secs(600);
/// A scenario whose clients got fewer answers than this proves nothing, and fails.
const MIN_ACKED: usize = 100;

pub const NAMES: [&str; 9] = ["t10", "t20", "t30", "t40", "t50", "t60", "t70", "t80", "t90"];

pub fn spec(name: &str) -> (Spec, u64) {
    match name {
        "t10" => (t10_join::SPEC, t10_join::FAULT_SECS),
        "t20" => (t20_kill_leader::SPEC, t20_kill_leader::FAULT_SECS),
        "t30" => (t30_isolate_leader::SPEC, t30_isolate_leader::FAULT_SECS),
        "t40" => (t40_partitions::SPEC, t40_partitions::FAULT_SECS),
        "t50" => (t50_pause_leader::SPEC, t50_pause_leader::FAULT_SECS),
        "t60" => (t60_loss_delay::SPEC, t60_loss_delay::FAULT_SECS),
        "t70" => (t70_random_mix::SPEC, t70_random_mix::FAULT_SECS),
        "t80" => (t80_rollout::SPEC, t80_rollout::FAULT_SECS),
        "t90" => (t90_power_loss::SPEC, t90_power_loss::FAULT_SECS),
        other => panic!("unknown scenario {other}"),
    }
}

async fn faults(ctx: &mut Ctx) -> Result<()> {
    match ctx.name {
        "t10" => t10_join::faults(ctx).await,
        "t20" => t20_kill_leader::faults(ctx).await,
        "t30" => t30_isolate_leader::faults(ctx).await,
        "t40" => t40_partitions::faults(ctx).await,
        "t50" => t50_pause_leader::faults(ctx).await,
        "t60" => t60_loss_delay::faults(ctx).await,
        "t70" => t70_random_mix::faults(ctx).await,
        "t80" => t80_rollout::faults(ctx).await,
        "t90" => t90_power_loss::faults(ctx).await,
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

/// One line of the report.
pub struct Row {
    pub name: &'static str,
    pub seed: u64,
    pub counts: (usize, usize, usize),
    pub checks: Vec<(&'static str, Check)>,
    /// The scenario could not run to the end (set-up failed, no leader, a node crashed ...).
    pub error: Option<String>,
    pub took: Duration,
    pub events: Vec<String>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|(_, c)| c.ok)
    }
}

pub struct Settings {
    pub hsu: PathBuf,
    pub seed: u64,
    /// Overrides every scenario's fault duration (development only).
    pub fault_secs: Option<u64>,
    /// Where node logs of a failed scenario are copied.
    pub logs: PathBuf,
    /// Copy the node logs of every scenario, not only of failed ones.
    pub keep_logs: bool,
    /// Start every node with `--unsafe-no-fsync` (to show that t90 catches a missing fsync).
    pub no_fsync: bool,
}

pub async fn run(name: &'static str, settings: &Settings) -> Row {
    let started = Instant::now();
    let (spec, default_secs) = spec(name);
    let fault_time = Duration::from_secs(settings.fault_secs.unwrap_or(default_secs));
    let mut row = Row {
        name,
        seed: settings.seed,
        counts: (0, 0, 0),
        checks: vec![],
        error: None,
        took: Duration::ZERO,
        events: vec![],
    };
    eprintln!("[{name}] starting {} hosts, {} nodes (seed {})", spec.hosts, spec.initial, settings.seed);
    let extra: Vec<String> = if settings.no_fsync { vec!["--unsafe-no-fsync".into()] } else { vec![] };
    let cluster = match Cluster::start(spec, &settings.hsu, &extra).await {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(format!("set-up failed: {e:#}"));
            row.took = started.elapsed();
            return row;
        }
    };
    let mut ctx = Ctx {
        name,
        cluster,
        rng: SmallRng::seed_from_u64(settings.seed ^ u64::from_le_bytes(*b"hsu-nems")),
        fault_time,
        epoch: Instant::now(),
        events: vec![],
    };
    drive(&mut ctx, settings, &mut row).await;
    row.events = std::mem::take(&mut ctx.events);
    if !row.passed() || settings.keep_logs {
        let dest = settings.logs.join(name);
        eprintln!("[{name}] node logs kept in {}", dest.display());
        ctx.cluster.keep_logs = Some(dest);
    }
    drop(ctx);
    row.took = started.elapsed();
    row
}

async fn drive(ctx: &mut Ctx, settings: &Settings, row: &mut Row) {
    let name = ctx.name;
    let admin = ctx.cluster.admin.clone();
    let endpoints = ctx.cluster.endpoints();
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = LeaderPoller::start(&admin, endpoints.clone(), ctx.epoch, stop_rx.clone(), MAX_RUN);
    let clients = Clients::start(
        &WorkloadConfig::default(),
        &admin,
        endpoints.clone(),
        ctx.epoch,
        settings.seed,
        stop_rx,
        MAX_RUN,
    );
    ctx.log("clients running; faults start in 2 s");
    ctx.sleep(Duration::from_secs(2)).await;
    // t80 also rolls a deployment out through the faults.
    let rollout = if name == "t80" { Some(t80_rollout::prepare(ctx).await) } else { None };
    let result = match &rollout {
        Some(Err(e)) => Err(anyhow::anyhow!("deployment set-up: {e}")),
        _ => faults(ctx).await,
    };
    ctx.log("faults stop: heal the network, resume and restart every node");
    let healed = ctx.cluster.heal_all();
    let recovery = workload::time_to_write(&admin, &endpoints, Duration::from_secs(30)).await;
    ctx.log(format!("first write after healing: {recovery:?}"));
    // The clients go on for a while on the healed cluster, then stop.
    ctx.sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let history = clients.finish().await;
    let samples = poller.finish().await;
    let final_set = workload::read_set(&admin, &endpoints, Duration::from_secs(20)).await;
    let final_counter = workload::read_counter(&admin, &endpoints, Duration::from_secs(20)).await;
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            row.error = Some(format!("a client task failed, so the history is incomplete: {e}"));
            return;
        }
    };
    let converged = match rollout {
        Some(Ok(())) => Some(t80_rollout::converged(ctx).await),
        _ => None,
    };
    let crashed = ctx.cluster.crashed();
    row.counts = history.counts();
    eprintln!(
        "[{name}] {} operations recorded; checking",
        history.ops.len() + history.adds.len() + history.increments.len()
    );
    row.checks = vec![
        ("enough ops", checks::enough(row.counts, MIN_ACKED)),
        ("linearizable", checks::linearizable(&history).await),
        ("nothing lost", checks::nothing_lost(&history, &final_set)),
        ("exactly once", checks::exactly_once(&history, &final_counter)),
        ("1 leader/term", checks::one_leader_per_term(&samples)),
        ("recovery", checks::recovered(&recovery, RECOVERY_LIMIT)),
    ];
    row.checks.extend(converged.map(|c| ("converged", c)));
    let mut errors = vec![];
    if let Err(e) = result {
        errors.push(format!("faults: {e:#}"));
    }
    match healed {
        Ok(exited) => errors.extend(exited),
        Err(e) => errors.push(format!("healing: {e:#}")),
    }
    errors.extend(crashed);
    if !errors.is_empty() {
        row.error = Some(errors.join("\n"));
    }
}

/// The default `--hsu`: `$CARGO_TARGET_DIR/debug/hsu`, else `target/debug/hsu` of the workspace.
pub fn default_hsu() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Path::new(&dir).join("debug/hsu"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hsu"),
    }
}
