//! Deployments as the API serves them: apply (all documents in one transaction), views of
//! deployments and instances (store records joined with the nodes' reports, which the master
//! keeps in memory), delete, rollout undo/pause/resume and job dispatch. Every write is planned
//! by hsu-control (`apply::plan`, `edit`); this reads what they need and commits the result.

use std::collections::BTreeMap;

use hsu_control::apply;
use hsu_control::edit::{self, RolloutAction};
use hsu_model::deploy::{parse_documents, Document, Object, Source};
use hsu_model::keys::{self, At, Within};
use hsu_model::state::{DeploymentRecord, Desired, InstanceRecord, JobRecord, NodeReport, RevisionRecord};
use hsu_model::NodeId;
use hsu_store::{Consistency, KeyRange, KeyValue, Request, Txn, Versioned};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::Node;
use crate::peer::{PeerError, PeerRequest, ReportsView};
use crate::records;

pub use hsu_control::apply::AppliedObject;

/// A deployment with counts of its instances.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentView {
    pub record: DeploymentRecord,
    pub ready: u32,
    pub up_to_date: u32,
    pub available: u32,
    pub total: u32,
}

/// An instance with what its node last said about it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    pub record: InstanceRecord,
    pub node_name: String,
    pub state: String,
    pub ready: bool,
    pub ready_for_ms: u64,
    pub restarts: u32,
    pub message: Option<String>,
}

/// A uid for a new deployment or job: 16 random hex digits.
fn new_uid() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A record as read, in the form the planners take.
fn versioned<T>((kv, value): (KeyValue, T)) -> Versioned<T> {
    Versioned { key: kv.key, mod_revision: kv.mod_revision, value }
}

impl Node {
    /// The records in `within`, read linearizably.
    async fn list_records<V: DeserializeOwned>(&self, within: &Within<V>) -> Result<Vec<(KeyValue, V)>, PeerError> {
        let r = self.range(KeyRange::from(within), 0, Consistency::Linearizable).await?;
        r.kvs
            .into_iter()
            .map(|kv| {
                let v = records::decode(&kv.key, &kv.value)?;
                Ok((kv, v))
            })
            .collect()
    }

    /// The record at exactly `key`, with its key-value (for a compare on its mod revision).
    async fn record_at<V: DeserializeOwned>(&self, at: &At<V>) -> Result<Option<(KeyValue, V)>, PeerError> {
        let r = self.range(KeyRange::from(at), 1, Consistency::Linearizable).await?;
        r.kvs
            .into_iter()
            .next()
            .map(|kv| {
                let v = records::decode(&kv.key, &kv.value)?;
                Ok((kv, v))
            })
            .transpose()
    }

    /// Applies every document of `files` in one transaction; retried when another writer got
    /// there first (the controller updating a status, say). A dry run plans once and writes
    /// nothing.
    pub async fn apply_documents(
        &self,
        files: &[(String, String)],
        dry_run: bool,
    ) -> Result<Vec<AppliedObject>, PeerError> {
        let sources: Vec<Source<'_>> = files.iter().map(|(f, t)| Source { file: f, text: t }).collect();
        let docs = parse_documents(&sources).map_err(|e| PeerError::Invalid(e.0))?;
        if dry_run {
            return Ok(self.plan_documents(&docs).await?.1);
        }
        self.edit("deployments", || self.plan_documents(&docs)).await
    }

    /// Reads the records `docs` touch and plans the transaction that applies them.
    async fn plan_documents(&self, docs: &[Document]) -> Result<(Txn, Vec<AppliedObject>), PeerError> {
        let mut existing = apply::Existing::default();
        for doc in docs {
            match &doc.object {
                Object::Job(j) => {
                    let key = keys::JOBS.key_of(j.metadata.namespace.as_str(), j.metadata.name.as_str());
                    if let Some(v) = self.record_at(&key).await?.map(versioned) {
                        existing.jobs.insert(key.into(), v);
                    }
                }
                Object::Deployment(d) => {
                    let (ns, name) = (d.metadata.namespace.as_str(), d.metadata.name.as_str());
                    let key = keys::DEPLOYMENTS.key_of(ns, name);
                    if let Some(v) = self.record_at(&key).await?.map(versioned) {
                        existing.deployments.insert(key.into(), v);
                    }
                    existing.revisions.insert(format!("{ns}/{name}"), self.revisions(ns, name).await?);
                }
            }
        }
        let names_a_service =
            docs.iter().any(|d| matches!(&d.object, Object::Deployment(x) if x.spec.all_services().next().is_some()));
        if names_a_service {
            let all: Vec<(KeyValue, DeploymentRecord)> = self.list_records(&keys::DEPLOYMENTS.all()).await?;
            for (_, d) in all {
                for s in d.spec.0.all_services() {
                    existing.services.insert((d.namespace.clone(), s.name.as_str().to_string()), d.name.clone());
                }
            }
        }
        Ok(apply::plan(docs, &existing, records::now_ms(), &mut new_uid)?)
    }

