//! The controllers' decisions for one pass, as one pure function: [`plan`] takes what the pass
//! read (a [`Snapshot`] of deployments, revisions, jobs, instances and the nodes' reports), the
//! time and a source of instance ids, and returns the store transactions to commit. It runs
//! [`rollout::step`] or [`jobs::step`] per owner, places new instances with
//! [`scheduler::place`], finds orphans (instances whose deployment or job is gone) and keeps each
//! service's endpoint set (`services.rs`). Nothing
//! here reads a clock, a random number or the store, so its tests assert on the writes.
//!
//! Every write of an owner is one transaction compared on the mod revision of the owner's record
//! and of every instance it changes, and on the absence of every instance key it creates: a
//! write planned from a stale snapshot fails as a whole and the next pass plans again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hsu_model::deploy::{Placement, Resources};
use hsu_model::keys;
use hsu_model::service::ServiceRecord;
use hsu_model::state::{
    DeploymentRecord, Desired, InstanceRecord, InstanceReport, JobRecord, Json, NodeReport, OwnerKind, RevisionRecord,
};
use hsu_model::unit::{UnitName, UnitSpec};
use hsu_model::{encode_record, NodeId};
use hsu_store::record::{put, unchanged};
pub use hsu_store::Versioned;
use hsu_store::{KeyRange, Op, Txn};
use rand::Rng;

use crate::jobs;
use crate::rollout::{self, InstanceView, Observed, Stable};
use crate::scheduler::{self, Ask, Held, NodeView};
use crate::Error;

/// What one pass reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub deployments: Vec<Versioned<DeploymentRecord>>,
    /// Each deployment's revision records, by `namespace/name`.
    pub revisions: BTreeMap<String, Vec<RevisionRecord>>,
    pub jobs: Vec<Versioned<JobRecord>>,
    pub instances: Vec<Versioned<InstanceRecord>>,
    /// The service records as the last pass wrote them.
    pub services: Vec<Versioned<ServiceRecord>>,
    /// Keys of deployment and job records that exist but do not decode: their instances are left
    /// alone rather than taken for orphans.
    pub undecodable_owners: BTreeSet<Vec<u8>>,
    /// Every node's last report and how long ago it came.
    pub reports: BTreeMap<NodeId, (Duration, NodeReport)>,
    /// How long this node has led: nodes that have not reported yet are not taken for down
    /// before the grace period has passed.
    pub leading_for: Duration,
}

/// Where the random part of new instance ids comes from.
pub trait IdSource {
    /// Six characters of `[a-z0-9]`; [`plan`] draws again when an id is taken.
    fn suffix(&mut self) -> String;
}

/// Random suffixes, as the running controller uses.
pub struct RandomIds;

impl IdSource for RandomIds {
    fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        (0..6).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
    }
}

/// One transaction to commit, and what it is for (`namespace/name`, or `orphans`).
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub what: String,
    pub txn: Txn,
}

