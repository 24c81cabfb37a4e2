//! Applying deployment and job documents, as a pure function: [`plan`] takes the parsed
//! documents and the records they touch as the caller read them ([`Existing`]), and returns the
//! one transaction that writes them all (compared on every record read, so a concurrent writer
//! makes it fail as a whole and the caller reads again) with what happened to each object.
//! [`rollout::apply`] and [`jobs::apply`] decide each record; this puts them together.

use std::collections::BTreeMap;

use hsu_model::deploy::{Document, Object};
use hsu_model::keys;
use hsu_model::state::{DeploymentRecord, JobRecord, RevisionRecord};
use hsu_store::record::{put_at, unchanged};
use hsu_store::{KeyRange, Op, Txn, Versioned};
use serde::Serialize;

use crate::{jobs, rollout, Error};

/// The records the documents touch, as read: by record key, and each deployment's revisions by
/// `namespace/name`. A key that is missing has no record yet.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub deployments: BTreeMap<String, Versioned<DeploymentRecord>>,
    pub revisions: BTreeMap<String, Vec<RevisionRecord>>,
    pub jobs: BTreeMap<String, Versioned<JobRecord>>,
    /// The services that deployments already provide, `(namespace, service)` to the deployment:
    /// read only when a document names a service.
    pub services: BTreeMap<(String, String), String>,
}

/// One applied object and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedObject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// created, configured or unchanged.
    pub result: &'static str,
    /// The deployment's revision, or the job's latest run.
    pub revision: u64,
}

/// The transaction that applies `docs` over `existing` at `now_ms`, and what it does to each
/// object. `uid` makes the uid of each new deployment or job.
pub fn plan(
    docs: &[Document],
    existing: &Existing,
    now_ms: u64,
    uid: &mut impl FnMut() -> String,
) -> Result<(Txn, Vec<AppliedObject>), Error> {
    check_services(docs, existing)?;
    let mut txn = Txn::default();
    let mut applied = Vec::new();
    let encode = |e| Error::Encode { what: "deployment or job", source: e };
    for doc in docs {
        match &doc.object {
            Object::Job(j) => {
                let (ns, name) = (j.metadata.namespace.as_str(), j.metadata.name.as_str());
                let key = keys::JOBS.key_of(ns, name);
                let old = existing.jobs.get(key.as_str());
                txn.compare.push(unchanged(&key, old.map_or(0, |v| v.mod_revision)));
                let next = jobs::apply(old.map(|v| &v.value), j, &uid(), now_ms);
                let result = match (old, &next) {
                    (None, _) => "created",
                    (Some(_), None) => "unchanged",
                    (Some(_), Some(_)) => "configured",
                };
                let run = next.as_ref().or(old.map(|v| &v.value)).and_then(|r| r.runs.last()).map_or(0, |r| r.id);
                if let Some(rec) = next {
                    txn.success.push(put_at(&key, &rec).map_err(encode)?);
                }
                applied.push(AppliedObject {
                    kind: "Job".into(),
                    namespace: ns.into(),
                    name: name.into(),
                    result,
                    revision: run,
                });
            }
            Object::Deployment(d) => {
                let (ns, name) = (d.metadata.namespace.as_str(), d.metadata.name.as_str());
                let key = keys::DEPLOYMENTS.key_of(ns, name);
                let old = existing.deployments.get(key.as_str());
                let revisions = existing.revisions.get(&format!("{ns}/{name}")).map_or(&[][..], Vec::as_slice);
                let a = rollout::apply(old.map(|v| &v.value), revisions, d, &uid(), now_ms);
                txn.compare.push(unchanged(&key, old.map_or(0, |v| v.mod_revision)));
                let result = match (old, a.unchanged) {
                    (None, _) => "created",
                    (Some(_), true) => "unchanged",
                    (Some(_), false) => "configured",
                };
                if !a.unchanged {
                    txn.success.push(put_at(&key, &a.record).map_err(encode)?);
                }
                if let Some(r) = &a.new_revision {
                    txn.success.push(put_at(&keys::REVISIONS.key_of(ns, name, r.number), r).map_err(encode)?);
                }
                for n in &a.prune {
                    txn.success
                        .push(Op::Delete { range: KeyRange::Key(keys::REVISIONS.key_of(ns, name, *n).into_bytes()) });
                }
                applied.push(AppliedObject {
                    kind: "Deployment".into(),
                    namespace: ns.into(),
                    name: name.into(),
                    result,
                    revision: a.record.revision,
                });
            }
        }
    }
    Ok((txn, applied))
}

/// A service is provided by one deployment of its namespace: a document may not name one that
/// another deployment provides (unless the same apply takes it from that one), nor two documents
/// the same.
fn check_services(docs: &[Document], existing: &Existing) -> Result<(), Error> {
    fn deployments(d: &Document) -> Option<(&Document, &hsu_model::deploy::Deployment)> {
        match &d.object {
            Object::Deployment(x) => Some((d, x)),
            Object::Job(_) => None,
        }
    }
    let batch: Vec<(&str, &str)> = docs
        .iter()
        .filter_map(deployments)
        .map(|(_, d)| (d.metadata.namespace.as_str(), d.metadata.name.as_str()))
        .collect();
    let mut taken: BTreeMap<(String, String), String> = existing
        .services
        .iter()
        .filter(|((ns, _), by)| !batch.contains(&(ns.as_str(), by.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (doc, d) in docs.iter().filter_map(deployments) {
        let (ns, name) = (d.metadata.namespace.as_str(), d.metadata.name.as_str());
        for s in d.spec.all_services() {
            let key = (ns.to_string(), s.name.as_str().to_string());
            if let Some(other) = taken.insert(key, name.to_string()).filter(|o| o != name) {
                return Err(Error::Service(format!(
                    "{}: line {}: Deployment {ns}/{name}: service {:?} is already provided by deployment {ns}/{other}; a service has one deployment",
                    doc.file,
                    doc.line,
                    s.name.as_str()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