    /// The master's reports (asked of the leader when this node does not lead).
    pub async fn reports_view(&self) -> Result<ReportsView, PeerError> {
        self.leader_call(PeerRequest::Reports).await
    }

    pub(crate) fn reports_as_leader(&self) -> ReportsView {
        let reports = self.reports().snapshot();
        ReportsView {
            reports: reports.into_iter().map(|(id, (age, r))| (id, age.as_millis() as u64, r)).collect(),
            grace_ms: self.tuning().node_grace.as_millis() as u64,
        }
    }

    /// Instances, optionally of one namespace and deployment, with their reported state.
    pub async fn instances_view(&self, namespace: &str, deployment: &str) -> Result<Vec<InstanceView>, PeerError> {
        let instances: Vec<(KeyValue, InstanceRecord)> = self.list_records(&keys::INSTANCES.all()).await?;
        let reports = self.reports_view().await?;
        let by_node: BTreeMap<NodeId, (u64, &NodeReport)> =
            reports.reports.iter().map(|(id, age, r)| (*id, (*age, r))).collect();
        let mut out = Vec::new();
        for (kv, i) in instances {
            if (!namespace.is_empty() && i.namespace != namespace) || (!deployment.is_empty() && i.owner != deployment)
            {
                continue;
            }
            let report = by_node.get(&i.node);
            let mut v = InstanceView {
                node_name: report.map_or_else(|| format!("node-{}", i.node), |(_, r)| r.name.clone()),
                state: "unknown".into(),
                ready: false,
                ready_for_ms: 0,
                restarts: 0,
                message: None,
                record: i,
            };
            match report {
                Some((age, r)) if *age < reports.grace_ms => match r.instances.iter().find(|x| x.id == v.record.id) {
                    Some(x) => {
                        v.state = x.state.clone();
                        v.ready = x.ready && v.record.desired == Desired::Run;
                        v.ready_for_ms = if v.ready { x.ready_for_ms + age } else { 0 };
                        v.restarts = x.restarts;
                        v.message = x.message.clone();
                    }
                    None if r.seen_revision >= kv.mod_revision && v.record.desired == Desired::Stop => {
                        v.state = "stopped".into()
                    }
                    None => v.state = "pending".into(),
                },
                Some(_) => v.message = Some("its node has not reported within the grace period".into()),
                None => v.message = Some("its node has not reported to this master yet".into()),
            }
            out.push(v);
        }
        Ok(out)
    }

    pub async fn deployments_view(&self, namespace: &str, name: &str) -> Result<Vec<DeploymentView>, PeerError> {
        let deployments: Vec<(KeyValue, DeploymentRecord)> = self.list_records(&keys::DEPLOYMENTS.all()).await?;
        let instances = self.instances_view(namespace, name).await?;
        let mut out = Vec::new();
        for (_, d) in deployments {
            if (!namespace.is_empty() && d.namespace != namespace) || (!name.is_empty() && d.name != name) {
                continue;
            }
            let mine: Vec<&InstanceView> =
                instances.iter().filter(|i| i.record.namespace == d.namespace && i.record.owner == d.name).collect();
            let min_ready = d.spec.0.strategy.min_ready.0.as_millis() as u64;
            let mine: Vec<&InstanceView> = mine.into_iter().filter(|i| i.record.owner_uid == d.uid).collect();
            let current = |i: &&&InstanceView| i.record.revision == d.revision && i.record.desired == Desired::Run;
            out.push(DeploymentView {
                ready: mine.iter().filter(|i| i.ready).count() as u32,
                up_to_date: mine.iter().filter(current).count() as u32,
                available: mine.iter().filter(current).filter(|i| i.ready && i.ready_for_ms >= min_ready).count()
                    as u32,
                total: mine.len() as u32,
                record: d,
            });
        }
        Ok(out)
    }

