//! The cluster state that deployments live in: what the store keeps (deployments, revisions,
//! instances; their keys are in [`crate::keys`]) and what nodes report to the master in their heartbeats (kept in
//! the master's memory, never written through Raft).
//!
//! Specs are kept as JSON inside the binary records ([`Json`]): the unit spec's fields accept
//! several shapes (`cpu: 0.5` or `500m`), which needs a self-describing encoding.

use std::collections::BTreeMap;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::deploy::{DeploymentSpec, JobSpec, Resources};
use crate::unit::UnitSpec;
use crate::NodeId;

/// A value kept as JSON text inside a binary record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de, T: de::DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map(Json).map_err(de::Error::custom)
    }
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Moving instances to the current revision.
    Progressing,
    /// Every instance runs the current revision and is available.
    Complete,
    /// No progress within the deadline (and no rollback): the controller keeps trying, the
    /// phase says the rollout missed its deadline until the next apply or undo.
    Failed,
    /// No progress within the deadline, and the deployment went back to its last complete
    /// revision (`rolled_back_from` says from which).
    RollingBack,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Progressing => "Progressing",
            Phase::Complete => "Complete",
            Phase::Failed => "Failed",
            Phase::RollingBack => "RollingBack",
        })
    }
}

/// One line of a deployment's history, for `hsu describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub message: String,
}

/// Events kept per deployment (the oldest go first).
pub const MAX_EVENTS: usize = 30;

/// `/deployments/<ns>/<name>`: the applied spec and the rollout's state. The controller and
/// `hsu apply` both write it, always with a compare on its mod revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub namespace: String,
    pub name: String,
    /// Unique per creation: a deployment deleted and created again under the same name does
    /// not take over the old one's instances (they carry the uid of their owner).
    pub uid: String,
    /// Bumped by every controller step that changes instances, so that two steps taken from the
    /// same state (one of them in doubt after a timeout) conflict in their compare-and-swap.
    pub steps: u64,
    pub labels: BTreeMap<String, String>,
    pub spec: Json<DeploymentSpec>,
    /// Bumped by every apply that changes the spec.
    pub generation: u64,
    /// The revision instances are moving to (its template is `spec.template`).
    pub revision: u64,
    /// The last revision that was completely rolled out (0: none yet).
    pub stable_revision: u64,
    /// The number the next new revision gets.
    pub next_revision: u64,
    pub phase: Phase,
    /// Set when an automatic rollback left this revision.
    pub rolled_back_from: Option<u64>,
    /// Why the last rollout failed (cleared by the next apply or undo).
    pub failure: Option<String>,
    /// Paused by `hsu rollout pause` (or after a canary step); `spec.paused` pauses too.
    pub paused: bool,
    /// Canary step done for `revision`: go on with the rest (set by `hsu rollout resume`).
    pub canary_passed: bool,
    /// When the rollout last made progress (Unix ms); the deadline counts from here.
    pub progress_ms: u64,
    /// What "progress" was last measured as: (instances of `revision`, of them available,
    /// instances of other revisions). A change of it is progress.
    pub progress_mark: (u32, u32, u32),
    /// Why instances could not be placed, if some could not.
    pub unplaced: Option<String>,
    pub events: Vec<Event>,
    pub created_ms: u64,
}

impl DeploymentRecord {
    pub fn push_event(&mut self, at_ms: u64, message: String) {
        if self.events.last().is_some_and(|e| e.message == message) {
            return;
        }
        self.events.push(Event { at_ms, message });
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused || self.spec.0.paused
    }
}

/// `/revisions/<ns>/<name>/<number>`: one immutable template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub number: u64,
    pub template: Json<UnitSpec>,
    pub resources: Json<Resources>,
    pub created_ms: u64,
}

/// What the node should do with an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Run,
    /// Out of the registry view; the node stops it, then the controller deletes the record.
    Stop,
}

/// `/instances/<node>/<id>`: one scheduled copy of a revision (or one run of a job).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Also the unit's name on the node: `<deployment>-<6 characters>`.
    pub id: String,
    pub namespace: String,
    /// The deployment (or job) it belongs to, and that owner's uid.
    pub owner: String,
    pub owner_kind: OwnerKind,
    pub owner_uid: String,
    pub revision: u64,
    pub node: NodeId,
    /// The unit the node runs, named `id`.
    pub unit: Json<UnitSpec>,
    pub resources: Json<Resources>,
    pub desired: Desired,
    pub created_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerKind {
    Deployment,
    Job,
}

