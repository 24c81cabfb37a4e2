//! Deployments as pure functions: [`apply`] turns an applied spec into the record and maybe a
//! new revision; [`step`] takes one rolling-update step from the current instances; [`undo`]
//! goes back to a kept revision.
//!
//! [`step`] keeps two bounds at every step, counting every instance record that exists (those
//! being stopped too): at most `replicas + maxSurge` instances, and at least
//! `replicas - maxUnavailable` ready ones whenever that many were ready before (new instances
//! count once they are available: ready for `minReady`). It only creates instances of the current revision and only stops others
//! (or surplus ones), so repeating it converges to `replicas` available instances of the current
//! revision.

use std::collections::BTreeSet;

use hsu_model::deploy::{Deployment, Resources};
use hsu_model::duration::format_duration;
use hsu_model::state::{DeploymentRecord, Desired, InstanceReport, Json, Phase, RevisionRecord};
use hsu_model::unit::UnitSpec;
use hsu_model::NodeId;

/// An instance of the deployment as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub id: String,
    pub revision: u64,
    pub node: NodeId,
    pub desired: Desired,
    pub created_ms: u64,
    pub observed: Observed,
}

/// What the node of an instance says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Its node has not reported since this master took over (or it is within the grace).
    Unknown,
    /// Its node is down (no report for the grace period): the instance is lost.
    NodeDown,
    /// Its node reported and does not have it (not started yet, or stopped and forgotten).
    Absent,
    Reported(InstanceReport),
}

impl InstanceView {
    fn available(&self, min_ready_ms: u64) -> bool {
        matches!(&self.observed, Observed::Reported(r) if r.ready && r.ready_for_ms >= min_ready_ms)
    }

    fn ready(&self) -> bool {
        matches!(&self.observed, Observed::Reported(r) if r.ready)
    }
}

impl Observed {
    /// Its node has seen its record and does not run it, or reports it down for good.
    pub fn is_down(&self) -> bool {
        match self {
            Observed::Absent => true,
            Observed::Reported(r) => r.is_down(),
            Observed::Unknown | Observed::NodeDown => false,
        }
    }
}

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// New instances of the current revision to place.
    pub create: u32,
    /// Instances to take out of service and stop.
    pub stop: Vec<String>,
    /// Instance records to delete (stopped, or lost with their node).
    pub delete: Vec<String>,
    /// The record with its new status, when anything in it changed.
    pub record: Option<DeploymentRecord>,
}

/// The template to go back to when a rollout fails with `autoRollback`.
pub struct Stable<'a> {
    pub template: &'a UnitSpec,
    pub resources: Resources,
}