    async fn deployment(&self, namespace: &str, name: &str) -> Result<Versioned<DeploymentRecord>, PeerError> {
        let key = keys::DEPLOYMENTS.key_of(namespace, name);
        let found = self.record_at(&key).await?.map(versioned);
        found.ok_or_else(|| PeerError::NotFound(format!("deployment {namespace}/{name}")))
    }

    async fn job(&self, namespace: &str, name: &str) -> Result<Versioned<JobRecord>, PeerError> {
        let key = keys::JOBS.key_of(namespace, name);
        let found = self.record_at(&key).await?.map(versioned);
        found.ok_or_else(|| PeerError::NotFound(format!("job {namespace}/{name}")))
    }

    pub async fn revisions(&self, namespace: &str, name: &str) -> Result<Vec<RevisionRecord>, PeerError> {
        let r: Vec<(KeyValue, RevisionRecord)> = self.list_records(&keys::REVISIONS.of(namespace, name)).await?;
        Ok(r.into_iter().map(|(_, r)| r).collect())
    }

    /// Reads, plans and commits one edit of `what`: `attempt` reads what it edits and returns the
    /// transaction (compared on that read) and the answer; a transaction that writes nothing is
    /// not proposed. Tried again when another writer (the controller updating a status) changed
    /// a record in between.
    async fn edit<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, PeerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(Txn, T), PeerError>>,
    {
        for _attempt in 0..10 {
            let (txn, answer) = attempt().await?;
            if txn.success.is_empty() {
                return Ok(answer); // nothing to write: everything was as asked already
            }
            match self.propose(Request::Txn(txn)).await? {
                hsu_store::Response::Txn(r) if r.succeeded => return Ok(answer),
                hsu_store::Response::Txn(_) => continue,
                other => return Err(PeerError::Internal(format!("unexpected reply {other:?}"))),
            }
        }
        Err(hsu_store::Error::Unavailable(format!("the {what} kept changing; try again")).into())
    }

    /// Deletes the deployment and its revisions; the controller stops its instances.
    pub async fn delete_deployment(&self, namespace: &str, name: &str) -> Result<(), PeerError> {
        self.edit("deployment", || async {
            Ok((edit::delete_deployment(&self.deployment(namespace, name).await?), ()))
        })
        .await
    }

    /// `undo`, `pause` or `resume`.
    pub async fn rollout_action(
        &self,
        namespace: &str,
        name: &str,
        action: &str,
        to_revision: Option<u64>,
    ) -> Result<DeploymentRecord, PeerError> {
        let action = RolloutAction::parse(action, to_revision)?;
        self.edit("deployment", || async {
            let current = self.deployment(namespace, name).await?;
            let revisions = match action {
                RolloutAction::Undo { .. } => self.revisions(namespace, name).await?,
                RolloutAction::Pause | RolloutAction::Resume => vec![],
            };
            Ok(edit::rollout(&current, &revisions, action, records::now_ms())?)
        })
        .await
    }
}

impl Node {
    /// Jobs, optionally of one namespace and name.
    pub async fn jobs_view(&self, namespace: &str, name: &str) -> Result<Vec<JobRecord>, PeerError> {
        let jobs: Vec<(KeyValue, JobRecord)> = self.list_records(&keys::JOBS.all()).await?;
        Ok(jobs
            .into_iter()
            .map(|(_, j)| j)
            .filter(|j| (namespace.is_empty() || j.namespace == namespace) && (name.is_empty() || j.name == name))
            .collect())
    }

    /// Starts a new run of an applied job with `env` added to its units' environment; returns
    /// the run's number.
    pub async fn dispatch_job(
        &self,
        namespace: &str,
        name: &str,
        env: BTreeMap<String, String>,
    ) -> Result<u64, PeerError> {
        self.edit("job", || async {
            Ok(edit::dispatch_job(&self.job(namespace, name).await?, env.clone(), records::now_ms())?)
        })
        .await
    }

    /// Deletes a job; the controller stops its instances.
    pub async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), PeerError> {
        self.edit("job", || async { Ok((edit::delete_job(&self.job(namespace, name).await?), ())) }).await
    }
}
