//! The controller loop, run by every server and active only while it leads. Each pass reads the
//! deployments, revisions and instances from the store, the nodes' last reports from
//! [`Reports`] (memory only), runs [`rollout::step`] and [`scheduler::place`] per deployment and
//! writes the outcome in one transaction per deployment, compared on the mod revision of every
//! record it read for that deployment. A pass that loses a race writes nothing and the next pass
//! starts over from the store, so nothing is kept between passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsu_model::state::{
    self, DeploymentRecord, Desired, InstanceRecord, InstanceReport, JobRecord, Json, NodeReport, OwnerKind,
    RevisionRecord,
};
use hsu_model::unit::UnitName;
use hsu_model::{decode_record, encode_record, NodeId};
use hsu_store::{Compare, CompareOp, CompareTarget, KeyRange, KeyValue, Op, Store, Txn};
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::jobs;
use crate::rollout::{self, InstanceView, Observed, Stable};
use crate::scheduler::{self, Ask, Held, NodeView};

/// The nodes' last reports, kept by the leader (heartbeats never go through Raft).
#[derive(Default)]
pub struct Reports {
    inner: Mutex<BTreeMap<NodeId, (Instant, NodeReport)>>,
    changed: Notify,
}

impl Reports {
    pub fn record(&self, report: NodeReport) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let changed = map.get(&report.node).is_none_or(|(_, old)| old.instances != report.instances);
        map.insert(report.node, (Instant::now(), report));
        drop(map);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Every node's last report and how long ago it came.
    pub fn snapshot(&self) -> BTreeMap<NodeId, (Duration, NodeReport)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(id, (at, r))| (*id, (at.elapsed(), r.clone()))).collect()
    }

    /// Forgets everything (a node that stops leading must not trust old reports later).
    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A node that has not reported for this long is down; its instances are replaced.
    pub node_grace: Duration,
    /// The longest pause between passes: changes of deployments, jobs and instances and changed
    /// reports start one at once.
    pub interval: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { node_grace: Duration::from_secs(10), interval: Duration::from_millis(250) }
    }
}

/// Runs until `stop` resolves: passes while this store's member leads.
pub async fn run(
    store: Store,
    reports: Arc<Reports>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut status = store.status_watch();
    loop {
        // Wait to lead.
        let lead = status.wait_for(|s| s.leader == Some(store.id()) && s.is_leader());
        let leading = tokio::select! {
            l = lead => l,
            () = &mut stop => return,
        };
        let Ok(leading) = leading else { return };
        let term = leading.term;
        info!(term, "leading: the controllers run here");
        reports.clear();
        let since = Instant::now();
        let from = store.applied_index() + 1;
        let mut watchers: Vec<hsu_store::Watcher> = [state::DEPLOYMENTS, state::JOBS, state::INSTANCES]
            .iter()
            .filter_map(|p| store.watch(KeyRange::Prefix(p.as_bytes().to_vec()), from).ok())
            .collect();
        loop {
            let still = {
                let s = status.current();
                s.leader == Some(store.id()) && s.term == term
            };
            if !still {
                info!("no longer leading: the controllers stop here");
                reports.clear();
                break;
            }
            if let Err(e) = pass(&store, &reports, &config, since.elapsed()).await {
                debug!("controller pass: {e}");
            }
            // The next pass: when deployments, jobs or instances change, when a report changes,
            // or after `interval` (deadlines, node liveness, leadership).
            tokio::select! {
                () = tokio::time::sleep(config.interval) => {}
                () = reports.changed.notified() => {}
                () = state_changed(&mut watchers) => {}
                () = &mut stop => return,
            }
        }
    }
}

fn list<T: serde::de::DeserializeOwned>(store: &Store, prefix: &str) -> Vec<(KeyValue, T)> {
    let r = store.range_local(&KeyRange::Prefix(prefix.as_bytes().to_vec()), 0);
    r.kvs
        .into_iter()
        .filter_map(|kv| match decode_record::<T>(&kv.value) {
            Ok(v) => Some((kv, v)),
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(&kv.key), "record does not decode: {e}");
                None
            }
        })
        .collect()
}

fn same(key: &[u8], revision: u64) -> Compare {
    Compare { key: key.to_vec(), target: CompareTarget::ModRevision(revision), op: CompareOp::Equal }
}

fn put(key: String, value: Vec<u8>) -> Op {
    Op::Put { key: key.into_bytes(), value, lease: 0 }
}

