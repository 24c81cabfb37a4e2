//! Deployments as the API serves them: apply (all documents in one transaction), views of
//! deployments and instances (store records joined with the nodes' reports, which the master
//! keeps in memory), delete, and rollout undo/pause/resume. The decisions are hsu-control's.

use std::collections::BTreeMap;

use hsu_control::{apply, rollout};
use hsu_model::deploy::{parse_documents, Object, Source};
use hsu_model::state::{self, DeploymentRecord, Desired, InstanceRecord, JobRecord, NodeReport, RevisionRecord};
use hsu_model::NodeId;
use hsu_store::record::unchanged;
use hsu_store::{Consistency, KeyRange, KeyValue, Op, Request, Txn, Versioned};
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

fn txn_succeeded(r: hsu_store::Response) -> bool {
    matches!(r, hsu_store::Response::Txn(t) if t.succeeded)
}

fn put<T: Serialize>(key: String, value: &T) -> Result<Op, crate::records::RecordError> {
    Ok(hsu_store::record::put(key, records::encode(value)?))
}

/// A record as read, in the form the planners take.
fn versioned<T>((kv, value): (KeyValue, T)) -> Versioned<T> {
    Versioned { key: kv.key, mod_revision: kv.mod_revision, value }
}

impl Node {
    async fn list_records<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(KeyValue, T)>, PeerError> {
        let r = self.range(KeyRange::Prefix(prefix.as_bytes().to_vec()), 0, Consistency::Linearizable).await?;
        r.kvs
            .into_iter()
            .map(|kv| {
                let v = records::decode(&kv.key, &kv.value)?;
                Ok((kv, v))
            })
            .collect()
    }