/// `/jobs/<ns>/<name>`: an applied job and its runs. Applying it starts run 1 (unless it is
/// dispatch-only); a changed spec starts a new run; `hsu job dispatch` starts one with parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub namespace: String,
    pub name: String,
    /// As [`DeploymentRecord::uid`].
    pub uid: String,
    /// As [`DeploymentRecord::steps`].
    pub steps: u64,
    pub spec: Json<JobSpec>,
    pub generation: u64,
    /// The newest runs (at most [`MAX_RUNS`]), oldest first.
    pub runs: Vec<JobRun>,
    pub next_run: u64,
    /// Why instances of a run could not be placed, if some could not.
    pub unplaced: Option<String>,
    pub events: Vec<Event>,
    pub created_ms: u64,
}

/// Runs kept per job.
pub const MAX_RUNS: usize = 20;

impl JobRecord {
    pub fn push_event(&mut self, at_ms: u64, message: String) {
        self.events.push(Event { at_ms, message });
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    /// Starts a new run with these parameters; returns its number.
    pub fn start_run(&mut self, env: BTreeMap<String, String>, now_ms: u64) -> u64 {
        let id = self.next_run;
        self.next_run += 1;
        self.runs.push(JobRun {
            id,
            env,
            succeeded: 0,
            failed: 0,
            phase: JobPhase::Running,
            started_ms: now_ms,
            finished_ms: None,
        });
        if self.runs.len() > MAX_RUNS {
            // Drop the oldest finished run (a running one stays, however old).
            if let Some(i) = self.runs.iter().position(|r| r.phase != JobPhase::Running) {
                self.runs.remove(i);
            }
        }
        self.push_event(now_ms, format!("run {id} started"));
        id
    }
}

/// One run of a job: `completions` successful exits wanted, `retries` failures tolerated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    pub id: u64,
    /// Parameters of a dispatch, added to the unit's environment.
    pub env: BTreeMap<String, String>,
    pub succeeded: u32,
    pub failed: u32,
    pub phase: JobPhase,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    Running,
    Succeeded,
    Failed,
}

impl fmt::Display for JobPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        })
    }
}

/// What a node tells the master, about once a second and at once when something changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: NodeId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// What the scheduler may hand out on this node.
    pub capacity: Capacity,
    /// The units of the instances the node runs, those it is stopping included until they have
    /// stopped; an instance missing here although `seen_revision` covers its record is not
    /// running on this node.
    pub instances: Vec<InstanceReport>,
    /// The store revision of the instance records the node has acted on.
    pub seen_revision: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// One instance as its node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    /// The agent's state: starting, running, backoff, exited, failed, stopping, stopped.
    pub state: String,
    pub ready: bool,
    /// For how long it has been ready (0 when not ready), at the time of the report.
    pub ready_for_ms: u64,
    pub restarts: u32,
    /// The last exit code, if it exited; `None` also when a signal ended it.
    pub exit_code: Option<i32>,
    /// It exited and stays down (a job's run that finished).
    pub finished: bool,
    pub message: Option<String>,
    /// The ports the agent allocated for it, by port name.
    pub ports: BTreeMap<String, u16>,
}

impl InstanceReport {
    /// Not running and not coming back by itself: stopped, exited (its restart policy keeps it
    /// down) or failed (the agent gave up on it).
    pub fn is_down(&self) -> bool {
        matches!(self.state.as_str(), "stopped" | "exited" | "failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{parse_documents, Object, Source};
    use crate::{decode_record, encode_record};

    /// Every record goes through the binary codec, whose decoder cannot handle fields that accept
    /// several shapes (`cpu: 0.5` or `500m`) unless they travel as JSON.
    #[test]
    fn records_with_specs_and_resources_survive_the_codec() {
        let text = "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template: {command: [x], limits: {cpu: 0.5, memory: 64MiB}}\n  resources: {cpu: 250m, memory: 1GiB}\n";
        let docs = parse_documents(&[Source { file: "t.yaml", text }]).unwrap();
        let Object::Deployment(d) = &docs[0].object else { panic!() };
        let rev = RevisionRecord {
            number: 1,
            template: Json(d.spec.template.clone()),
            resources: Json(d.spec.resources),
            created_ms: 5,
        };
        let back: RevisionRecord = decode_record(&encode_record(&rev).unwrap()).unwrap();
        assert_eq!(back, rev);
        let inst = InstanceRecord {
            id: "web-abcdef".into(),
            namespace: "default".into(),
            owner: "web".into(),
            owner_kind: OwnerKind::Deployment,
            owner_uid: "u1".into(),
            revision: 1,
            node: 3,
            unit: Json(d.spec.template.clone()),
            resources: Json(d.spec.resources),
            desired: Desired::Run,
            created_ms: 5,
        };
        let back: InstanceRecord = decode_record(&encode_record(&inst).unwrap()).unwrap();
        assert_eq!(back, inst);
        let report = NodeReport { node: 1, name: "n1".into(), ..NodeReport::default() };
        let back: NodeReport = decode_record(&encode_record(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