/// The state one pass works from.
struct World<'a> {
    now_ms: u64,
    config: &'a ControllerConfig,
    leading_for: Duration,
    reports: BTreeMap<NodeId, (Duration, NodeReport)>,
    instances: Vec<(KeyValue, InstanceRecord)>,
    nodes: Vec<NodeView>,
    /// Resources held on each node, updated as instances are placed in this pass.
    held: Vec<Held>,
    /// Instance ids in use, those made in this pass included.
    taken: BTreeSet<String>,
}

impl World<'_> {
    fn observe(&self, i: &InstanceRecord) -> Observed {
        match self.reports.get(&i.node) {
            Some((age, _)) if *age >= self.config.node_grace => Observed::NodeDown,
            Some((age, r)) => match r.instances.iter().find(|x| x.id == i.id) {
                // Ready for as long as the node said, plus the time since it said so.
                Some(x) if x.ready => Observed::Reported(InstanceReport {
                    ready_for_ms: x.ready_for_ms + age.as_millis() as u64,
                    ..x.clone()
                }),
                Some(x) => Observed::Reported(x.clone()),
                None if r.seen_revision >= i_mod(&self.instances, &i.id) => Observed::Absent,
                None => Observed::Unknown,
            },
            None if self.leading_for >= self.config.node_grace => Observed::NodeDown,
            None => Observed::Unknown,
        }
    }

    fn owned(&self, kind: OwnerKind, namespace: &str, name: &str, uid: &str) -> Vec<(KeyValue, InstanceRecord)> {
        self.instances
            .iter()
            .filter(|(_, i)| i.owner_kind == kind && i.namespace == namespace && i.owner == name && i.owner_uid == uid)
            .cloned()
            .collect()
    }

    fn views(&self, mine: &[(KeyValue, InstanceRecord)]) -> Vec<InstanceView> {
        mine.iter()
            .map(|(_, i)| InstanceView {
                id: i.id.clone(),
                revision: i.revision,
                node: i.node,
                desired: i.desired,
                created_ms: i.created_ms,
                observed: self.observe(i),
            })
            .collect()
    }

    /// Places `count` instances made by `make(id, node)`; adds them to `txn`. Returns why some
    /// could not be placed.
    /// Instance ids are `<name>-<6 characters>`.
    fn create(
        &mut self,
        txn: &mut Txn,
        ask: &Ask<'_>,
        name: &str,
        count: u32,
        make: impl Fn(String, NodeId) -> Result<InstanceRecord, String>,
    ) -> Result<Option<String>, String> {
        let (placed, why) = scheduler::place(&self.nodes, &self.held, ask, count as usize);
        for node in placed {
            let id = instance_id(name, &self.taken);
            self.taken.insert(id.clone());
            let inst = make(id.clone(), node)?;
            self.held.push(Held { node, resources: ask.resources, owner: ask.owner.clone() });
            let key = state::instance_key(node, &id);
            txn.compare.push(same(key.as_bytes(), 0));
            txn.success.push(put(key, encode(&inst)?));
        }
        Ok(why)
    }
}

/// Adds to `txn` the deletes and stop marks of `mine`, each compared on its mod revision.
fn stop_and_delete(
    txn: &mut Txn,
    mine: &[(KeyValue, InstanceRecord)],
    stop: &[String],
    delete: &[String],
) -> Result<(), String> {
    for (kv, i) in mine {
        if delete.contains(&i.id) {
            txn.compare.push(same(&kv.key, kv.mod_revision));
            txn.success.push(Op::Delete { range: KeyRange::Key(kv.key.clone()) });
        } else if stop.contains(&i.id) && i.desired == Desired::Run {
            let mut stopped = i.clone();
            stopped.desired = Desired::Stop;
            txn.compare.push(same(&kv.key, kv.mod_revision));
            txn.success.push(put(state::instance_key(i.node, &i.id), encode(&stopped)?));
        }
    }
    Ok(())
}