    /// The record at exactly `key`, with its key-value (for a compare on its mod revision).
    async fn record_at<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(KeyValue, T)>, PeerError> {
        let r = self.range(KeyRange::Key(key.as_bytes().to_vec()), 1, Consistency::Linearizable).await?;
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
    /// there first (the controller updating a status, say).
    pub async fn apply_documents(
        &self,
        files: &[(String, String)],
        dry_run: bool,
    ) -> Result<Vec<AppliedObject>, PeerError> {
        let sources: Vec<Source<'_>> = files.iter().map(|(f, t)| Source { file: f, text: t }).collect();
        let docs = parse_documents(&sources).map_err(|e| PeerError::Invalid(e.0))?;
        for _attempt in 0..10 {
            let mut existing = apply::Existing::default();
            for doc in &docs {
                match &doc.object {
                    Object::Job(j) => {
                        let key = state::job_key(j.metadata.namespace.as_str(), j.metadata.name.as_str());
                        if let Some(v) = self.record_at::<JobRecord>(&key).await?.map(versioned) {
                            existing.jobs.insert(key, v);
                        }
                    }
                    Object::Deployment(d) => {
                        let (ns, name) = (d.metadata.namespace.as_str(), d.metadata.name.as_str());
                        let key = state::deployment_key(ns, name);
                        if let Some(v) = self.record_at::<DeploymentRecord>(&key).await?.map(versioned) {
                            existing.deployments.insert(key, v);
                        }
                        let revisions: Vec<(KeyValue, RevisionRecord)> =
                            self.list_records(&state::revisions_prefix(ns, name)).await?;
                        existing
                            .revisions
                            .insert(format!("{ns}/{name}"), revisions.into_iter().map(|(_, r)| r).collect());
                    }
                }
            }
            let (txn, applied) = apply::plan(&docs, &existing, records::now_ms(), &mut new_uid)
                .map_err(|e| PeerError::Internal(e.to_string()))?;
            if dry_run || txn.success.is_empty() {
                return Ok(applied);
            }
            match self.propose(Request::Txn(txn)).await? {
                hsu_store::Response::Txn(r) if r.succeeded => return Ok(applied),
                hsu_store::Response::Txn(_) => continue,
                other => return Err(PeerError::Internal(format!("unexpected reply {other:?}"))),
            }
        }
        Err(hsu_store::Error::Unavailable("the deployments kept changing while applying; try again".into()).into())
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
        let instances: Vec<(KeyValue, InstanceRecord)> = self.list_records(state::INSTANCES).await?;
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
        let deployments: Vec<(KeyValue, DeploymentRecord)> = self.list_records(state::DEPLOYMENTS).await?;
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

    async fn deployment(&self, namespace: &str, name: &str) -> Result<(KeyValue, DeploymentRecord), PeerError> {
        let key = state::deployment_key(namespace, name);
        self.record_at(&key).await?.ok_or_else(|| PeerError::NotFound(format!("deployment {namespace}/{name}")))
    }

    pub async fn revisions(&self, namespace: &str, name: &str) -> Result<Vec<RevisionRecord>, PeerError> {
        let r: Vec<(KeyValue, RevisionRecord)> = self.list_records(&state::revisions_prefix(namespace, name)).await?;
        Ok(r.into_iter().map(|(_, r)| r).collect())
    }

    /// Deletes the deployment and its revisions; the controller stops its instances.
    pub async fn delete_deployment(&self, namespace: &str, name: &str) -> Result<(), PeerError> {
        for _attempt in 0..10 {
            let (kv, _) = self.deployment(namespace, name).await?;
            let txn = Txn {
                compare: vec![unchanged(&kv.key, kv.mod_revision)],
                success: vec![
                    Op::Delete { range: KeyRange::Key(kv.key.clone()) },
                    Op::Delete { range: KeyRange::Prefix(state::revisions_prefix(namespace, name).into_bytes()) },
                ],
                failure: vec![],
            };
            if txn_succeeded(self.propose(Request::Txn(txn)).await?) {
                return Ok(());
            }
        }
        Err(hsu_store::Error::Unavailable("the deployment kept changing; try again".into()).into())
    }

    /// `undo`, `pause` or `resume`, retried when the controller wrote the record meanwhile.
    pub async fn rollout_action(
        &self,
        namespace: &str,
        name: &str,
        action: &str,
        to_revision: Option<u64>,
    ) -> Result<DeploymentRecord, PeerError> {
        for _attempt in 0..10 {
            let (kv, rec) = self.deployment(namespace, name).await?;
            let now = records::now_ms();
            let next = match action {
                "undo" => {
                    let revisions = self.revisions(namespace, name).await?;
                    rollout::undo(&rec, &revisions, to_revision, now).map_err(|e| PeerError::Invalid(e.to_string()))?
                }
                "pause" => {
                    let mut n = rec.clone();
                    n.paused = true;
                    n.push_event(now, "paused".into());
                    n
                }
                "resume" => {
                    let mut n = rec.clone();
                    n.paused = false;
                    n.canary_passed = true;
                    n.progress_ms = now;
                    n.push_event(now, "resumed".into());
                    n
                }
                other => {
                    return Err(PeerError::Invalid(format!(
                        "unknown rollout action {other:?}; expected undo, pause or resume"
                    )))
                }
            };
            let txn = Txn {
                compare: vec![unchanged(&kv.key, kv.mod_revision)],
                success: vec![put(state::deployment_key(namespace, name), &next)?],
                failure: vec![],
            };
            if txn_succeeded(self.propose(Request::Txn(txn)).await?) {
                return Ok(next);
            }
        }
        Err(hsu_store::Error::Unavailable("the deployment kept changing; try again".into()).into())
    }
}

impl Node {
    /// Jobs, optionally of one namespace and name.
    pub async fn jobs_view(&self, namespace: &str, name: &str) -> Result<Vec<JobRecord>, PeerError> {
        let jobs: Vec<(KeyValue, JobRecord)> = self.list_records(state::JOBS).await?;
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
        env: std::collections::BTreeMap<String, String>,
    ) -> Result<u64, PeerError> {
        for k in env.keys() {
            hsu_model::unit::EnvName::new(k).map_err(|e| PeerError::Invalid(format!("env: {e}")))?;
        }
        let key = state::job_key(namespace, name);
        for _attempt in 0..10 {
            let (kv, mut rec): (KeyValue, JobRecord) =
                self.record_at(&key).await?.ok_or_else(|| PeerError::NotFound(format!("job {namespace}/{name}")))?;
            let run = rec.start_run(env.clone(), records::now_ms());
            let txn = Txn {
                compare: vec![unchanged(&kv.key, kv.mod_revision)],
                success: vec![put(key.clone(), &rec)?],
                failure: vec![],
            };
            if txn_succeeded(self.propose(Request::Txn(txn)).await?) {
                return Ok(run);
            }
        }
        Err(hsu_store::Error::Unavailable("the job kept changing; try again".into()).into())
    }

    /// Deletes a job; the controller stops its instances.
    pub async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), PeerError> {
        let key = state::job_key(namespace, name);
        for _attempt in 0..10 {
            let (kv, _): (KeyValue, JobRecord) =
                self.record_at(&key).await?.ok_or_else(|| PeerError::NotFound(format!("job {namespace}/{name}")))?;
            let txn = Txn {
                compare: vec![unchanged(&kv.key, kv.mod_revision)],
                success: vec![Op::Delete { range: KeyRange::Key(kv.key.clone()) }],
                failure: vec![],
            };
            if txn_succeeded(self.propose(Request::Txn(txn)).await?) {
                return Ok(());
            }
        }
        Err(hsu_store::Error::Unavailable("the job kept changing; try again".into()).into())
    }
}