/// The writes of one pass over every deployment and job, in the order to commit them.
/// `node_grace`: a node that has not reported for this long is down, and its instances lost.
pub fn plan(snap: &Snapshot, node_grace: Duration, now_ms: u64, ids: &mut impl IdSource) -> Result<Vec<Write>, Error> {
    let ids: &mut dyn IdSource = ids;
    let nodes: Vec<NodeView> = snap
        .reports
        .iter()
        .map(|(id, (age, r))| NodeView {
            id: *id,
            name: r.name.clone(),
            labels: r.labels.clone(),
            capacity: r.capacity,
            up: *age < node_grace,
        })
        .collect();
    let held = snap
        .instances
        .iter()
        .map(|i| {
            let i = &i.value;
            Held { node: i.node, resources: i.resources.0, owner: format!("{}/{}", i.namespace, i.owner) }
        })
        .collect();
    let taken = snap.instances.iter().map(|i| i.value.id.clone()).collect();
    let mut w = World { snap, node_grace, now_ms, nodes, held, taken, ids };
    let mut writes = Vec::new();

    for d in &snap.deployments {
        let rec = &d.value;
        let revisions = snap.revisions.get(&format!("{}/{}", rec.namespace, rec.name)).map_or(&[][..], Vec::as_slice);
        let stable = revisions
            .iter()
            .find(|r| r.number == rec.stable_revision)
            .map(|r| Stable { template: &r.template.0, resources: r.resources.0 });
        let mine = w.owned(OwnerKind::Deployment, &rec.namespace, &rec.name, &rec.uid);
        let step = rollout::step(rec, &w.views(&mine), stable, now_ms);
        let next = step.record.clone().unwrap_or_else(|| rec.clone());
        let create = match step.create {
            0 => vec![],
            n => vec![Create { revision: next.revision, count: n, unit: next.spec.0.template.clone() }],
        };
        let decided = Decided { next, create, stop: step.stop, delete: step.delete, changed: step.record.is_some() };
        writes.extend(w.owner_write(d, &mine, decided)?);
    }
    for j in &snap.jobs {
        let rec = &j.value;
        let mine = w.owned(OwnerKind::Job, &rec.namespace, &rec.name, &rec.uid);
        let step = jobs::step(rec, &w.views(&mine), now_ms);
        let next = step.record.clone().unwrap_or_else(|| rec.clone());
        let create = step
            .create
            .iter()
            .map(|(run, count)| Ok(Create { revision: *run, count: *count, unit: jobs::unit_for(&next, *run)? }))
            .collect::<Result<_, Error>>()?;
        let decided = Decided { next, create, stop: step.stop, delete: step.delete, changed: step.record.is_some() };
        writes.extend(w.owner_write(j, &mine, decided)?);
    }
    writes.extend(w.orphans()?);
    writes.extend(w.services()?);
    Ok(writes)
}

/// What the deployment and job records have in common, for the one write path of both.
trait Owner: Clone + PartialEq + serde::Serialize {
    const KIND: OwnerKind;
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
    fn uid(&self) -> &str;
    fn placement(&self) -> (Resources, &Placement);
    fn unplaced(&self) -> &Option<String>;
    fn set_unplaced(&mut self, why: Option<String>);
    fn steps(&mut self) -> &mut u64;
    fn push_event(&mut self, at_ms: u64, message: String);
}

/// Both records keep these under the same names; one body serves both.
macro_rules! owner {
    ($record:ty, $kind:expr) => {
        impl Owner for $record {
            const KIND: OwnerKind = $kind;
            fn namespace(&self) -> &str {
                &self.namespace
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn uid(&self) -> &str {
                &self.uid
            }
            fn placement(&self) -> (Resources, &Placement) {
                (self.spec.0.resources, &self.spec.0.placement)
            }
            fn unplaced(&self) -> &Option<String> {
                &self.unplaced
            }
            fn set_unplaced(&mut self, why: Option<String>) {
                self.unplaced = why;
            }
            fn steps(&mut self) -> &mut u64 {
                &mut self.steps
            }
            fn push_event(&mut self, at_ms: u64, message: String) {
                <$record>::push_event(self, at_ms, message);
            }
        }
    };
}

owner!(DeploymentRecord, OwnerKind::Deployment);
owner!(JobRecord, OwnerKind::Job);

/// New instances of one revision (a deployment's) or run (a job's).
struct Create {
    revision: u64,
    count: u32,
    unit: UnitSpec,
}

/// An owner's step, in the terms the write path needs.
struct Decided<R> {
    /// The record after the step.
    next: R,
    create: Vec<Create>,
    stop: Vec<String>,
    delete: Vec<String>,
    /// The step changed the record.
    changed: bool,
}

/// The state one pass plans from, and what it has planned so far.
struct World<'a> {
    snap: &'a Snapshot,
    node_grace: Duration,
    now_ms: u64,
    nodes: Vec<NodeView>,
    /// Resources held on each node, updated as instances are placed in this pass.
    held: Vec<Held>,
    /// Instance ids in use, those made in this pass included.
    taken: BTreeSet<String>,
    ids: &'a mut dyn IdSource,
}