/// One step of the deployment controller for `rec`, given all of its instances. `stable` is the
/// revision record of `rec.stable_revision` (needed only to roll back).
pub fn step(rec: &DeploymentRecord, instances: &[InstanceView], stable: Option<Stable<'_>>, now_ms: u64) -> Step {
    let spec = &rec.spec.0;
    let replicas = spec.replicas;
    let (surge, unavailable) = spec.strategy.counts(replicas);
    let min_ready_ms = spec.strategy.min_ready.0.as_millis() as u64;
    let mut out = Step::default();
    let mut next = rec.clone();

    // Records that need no more than deleting: lost with their node, stopped, or dead for good
    // (the agent gave up on it, it exited and its policy keeps it down, or its node does not
    // have it although it has seen its record): those are replaced.
    let mut live: Vec<&InstanceView> = Vec::new();
    for i in instances {
        if i.observed == Observed::NodeDown {
            next.push_event(now_ms, format!("instance {} lost with node {}; replacing it", i.id, i.node));
            out.delete.push(i.id.clone());
        } else if i.observed.is_down() {
            if i.desired == Desired::Run {
                let why = match &i.observed {
                    Observed::Reported(r) => format!("it is {}", r.state),
                    _ => "its node does not run it".to_string(),
                };
                next.push_event(now_ms, format!("instance {} on node {} is down ({why}); replacing it", i.id, i.node));
            }
            out.delete.push(i.id.clone());
        } else {
            live.push(i);
        }
    }
    let stopping = live.iter().filter(|i| i.desired == Desired::Stop).count() as u32;
    let mut new: Vec<&InstanceView> =
        live.iter().copied().filter(|i| i.desired == Desired::Run && i.revision == rec.revision).collect();
    let mut old: Vec<&InstanceView> =
        live.iter().copied().filter(|i| i.desired == Desired::Run && i.revision != rec.revision).collect();
    // Stop the least useful first: not ready, not available, then the oldest revision, then the
    // newest instance.
    let rank = |i: &&InstanceView| (i.ready(), i.available(min_ready_ms), i.revision, std::cmp::Reverse(i.created_ms));
    new.sort_by_key(rank);
    old.sort_by_key(rank);
    let new_available = new.iter().filter(|i| i.available(min_ready_ms)).count() as u32;
    let old_ready = old.iter().filter(|i| i.ready()).count() as u32;

    let canary_hold = spec.strategy.canary > 0
        && rec.revision != rec.stable_revision
        && rec.stable_revision != 0
        && !rec.canary_passed
        && !old.is_empty();
    let want_new = if canary_hold { spec.strategy.canary } else { replicas };
    let paused = rec.is_paused();

    if !paused {
        let mut stopped: BTreeSet<&str> = BTreeSet::new();
        // Instances not ready cost nothing to stop; ready ones only while enough others stay
        // ready, counting new instances once they are available (ready for minReady), so that
        // readiness never drops below replicas - maxUnavailable.
        let min_available = replicas.saturating_sub(unavailable);
        let mut can_lose = (new_available + old_ready).saturating_sub(min_available);
        // Surplus instances of the current revision (replicas or the canary count went down).
        let surplus = (new.len() as u32).saturating_sub(want_new);
        let mut new_count = new.len() as u32;
        for i in new.iter().take(surplus as usize) {
            if i.available(min_ready_ms) {
                if can_lose == 0 {
                    break;
                }
                can_lose -= 1;
            }
            stopped.insert(&i.id);
            new_count -= 1;
        }
        let keep_old = replicas.saturating_sub(want_new) as usize;
        let removable_old = old.len().saturating_sub(keep_old);
        for i in old.iter().take(removable_old) {
            if i.ready() {
                if can_lose == 0 {
                    break;
                }
                can_lose -= 1;
            } else if canary_hold || i.observed == Observed::Unknown {
                // Unknown: it may well be serving; wait for its node's report.
                continue;
            }
            stopped.insert(&i.id);
        }
        // New instances, within the surge bound (stopping instances still count).
        let total = new.len() as u32 + old.len() as u32 + stopping;
        let room = replicas.saturating_add(surge).saturating_sub(total);
        out.create = want_new.saturating_sub(new_count).min(room);
        out.stop = live.iter().filter(|i| stopped.contains(i.id.as_str())).map(|i| i.id.clone()).collect();
    }

    // Status.
    let complete = new.len() as u32 == replicas && new_available == replicas && old.is_empty() && stopping == 0;
    let mark = (new.len() as u32, new_available, old.len() as u32);
    // Paused, the deadline does not run: `resume` restarts it (and no record is written here, so
    // a paused deployment costs no writes).
    if mark != rec.progress_mark {
        next.progress_mark = mark;
        next.progress_ms = now_ms;
    }
    let deadline_ms = spec.strategy.progress_deadline.0.as_millis() as u64;
    if complete {
        if next.phase != Phase::Complete || next.stable_revision != rec.revision {
            next.push_event(now_ms, format!("revision {} rolled out: {replicas}/{replicas} available", rec.revision));
        }
        next.phase = Phase::Complete;
        next.stable_revision = rec.revision;
    } else if canary_hold && new_available >= spec.strategy.canary && !paused {
        next.paused = true;
        next.push_event(
            now_ms,
            format!(
                "canary: {} instance(s) of revision {} available; paused until `hsu rollout resume {}`",
                spec.strategy.canary, rec.revision, rec.name
            ),
        );
    } else if next.phase == Phase::Complete {
        next.phase = Phase::Progressing;
        next.progress_ms = now_ms;
    } else if matches!(next.phase, Phase::Progressing | Phase::RollingBack)
        && !paused
        && now_ms.saturating_sub(next.progress_ms) > deadline_ms
    {
        let why = format!(
            "no progress for {} ({}/{replicas} of revision {} available)",
            format_duration(spec.strategy.progress_deadline.0),
            new_available,
            rec.revision
        );
        match stable {
            Some(s)
                if spec.strategy.auto_rollback
                    && next.phase == Phase::Progressing
                    && rec.stable_revision != 0
                    && rec.stable_revision != rec.revision =>
            {
                next.push_event(
                    now_ms,
                    format!(
                        "rollout of revision {} failed: {why}; rolling back to revision {}",
                        rec.revision, rec.stable_revision
                    ),
                );
                next.rolled_back_from = Some(rec.revision);
                next.failure = Some(format!("rollout of revision {} failed: {why}", rec.revision));
                next.revision = rec.stable_revision;
                next.spec.0.template = s.template.clone();
                next.spec.0.resources = s.resources;
                next.phase = Phase::RollingBack;
                next.progress_ms = now_ms;
                next.canary_passed = true;
            }
            _ => {
                let failure = format!("rollout of revision {} failed: {why}", rec.revision);
                next.push_event(now_ms, failure.clone());
                next.failure = Some(failure);
                next.phase = Phase::Failed;
            }
        }
    }
    if next != *rec {
        out.record = Some(next);
    }
    out
}

/// What [`apply`] decided for one applied deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub record: DeploymentRecord,
    /// A revision to write (a template not seen before).
    pub new_revision: Option<RevisionRecord>,
    /// Revisions to delete (beyond `revisionHistoryLimit`).
    pub prune: Vec<u64>,
    /// Nothing changed (the same spec was applied again).
    pub unchanged: bool,
}