async fn commit(store: &Store, txn: Txn, what: &str) -> Result<(), String> {
    if txn.success.is_empty() {
        return Ok(());
    }
    match store.txn(txn).await {
        Ok(r) if r.succeeded => Ok(()),
        Ok(_) => {
            debug!(%what, "step lost a race; next pass");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Resolves when any of `watchers` sees a change (never, when there are none), after taking
/// every change already there: one pass covers them all. A watcher that fails (its history was
/// compacted) is dropped; the interval still starts passes.
async fn state_changed(watchers: &mut Vec<hsu_store::Watcher>) {
    use futures::FutureExt;
    if watchers.is_empty() {
        return std::future::pending().await;
    }
    let (result, index, rest) = futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.next()))).await;
    drop(rest);
    if result.is_err() {
        watchers.remove(index);
        return;
    }
    for w in watchers.iter_mut() {
        for _ in 0..10_000 {
            match w.next().now_or_never() {
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
}

/// Owners under `prefix` as `namespace/name` → their uid, or `None` for a record that does not
/// decode (whose instances are then left alone rather than taken for orphans).
fn owner_keys<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    uid: impl Fn(&T) -> String,
) -> BTreeMap<String, Option<String>> {
    store
        .range_local(&KeyRange::Prefix(prefix.as_bytes().to_vec()), 0)
        .kvs
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            (key, decode_record::<T>(&kv.value).ok().map(|r| uid(&r)))
        })
        .collect()
}