impl<'a> World<'a> {
    fn observe(&self, i: &InstanceRecord) -> Observed {
        match self.snap.reports.get(&i.node) {
            Some((age, _)) if *age >= self.node_grace => Observed::NodeDown,
            Some((age, r)) => match r.instances.iter().find(|x| x.id == i.id) {
                // Ready for as long as the node said, plus the time since it said so.
                Some(x) if x.ready => Observed::Reported(InstanceReport {
                    ready_for_ms: x.ready_for_ms + age.as_millis() as u64,
                    ..x.clone()
                }),
                Some(x) => Observed::Reported(x.clone()),
                None if r.seen_revision >= self.mod_revision_of(&i.id) => Observed::Absent,
                None => Observed::Unknown,
            },
            None if self.snap.leading_for >= self.node_grace => Observed::NodeDown,
            None => Observed::Unknown,
        }
    }

    fn mod_revision_of(&self, id: &str) -> u64 {
        self.snap.instances.iter().find(|i| i.value.id == id).map_or(u64::MAX, |i| i.mod_revision)
    }

    fn owned(&self, kind: OwnerKind, namespace: &str, name: &str, uid: &str) -> Vec<&'a Versioned<InstanceRecord>> {
        let snap: &'a Snapshot = self.snap;
        snap.instances
            .iter()
            .filter(|i| {
                let i = &i.value;
                i.owner_kind == kind && i.namespace == namespace && i.owner == name && i.owner_uid == uid
            })
            .collect()
    }

    fn views(&self, mine: &[&Versioned<InstanceRecord>]) -> Vec<InstanceView> {
        mine.iter()
            .map(|v| {
                let i = &v.value;
                InstanceView {
                    id: i.id.clone(),
                    revision: i.revision,
                    node: i.node,
                    desired: i.desired,
                    created_ms: i.created_ms,
                    observed: self.observe(i),
                }
            })
            .collect()
    }

    /// The write of one owner's step, or none when the step changes nothing.
    fn owner_write<R: Owner>(
        &mut self,
        owner: &Versioned<R>,
        mine: &[&Versioned<InstanceRecord>],
        step: Decided<R>,
    ) -> Result<Option<Write>, Error> {
        let rec = &owner.value;
        let acts = !step.create.is_empty() || !step.stop.is_empty() || !step.delete.is_empty();
        if !acts && !step.changed && rec.unplaced().is_none() {
            return Ok(None);
        }
        let what = format!("{}/{}", rec.namespace(), rec.name());
        let mut next = step.next;
        let mut txn = Txn { compare: vec![unchanged(&owner.key, owner.mod_revision)], ..Txn::default() };
        stop_and_delete(&mut txn, mine, &step.stop, &step.delete)?;
        // What the step's record asks for: a rollback changes the template and its resources.
        let (resources, placement) = next.placement();
        let placement = placement.clone();
        let ask = Ask { owner: what.clone(), resources, placement: &placement };
        let mut unplaced = None;
        let now_ms = self.now_ms;
        for c in &step.create {
            let why = self.create(&mut txn, &ask, rec.name(), c.count, |id, node| {
                let mut unit = c.unit.clone();
                unit.name = UnitName::new(&id).map_err(|why| Error::InstanceName { id: id.clone(), why })?;
                Ok(InstanceRecord {
                    id,
                    namespace: rec.namespace().to_string(),
                    owner: rec.name().to_string(),
                    owner_kind: R::KIND,
                    owner_uid: rec.uid().to_string(),
                    revision: c.revision,
                    node,
                    unit: Json(unit),
                    resources: Json(resources),
                    desired: Desired::Run,
                    created_ms: now_ms,
                })
            })?;
            unplaced = unplaced.or(why);
        }
        if unplaced != *next.unplaced() {
            if let Some(why) = &unplaced {
                next.push_event(self.now_ms, format!("cannot place instances: {why}"));
            }
            next.set_unplaced(unplaced);
        }
        // Steps that touch instances also write the record: see `DeploymentRecord::steps`.
        if !txn.success.is_empty() {
            *next.steps() += 1;
        }
        if next != *rec {
            txn.success.push(put(owner.key.clone(), encode(&next)?));
        }
        if txn.success.is_empty() {
            return Ok(None);
        }
        Ok(Some(Write { what, txn }))
    }

    /// Places `count` instances made by `make(id, node)`; adds them to `txn`. Returns why some
    /// could not be placed. Instance ids are `<name>-<6 characters>`.
    fn create(
        &mut self,
        txn: &mut Txn,
        ask: &Ask<'_>,
        name: &str,
        count: u32,
        make: impl Fn(String, NodeId) -> Result<InstanceRecord, Error>,
    ) -> Result<Option<String>, Error> {
        let (placed, why) = scheduler::place(&self.nodes, &self.held, ask, count as usize);
        for node in placed {
            let id = self.new_id(name);
            let inst = make(id.clone(), node)?;
            self.held.push(Held { node, resources: ask.resources, owner: ask.owner.clone() });
            let key = keys::INSTANCES.key_of(node, &id);
            txn.compare.push(unchanged(key.as_bytes(), 0));
            txn.success.push(put(key.into_bytes(), encode(&inst)?));
        }
        Ok(why)
    }

    fn new_id(&mut self, name: &str) -> String {
        // Taken ids are few next to 36^6 suffixes; a bounded draw still guards a broken source.
        for _ in 0..1000 {
            let id = format!("{name}-{}", self.ids.suffix());
            if self.taken.insert(id.clone()) {
                return id;
            }
        }
        let id = format!("{name}-{}", self.taken.len());
        self.taken.insert(id.clone());
        id
    }

    /// Instances whose deployment or job is gone (its key, not a record that fails to decode,
    /// and not a record of the same name made anew): stopped, then deleted.
    fn orphans(&self) -> Result<Option<Write>, Error> {
        let owners: BTreeMap<(bool, String), &str> = self
            .snap
            .deployments
            .iter()
            .map(|d| ((true, format!("{}/{}", d.value.namespace, d.value.name)), d.value.uid.as_str()))
            .chain(
                self.snap
                    .jobs
                    .iter()
                    .map(|j| ((false, format!("{}/{}", j.value.namespace, j.value.name)), j.value.uid.as_str())),
            )
            .collect();
        let mut orphans = Vec::new();
        let (mut stop, mut delete) = (Vec::new(), Vec::new());
        for v in &self.snap.instances {
            let i = &v.value;
            let is_deployment = i.owner_kind == OwnerKind::Deployment;
            let key: String = if is_deployment {
                keys::DEPLOYMENTS.key_of(&i.namespace, &i.owner).into()
            } else {
                keys::JOBS.key_of(&i.namespace, &i.owner).into()
            };
            if self.snap.undecodable_owners.contains(key.as_bytes()) {
                continue;
            }
            if owners.get(&(is_deployment, format!("{}/{}", i.namespace, i.owner))) == Some(&i.owner_uid.as_str()) {
                continue;
            }
            let observed = self.observe(i);
            if observed == Observed::NodeDown || observed.is_down() {
                delete.push(i.id.clone());
            } else {
                stop.push(i.id.clone());
            }
            orphans.push(v);
        }
        let mut txn = Txn::default();
        stop_and_delete(&mut txn, &orphans, &stop, &delete)?;
        Ok((!txn.success.is_empty()).then(|| Write { what: "orphans".into(), txn }))
    }
}

/// Adds to `txn` the deletes and stop marks of `mine`, each compared on its mod revision.
fn stop_and_delete(
    txn: &mut Txn,
    mine: &[&Versioned<InstanceRecord>],
    stop: &[String],
    delete: &[String],
) -> Result<(), Error> {
    for v in mine {
        let i = &v.value;
        if delete.contains(&i.id) {
            txn.compare.push(unchanged(&v.key, v.mod_revision));
            txn.success.push(Op::Delete { range: KeyRange::Key(v.key.clone()) });
        } else if stop.contains(&i.id) && i.desired == Desired::Run {
            let mut stopped = i.clone();
            stopped.desired = Desired::Stop;
            txn.compare.push(unchanged(&v.key, v.mod_revision));
            txn.success.push(put(v.key.clone(), encode(&stopped)?));
        }
    }
    Ok(())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    encode_record(v).map_err(|source| Error::Encode { what: std::any::type_name::<T>(), source })
}

mod services;
#[cfg(test)]
mod tests;
