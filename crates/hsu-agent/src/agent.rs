//! The agent: desired units in, observed status out. [`plan`] is the pure reconciler — from the
//! desired specs, the units it supervises now and the records left on disk to a list of
//! [`Action`]s — and [`Agent::apply`] carries them out. Unchanged units are never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsu_model::unit::UnitSpec;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::process;
use crate::record::{self, Record};
use crate::supervisor::{self, UnitHandle, UnitStatus};

/// What a recorded unit looks like when the agent starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub spec: UnitSpec,
    /// Its main process still runs (same pid and start time as recorded).
    pub alive: bool,
    /// Its main process is gone but other processes of its group still run.
    pub leftovers: bool,
}

/// One step of reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a new unit.
    Start(String),
    /// Take over the process an earlier agent started for this same spec.
    Adopt(String),
    /// The spec changed: stop the running unit, then start the new spec.
    Replace(String),
    /// No longer desired: stop it and forget it.
    Stop(String),
    /// A recorded process for a spec that is no longer (or differently) desired, or what is left
    /// of a unit whose main process died while no agent watched: stop its group.
    StopRecorded(String),
    /// A record of a unit that is neither desired nor running: delete it.
    Forget(String),
}

/// The pure reconciler. `supervised`: the specs of the units the agent runs now; `recorded`:
/// records on disk of units not supervised (after an agent restart).
pub fn plan(
    desired: &[UnitSpec],
    supervised: &BTreeMap<String, UnitSpec>,
    recorded: &BTreeMap<String, Recorded>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let want: BTreeMap<&str, &UnitSpec> = desired.iter().map(|u| (u.name.as_str(), u)).collect();
    for name in supervised.keys() {
        if !want.contains_key(name.as_str()) {
            actions.push(Action::Stop(name.clone()));
        }
    }
    for (name, r) in recorded {
        if supervised.contains_key(name) {
            continue;
        }
        let same = want.get(name.as_str()).is_some_and(|w| **w == r.spec);
        if (r.alive && !same) || (!r.alive && r.leftovers) {
            actions.push(Action::StopRecorded(name.clone()));
        }
        if !want.contains_key(name.as_str()) && !r.alive && !r.leftovers {
            actions.push(Action::Forget(name.clone()));
        }
    }
    for (name, spec) in &want {
        match (supervised.get(*name), recorded.get(*name)) {
            (Some(current), _) if current == *spec => {}
            (Some(_), _) => actions.push(Action::Replace(name.to_string())),
            (None, Some(r)) if r.alive && r.spec == **spec => actions.push(Action::Adopt(name.to_string())),
            (None, _) => actions.push(Action::Start(name.to_string())),
        }
    }
    actions
}

/// What [`Agent::apply`] did, by unit name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub adopted: Vec<String>,
    pub replaced: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
}

/// What happens to running units when the agent exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnExit {
    /// Leave them running; the next agent adopts them (a cluster node's default).
    Keep,
    /// Stop them gracefully (the standalone agent's default, as supervisord does).
    Stop,
}

pub struct Agent {
    data_dir: PathBuf,
    units: BTreeMap<String, UnitHandle>,
    /// Records found at start for units not adopted yet.
    recorded: BTreeMap<String, Record>,
    reaper: JoinHandle<()>,
}