/// One pass over every deployment and job. `leading_for`: how long this node has led, so that
/// nodes that have not reported yet are not taken for down before the grace period has passed.
pub async fn pass(
    store: &Store,
    reports: &Reports,
    config: &ControllerConfig,
    leading_for: Duration,
) -> Result<(), String> {
    let reports = reports.snapshot();
    let nodes: Vec<NodeView> = reports
        .iter()
        .map(|(id, (age, r))| NodeView {
            id: *id,
            name: r.name.clone(),
            labels: r.labels.clone(),
            capacity: r.capacity,
            up: *age < config.node_grace,
        })
        .collect();
    let instances: Vec<(KeyValue, InstanceRecord)> = list(store, state::INSTANCES);
    let held = instances
        .iter()
        .map(|(_, i)| Held { node: i.node, resources: i.resources.0, owner: format!("{}/{}", i.namespace, i.owner) })
        .collect();
    let taken = instances.iter().map(|(_, i)| i.id.clone()).collect();
    let mut w = World { now_ms: now_ms(), config, leading_for, reports, instances, nodes, held, taken };
    let now_ms = w.now_ms;

    for (kv, rec) in list::<DeploymentRecord>(store, state::DEPLOYMENTS) {
        let owner = format!("{}/{}", rec.namespace, rec.name);
        let mine = w.owned(OwnerKind::Deployment, &rec.namespace, &rec.name, &rec.uid);
        let views = w.views(&mine);
        let revisions: Vec<(KeyValue, RevisionRecord)> =
            list(store, &state::revisions_prefix(&rec.namespace, &rec.name));
        let stable = revisions
            .iter()
            .find(|(_, r)| r.number == rec.stable_revision)
            .map(|(_, r)| Stable { template: &r.template.0, resources: r.resources.0 });
        let step = rollout::step(&rec, &views, stable, now_ms);
        let acts = step.create > 0 || !step.stop.is_empty() || !step.delete.is_empty();
        if !acts && step.record.is_none() && rec.unplaced.is_none() {
            continue;
        }
        let mut next = step.record.clone().unwrap_or_else(|| rec.clone());

        let mut txn = Txn { compare: vec![same(&kv.key, kv.mod_revision)], ..Txn::default() };
        stop_and_delete(&mut txn, &mine, &step.stop, &step.delete)?;
        if step.create > 0 {
            let spec = next.spec.0.clone();
            let (ns, name, uid, revision) = (rec.namespace.clone(), rec.name.clone(), rec.uid.clone(), next.revision);
            let ask = Ask { owner: owner.clone(), resources: spec.resources, placement: &spec.placement };
            let why = w.create(&mut txn, &ask, &rec.name, step.create, |id, node| {
                let mut unit = spec.template.clone();
                unit.name = UnitName::new(&id).map_err(|e| format!("instance name {id}: {e}"))?;
                Ok(InstanceRecord {
                    id,
                    namespace: ns.clone(),
                    owner: name.clone(),
                    owner_kind: OwnerKind::Deployment,
                    owner_uid: uid.clone(),
                    revision,
                    node,
                    unit: Json(unit),
                    resources: Json(spec.resources),
                    desired: Desired::Run,
                    created_ms: now_ms,
                })
            })?;
            if why != next.unplaced {
                if let Some(w) = &why {
                    next.push_event(now_ms, format!("cannot place instances: {w}"));
                }
                next.unplaced = why;
            }
        } else if next.unplaced.is_some() {
            next.unplaced = None;
        }
        // Steps that touch instances also write the record: see `DeploymentRecord::steps`.
        if !txn.success.is_empty() {
            next.steps += 1;
        }
        if next != rec {
            txn.success.push(put(state::deployment_key(&rec.namespace, &rec.name), encode(&next)?));
        }
        debug!(deployment = %owner, create = step.create, stop = ?step.stop, delete = ?step.delete, "rollout step");
        commit(store, txn, &owner).await?;
    }

    for (kv, rec) in list::<JobRecord>(store, state::JOBS) {
        let owner = format!("{}/{}", rec.namespace, rec.name);
        let mine = w.owned(OwnerKind::Job, &rec.namespace, &rec.name, &rec.uid);
        let views = w.views(&mine);
        let step = jobs::step(&rec, &views, now_ms);
        let acts = !step.create.is_empty() || !step.stop.is_empty() || !step.delete.is_empty();
        if !acts && step.record.is_none() && rec.unplaced.is_none() {
            continue;
        }
        let mut next = step.record.clone().unwrap_or_else(|| rec.clone());

        let mut txn = Txn { compare: vec![same(&kv.key, kv.mod_revision)], ..Txn::default() };
        stop_and_delete(&mut txn, &mine, &step.stop, &step.delete)?;
        let mut unplaced = None;
        for (run, count) in &step.create {
            let spec = next.spec.0.clone();
            let unit = jobs::unit_for(&next, *run)?;
            let (ns, name, uid) = (rec.namespace.clone(), rec.name.clone(), rec.uid.clone());
            let ask = Ask { owner: owner.clone(), resources: spec.resources, placement: &spec.placement };
            let why = w.create(&mut txn, &ask, &rec.name, *count, |id, node| {
                let mut unit = unit.clone();
                unit.name = UnitName::new(&id).map_err(|e| format!("instance name {id}: {e}"))?;
                Ok(InstanceRecord {
                    id,
                    namespace: ns.clone(),
                    owner: name.clone(),
                    owner_kind: OwnerKind::Job,
                    owner_uid: uid.clone(),
                    revision: *run,
                    node,
                    unit: Json(unit),
                    resources: Json(spec.resources),
                    desired: Desired::Run,
                    created_ms: now_ms,
                })
            })?;
            unplaced = unplaced.or(why);
        }
        if unplaced != next.unplaced {
            if let Some(w) = &unplaced {
                next.push_event(now_ms, format!("cannot place instances: {w}"));
            }
            next.unplaced = unplaced;
        }
        if !txn.success.is_empty() {
            next.steps += 1;
        }
        if next != rec {
            txn.success.push(put(state::job_key(&rec.namespace, &rec.name), encode(&next)?));
        }
        debug!(job = %owner, create = ?step.create, stop = ?step.stop, delete = ?step.delete, "job step");
        commit(store, txn, &owner).await?;
    }

    // Instances whose deployment or job is gone (its key, not just a record that fails to
    // decode): stop them, then delete their records.
    let deployments = owner_keys(store, state::DEPLOYMENTS, |d: &DeploymentRecord| d.uid.clone());
    let jobs = owner_keys(store, state::JOBS, |j: &JobRecord| j.uid.clone());
    let mut orphans = Vec::new();
    let (mut stop, mut delete) = (Vec::new(), Vec::new());
    for (kv, i) in &w.instances {
        let owners = match i.owner_kind {
            OwnerKind::Deployment => &deployments,
            OwnerKind::Job => &jobs,
        };
        match owners.get(&format!("{}/{}", i.namespace, i.owner)) {
            Some(None) => continue,
            Some(Some(uid)) if *uid == i.owner_uid => continue,
            _ => {}
        }
        let observed = w.observe(i);
        if observed == Observed::NodeDown || observed.is_down() {
            delete.push(i.id.clone());
        } else {
            stop.push(i.id.clone());
        }
        orphans.push((kv.clone(), i.clone()));
    }
    let mut txn = Txn::default();
    stop_and_delete(&mut txn, &orphans, &stop, &delete)?;
    commit(store, txn, "orphans").await
}

fn i_mod(instances: &[(KeyValue, InstanceRecord)], id: &str) -> u64 {
    instances.iter().find(|(_, i)| i.id == id).map_or(u64::MAX, |(kv, _)| kv.mod_revision)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    encode_record(v).map_err(|e| e.to_string())
}

/// `<name>-<6 random characters>`, not used by any instance yet.
fn instance_id(name: &str, taken: &BTreeSet<String>) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    loop {
        let suffix: String = (0..6).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
        let id = format!("{name}-{suffix}");
        if !taken.contains(&id) {
            return id;
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