/// Applies `d` over the existing record (if any) and its kept revisions. A template (with its
/// resources) seen before reuses that revision's number, as Kubernetes reuses a ReplicaSet.
/// `uid` names a new deployment (unused when one exists).
pub fn apply(
    existing: Option<&DeploymentRecord>,
    revisions: &[RevisionRecord],
    d: &Deployment,
    uid: &str,
    now_ms: u64,
) -> Applied {
    let spec = d.spec.clone();
    let same_template = |r: &RevisionRecord| r.template.0 == spec.template && r.resources.0 == spec.resources;
    let labels = d.metadata.labels.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect();
    let Some(old) = existing else {
        let record = DeploymentRecord {
            namespace: d.metadata.namespace.to_string(),
            name: d.metadata.name.to_string(),
            uid: uid.to_string(),
            steps: 0,
            labels,
            spec: Json(spec.clone()),
            generation: 1,
            revision: 1,
            stable_revision: 0,
            next_revision: 2,
            phase: Phase::Progressing,
            rolled_back_from: None,
            failure: None,
            paused: false,
            canary_passed: false,
            progress_ms: now_ms,
            progress_mark: (0, 0, 0),
            unplaced: None,
            events: vec![hsu_model::state::Event { at_ms: now_ms, message: "created with revision 1".into() }],
            created_ms: now_ms,
        };
        let rev = RevisionRecord {
            number: 1,
            template: Json(spec.template),
            resources: Json(spec.resources),
            created_ms: now_ms,
        };
        return Applied { record, new_revision: Some(rev), prune: vec![], unchanged: false };
    };
    if old.spec.0 == spec && old.labels == labels {
        return Applied { record: old.clone(), new_revision: None, prune: vec![], unchanged: true };
    }
    let mut record = old.clone();
    record.spec = Json(spec.clone());
    record.labels = labels;
    record.generation += 1;
    if old.spec.0.paused != spec.paused {
        // The deadline did not run while paused; it starts again now.
        record.progress_ms = now_ms;
    }
    let mut new_revision = None;
    let template_changed = old.spec.0.template != spec.template || old.spec.0.resources != spec.resources;
    if template_changed {
        let number = match revisions.iter().find(|r| same_template(r)) {
            Some(r) => r.number,
            None => {
                let n = old.next_revision;
                record.next_revision += 1;
                new_revision = Some(RevisionRecord {
                    number: n,
                    template: Json(spec.template.clone()),
                    resources: Json(spec.resources),
                    created_ms: now_ms,
                });
                n
            }
        };
        record.revision = number;
        record.phase = Phase::Progressing;
        record.rolled_back_from = None;
        record.failure = None;
        record.canary_passed = false;
        record.progress_ms = now_ms;
        record.push_event(now_ms, format!("rolling out revision {number} (generation {})", record.generation));
    } else {
        record.push_event(now_ms, format!("spec changed (generation {}); same template", record.generation));
    }
    let mut kept: Vec<u64> = revisions.iter().map(|r| r.number).collect();
    kept.extend(new_revision.as_ref().map(|r| r.number));
    let prune = prune(&kept, &record);
    Applied { record, new_revision, prune, unchanged: false }
}

/// Revisions beyond the history limit, oldest first; the current and the stable one stay.
fn prune(kept: &[u64], rec: &DeploymentRecord) -> Vec<u64> {
    let mut old: Vec<u64> = kept.iter().copied().filter(|n| *n != rec.revision && *n != rec.stable_revision).collect();
    old.sort_unstable();
    let limit = rec.spec.0.revision_history_limit as usize;
    let excess = old.len().saturating_sub(limit);
    old.truncate(excess);
    old
}

/// Goes back to revision `to` (default: the newest kept revision before the current one).
pub fn undo(
    rec: &DeploymentRecord,
    revisions: &[RevisionRecord],
    to: Option<u64>,
    now_ms: u64,
) -> Result<DeploymentRecord, crate::Error> {
    let target = match to {
        Some(n) => revisions.iter().find(|r| r.number == n).ok_or_else(|| {
            let kept: Vec<String> = revisions.iter().map(|r| r.number.to_string()).collect();
            crate::Error::Undo(format!("deployment {} has no revision {n} (kept: {})", rec.name, kept.join(", ")))
        })?,
        None => revisions
            .iter()
            .filter(|r| r.number != rec.revision)
            .max_by_key(|r| if r.number < rec.revision { (1, r.number) } else { (0, r.number) })
            .ok_or_else(|| {
                crate::Error::Undo(format!("deployment {} has no earlier revision to go back to", rec.name))
            })?,
    };
    if target.number == rec.revision {
        return Err(crate::Error::Undo(format!("deployment {} already runs revision {}", rec.name, target.number)));
    }
    let mut next = rec.clone();
    next.spec.0.template = target.template.0.clone();
    next.spec.0.resources = target.resources.0;
    next.revision = target.number;
    next.generation += 1;
    next.phase = Phase::Progressing;
    next.rolled_back_from = None;
    next.failure = None;
    next.canary_passed = false;
    next.progress_ms = now_ms;
    next.push_event(now_ms, format!("undo: rolling back from revision {} to {}", rec.revision, target.number));
    Ok(next)
}

#[cfg(test)]
mod tests;