impl Agent {
    /// Opens the data directory and reads what an earlier agent recorded; starts nothing.
    pub fn open(data_dir: &Path) -> Result<Agent, crate::Error> {
        std::fs::create_dir_all(record::units_dir(data_dir)).map_err(crate::Error::io(record::units_dir(data_dir)))?;
        let recorded = record::read_all(data_dir).map_err(crate::Error::Units)?;
        process::become_subreaper();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                process::reap_orphans();
            }
        });
        Ok(Agent { data_dir: data_dir.to_path_buf(), units: BTreeMap::new(), recorded, reaper })
    }

    /// The specs recorded on disk: what to run when no other source of desired state is reachable
    /// (after a reboot of a node cut off from every server).
    pub fn recorded_specs(&self) -> Vec<UnitSpec> {
        self.recorded.values().map(|r| r.spec.clone()).collect()
    }

    /// Brings the supervised units to `desired`.
    pub async fn apply(&mut self, desired: Vec<UnitSpec>) -> ApplyReport {
        let supervised: BTreeMap<String, UnitSpec> =
            self.units.iter().map(|(n, h)| (n.clone(), h.spec.clone())).collect();
        let recorded: BTreeMap<String, Recorded> = self
            .recorded
            .iter()
            .map(|(n, r)| {
                let alive = r.proc.is_some_and(|p| p.alive());
                let leftovers = !alive && r.pgid.is_some_and(|g| !process::unit_members(g, n).is_empty());
                (n.clone(), Recorded { spec: r.spec.clone(), alive, leftovers })
            })
            .collect();
        let actions = plan(&desired, &supervised, &recorded);
        let mut want: BTreeMap<String, UnitSpec> =
            desired.into_iter().map(|u| (u.name.as_str().to_string(), u)).collect();
        let mut report = ApplyReport::default();
        for action in actions {
            match action {
                Action::Stop(name) => {
                    if let Some(h) = self.units.remove(&name) {
                        h.stop().await;
                    }
                    if let Err(e) = record::remove(&self.data_dir, &name) {
                        warn!(unit = %name, "removing its record: {e}");
                    }
                    report.stopped.push(name);
                }
                Action::StopRecorded(name) => {
                    if let Some(r) = self.recorded.remove(&name) {
                        stop_recorded(&r).await;
                        if !want.contains_key(&name) {
                            let _ = record::remove(&self.data_dir, &name);
                        }
                    }
                    report.stopped.push(name);
                }
                Action::Forget(name) => {
                    self.recorded.remove(&name);
                    if let Err(e) = record::remove(&self.data_dir, &name) {
                        warn!(unit = %name, "removing its record: {e}");
                    }
                }
                Action::Replace(name) => {
                    if let Some(h) = self.units.remove(&name) {
                        h.stop().await;
                    }
                    let spec = want.remove(&name).expect("planned from desired");
                    self.units.insert(name.clone(), supervisor::spawn(&self.data_dir, spec, None, BTreeMap::new(), 0));
                    report.replaced.push(name);
                }
                Action::Adopt(name) => {
                    let r = self.recorded.remove(&name).expect("planned from a record");
                    let spec = want.remove(&name).expect("planned from desired");
                    let h = supervisor::spawn(&self.data_dir, spec, r.proc, r.ports, r.restarts);
                    self.units.insert(name.clone(), h);
                    report.adopted.push(name);
                }
                Action::Start(name) => {
                    let spec = want.remove(&name).expect("planned from desired");
                    let ports = self.recorded.remove(&name).map(|r| r.ports).unwrap_or_default();
                    self.units.insert(name.clone(), supervisor::spawn(&self.data_dir, spec, None, ports, 0));
                    report.started.push(name);
                }
            }
        }
        report.unchanged = want.into_keys().filter(|n| self.units.contains_key(n)).collect();
        info!(?report, "applied");
        report
    }

    pub fn status(&self) -> Vec<UnitStatus> {
        self.units.values().map(UnitHandle::status).collect()
    }

    /// A live view of one unit's status.
    pub fn watch(&self, name: &str) -> Option<tokio::sync::watch::Receiver<UnitStatus>> {
        self.units.get(name).map(UnitHandle::watch)
    }

    /// Ends the agent; its units are stopped or left running for the next agent.
    pub async fn shutdown(self, on_exit: OnExit) {
        // All at once: each unit has its own grace period, and a service manager's stop timeout
        // must not run out while later units still wait their turn.
        let mut stops = tokio::task::JoinSet::new();
        for (_, h) in self.units {
            stops.spawn(async move {
                match on_exit {
                    OnExit::Stop => h.stop().await,
                    OnExit::Keep => h.detach().await,
                }
            });
        }
        while stops.join_next().await.is_some() {}
        self.reaper.abort();
    }
}

/// Stops a process an earlier agent recorded (it is not our child: signal, poll, SIGKILL).
async fn stop_recorded(r: &Record) {
    let (Some(p), Some(pgid)) = (r.proc, r.pgid) else { return };
    let name = r.spec.name.as_str();
    if !p.alive() && process::unit_members(pgid, name).is_empty() {
        return;
    }
    let signal = r.spec.stop.signal;
    info!(unit = %name, pid = p.pid, "stopping recorded processes that are not wanted as they run");
    let sig = process::signal_of(signal);
    let _ = process::signal_group(pgid, sig);
    if !process::wait_group_empty(pgid, r.spec.stop.grace.0).await {
        let _ = process::signal_group(pgid, rustix::process::Signal::KILL);
        process::wait_group_empty(pgid, Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests;
