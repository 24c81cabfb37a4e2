//! Jobs as pure functions: [`apply`] (a new or changed job starts a run unless it is
//! dispatch-only), [`step`] (count finished instances of each running run, start more up to
//! `parallelism` until `completions` succeeded or more than `retries` failed).
//!
//! A job's instances carry their run's number as their revision. The unit of an instance never
//! restarts by itself (`restart.policy: never`): retries are runs of new instances, decided
//! here, so that a retry may land on another node.

use std::collections::BTreeMap;

use hsu_model::deploy::Job;
use hsu_model::state::{Desired, JobPhase, JobRecord, Json};
use hsu_model::unit::{RestartPolicy, UnitSpec};

use crate::rollout::{InstanceView, Observed};

/// A new record for `job`, or the existing one updated; `None` when nothing changed.
/// `uid` names a new job (unused when one exists).
pub fn apply(existing: Option<&JobRecord>, job: &Job, uid: &str, now_ms: u64) -> Option<JobRecord> {
    let spec = job.spec.clone();
    let mut rec = match existing {
        Some(old) if old.spec.0 == spec => return None,
        Some(old) => {
            let mut r = old.clone();
            r.spec = Json(spec.clone());
            r.generation += 1;
            r.push_event(now_ms, format!("spec changed (generation {})", r.generation));
            r
        }
        None => JobRecord {
            namespace: job.metadata.namespace.to_string(),
            name: job.metadata.name.to_string(),
            uid: uid.to_string(),
            steps: 0,
            spec: Json(spec.clone()),
            generation: 1,
            runs: vec![],
            next_run: 1,
            unplaced: None,
            events: vec![],
            created_ms: now_ms,
        },
    };
    if !spec.dispatch_only {
        rec.start_run(BTreeMap::new(), now_ms);
    }
    Some(rec)
}

/// The unit an instance of run `run` runs: the template, never restarted by the agent, with the
/// run's parameters in its environment.
pub fn unit_for(rec: &JobRecord, run: u64) -> Result<UnitSpec, crate::Error> {
    let mut unit = rec.spec.0.template.clone();
    unit.restart.policy = RestartPolicy::Never;
    if let Some(r) = rec.runs.iter().find(|r| r.id == run) {
        for (k, v) in &r.env {
            let name =
                hsu_model::unit::EnvName::new(k).map_err(|why| crate::Error::Parameter { name: k.clone(), why })?;
            unit.env.insert(name, v.clone());
        }
    }
    Ok(unit)
}

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStep {
    /// (run, instances to create).
    pub create: Vec<(u64, u32)>,
    pub stop: Vec<String>,
    pub delete: Vec<String>,
    pub record: Option<JobRecord>,
}

pub fn step(rec: &JobRecord, instances: &[InstanceView], now_ms: u64) -> JobStep {
    let spec = &rec.spec.0;
    let mut out = JobStep::default();
    let mut next = rec.clone();
    // Instances of runs no longer kept (the oldest runs are dropped): stop, then delete them.
    for i in instances.iter().filter(|i| !rec.runs.iter().any(|r| r.id == i.revision)) {
        if i.observed == Observed::NodeDown || i.observed.is_down() {
            out.delete.push(i.id.clone());
        } else if i.desired == Desired::Run {
            out.stop.push(i.id.clone());
        }
    }
    for run in &mut next.runs {
        let mine: Vec<&InstanceView> = instances.iter().filter(|i| i.revision == run.id).collect();
        let mut active = 0u32;
        for i in &mine {
            let finished = match &i.observed {
                Observed::Reported(r) if r.finished || r.state == "failed" => Some(r.exit_code == Some(0)),
                // Its node lost it (or is down): a failed try.
                Observed::NodeDown | Observed::Absent => Some(false),
                _ => None,
            };
            match (i.desired, finished) {
                (Desired::Run, Some(ok)) => {
                    out.delete.push(i.id.clone());
                    if run.phase == JobPhase::Running {
                        if ok {
                            run.succeeded += 1;
                        } else {
                            run.failed += 1;
                            let why = match &i.observed {
                                Observed::NodeDown => "its node is down".to_string(),
                                Observed::Absent => "its node does not run it".to_string(),
                                Observed::Reported(r) => match r.exit_code {
                                    Some(c) => format!("exit code {c}"),
                                    None => r.message.clone().unwrap_or_else(|| "killed by a signal".into()),
                                },
                                _ => String::new(),
                            };
                            next.events.push(hsu_model::state::Event {
                                at_ms: now_ms,
                                message: format!("run {}: instance {} failed ({why})", run.id, i.id),
                            });
                        }
                    }
                }
                (Desired::Stop, _)
                    if matches!(i.observed, Observed::Absent | Observed::NodeDown) || finished.is_some() =>
                {
                    out.delete.push(i.id.clone())
                }
                (Desired::Run, None) if run.phase != JobPhase::Running => out.stop.push(i.id.clone()),
                (Desired::Run, None) => active += 1,
                (Desired::Stop, _) => {}
            }
        }
        if run.phase != JobPhase::Running {
            continue;
        }
        if run.succeeded >= spec.completions {
            run.phase = JobPhase::Succeeded;
            run.finished_ms = Some(now_ms);
            out.stop.extend(
                mine.iter().filter(|i| i.desired == Desired::Run && !out.delete.contains(&i.id)).map(|i| i.id.clone()),
            );
        } else if run.failed > spec.retries {
            run.phase = JobPhase::Failed;
            run.finished_ms = Some(now_ms);
            out.stop.extend(
                mine.iter().filter(|i| i.desired == Desired::Run && !out.delete.contains(&i.id)).map(|i| i.id.clone()),
            );
        } else {
            let missing = spec.completions - run.succeeded;
            let want = spec.parallelism.min(missing).saturating_sub(active);
            if want > 0 {
                out.create.push((run.id, want));
            }
        }
    }
    let finished: Vec<(u64, JobPhase, u32, u32)> = next
        .runs
        .iter()
        .zip(&rec.runs)
        .filter(|(n, o)| n.phase != o.phase)
        .map(|(n, _)| (n.id, n.phase, n.succeeded, n.failed))
        .collect();
    for (id, phase, ok, failed) in finished {
        next.push_event(
            now_ms,
            format!("run {id} {}: {ok} succeeded, {failed} failed", phase.to_string().to_lowercase()),
        );
    }
    while next.events.len() > hsu_model::state::MAX_EVENTS {
        next.events.remove(0);
    }
    if next != *rec {
        out.record = Some(next);
    }
    out
}

#[cfg(test)]
mod tests;
