//! Edits of one applied deployment or job, as pure functions: each takes the record as the caller
//! read it and returns the one transaction that makes the edit, compared on that read, so a
//! concurrent writer (the controller updating a status) makes it fail and the caller reads again.
//! [`crate::apply::plan`] is the same for whole documents.

use std::collections::BTreeMap;
use std::str::FromStr;

use hsu_model::keys;
use hsu_model::state::{DeploymentRecord, JobRecord, RevisionRecord};
use hsu_store::record::{put_record, unchanged};
use hsu_store::{KeyRange, Op, Txn, Versioned};

use crate::{rollout, Error};

/// What `hsu rollout undo|pause|resume` asks of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Back to a kept revision: the one given, or the newest before the current one.
    Undo { to_revision: Option<u64> },
    /// The controller makes no more rollout steps until resumed.
    Pause,
    /// Steps go on; a paused canary counts as passed.
    Resume,
}

impl RolloutAction {
    /// The action named `name` (`undo`, `pause` or `resume`); `to_revision` is undo's only.
    pub fn parse(name: &str, to_revision: Option<u64>) -> Result<RolloutAction, Error> {
        match (name, to_revision) {
            ("undo", to_revision) => Ok(RolloutAction::Undo { to_revision }),
            ("pause", None) => Ok(RolloutAction::Pause),
            ("resume", None) => Ok(RolloutAction::Resume),
            ("pause" | "resume", Some(n)) => {
                Err(Error::Action(format!("{name} takes no revision (got {n}); only undo goes to a revision")))
            }
            (other, _) => {
                Err(Error::Action(format!("unknown rollout action {other:?}; expected undo, pause or resume")))
            }
        }
    }
}

impl FromStr for RolloutAction {
    type Err = Error;

    fn from_str(name: &str) -> Result<RolloutAction, Error> {
        RolloutAction::parse(name, None)
    }
}

fn encode(e: hsu_model::CodecError) -> Error {
    Error::Encode { what: "deployment or job", source: e }
}

/// Replaces the record at `current.key` with `next`, if it is still as read.
fn replace<T: serde::Serialize>(current: &Versioned<T>, next: &T) -> Result<Txn, Error> {
    Ok(Txn {
        compare: vec![unchanged(&current.key, current.mod_revision)],
        success: vec![put_record(current.key.clone(), next).map_err(encode)?],
        failure: vec![],
    })
}

/// Deletes the deployment and its revisions; the controller then stops its instances.
pub fn delete_deployment(current: &Versioned<DeploymentRecord>) -> Txn {
    let d = &current.value;
    Txn {
        compare: vec![unchanged(&current.key, current.mod_revision)],
        success: vec![
            Op::Delete { range: KeyRange::Key(current.key.clone()) },
            Op::Delete { range: KeyRange::Prefix(keys::REVISIONS.of(&d.namespace, &d.name).into_bytes()) },
        ],
        failure: vec![],
    }
}

/// The deployment after `action`, and the transaction that writes it. `revisions` are the
/// deployment's kept revisions (undo's choice).
pub fn rollout(
    current: &Versioned<DeploymentRecord>,
    revisions: &[RevisionRecord],
    action: RolloutAction,
    now_ms: u64,
) -> Result<(Txn, DeploymentRecord), Error> {
    let rec = &current.value;
    let next = match action {
        RolloutAction::Undo { to_revision } => rollout::undo(rec, revisions, to_revision, now_ms)?,
        RolloutAction::Pause => {
            let mut n = rec.clone();
            n.paused = true;
            n.push_event(now_ms, "paused".into());
            n
        }
        RolloutAction::Resume => {
            let mut n = rec.clone();
            n.paused = false;
            n.canary_passed = true;
            n.progress_ms = now_ms;
            n.push_event(now_ms, "resumed".into());
            n
        }
    };
    Ok((replace(current, &next)?, next))
}

/// Starts a new run of the job with `env` added to its units' environment. Returns the
/// transaction and the run's number.
pub fn dispatch_job(
    current: &Versioned<JobRecord>,
    env: BTreeMap<String, String>,
    now_ms: u64,
) -> Result<(Txn, u64), Error> {
    for name in env.keys() {
        hsu_model::unit::EnvName::new(name).map_err(|e| Error::Parameter { name: name.clone(), why: e.to_string() })?;
    }
    let mut next = current.value.clone();
    let run = next.start_run(env, now_ms);
    Ok((replace(current, &next)?, run))
}

/// Deletes the job; the controller then stops its instances.
pub fn delete_job(current: &Versioned<JobRecord>) -> Txn {
    Txn {
        compare: vec![unchanged(&current.key, current.mod_revision)],
        success: vec![Op::Delete { range: KeyRange::Key(current.key.clone()) }],
        failure: vec![],
    }
}

#[cfg(test)]
mod tests;
