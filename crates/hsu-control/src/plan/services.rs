//! Each service's endpoints, planned from the same snapshot as the rest of a pass.
//!
//! A service's endpoint set is written only when it changes (an instance started, became ready or
//! not, stopped, or its node went down), so a steady cluster writes nothing. An instance whose
//! node has not reported since this master took over keeps the endpoint the last record gave it:
//! a failover of the master does not empty every service until the reports come in.
//!
//! Two deployments of a namespace that name the same service: the older one (by creation, then
//! name) provides it; the other is ignored for it.

use std::collections::BTreeMap;

use hsu_model::keys;
use hsu_model::service::{Endpoint, ServiceRecord};
use hsu_model::state::{Desired, OwnerKind};
use hsu_store::record::{put, unchanged};
use hsu_store::{KeyRange, Op, Txn, Versioned};

use super::{encode, World, Write};
use crate::rollout::Observed;
use crate::Error;

impl World<'_> {
    /// The writes that bring every service record in line with the instances.
    pub(super) fn services(&self) -> Result<Vec<Write>, Error> {
        let existing: BTreeMap<&[u8], &Versioned<ServiceRecord>> =
            self.snap.services.iter().map(|s| (s.key.as_slice(), s)).collect();
        let mut wanted: BTreeMap<Vec<u8>, ServiceRecord> = BTreeMap::new();
        let mut providers: Vec<_> = self.snap.deployments.iter().map(|d| &d.value).collect();
        providers.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        for d in providers {
            for s in d.spec.0.all_services() {
                let key = keys::SERVICES.key_of(&d.namespace, s.name.as_str()).as_bytes().to_vec();
                if wanted.contains_key(&key) {
                    continue;
                }
                let before = existing.get(key.as_slice()).map(|v| &v.value);
                let mut endpoints: Vec<Endpoint> = self
                    .snap
                    .instances
                    .iter()
                    .map(|v| &v.value)
                    .filter(|i| {
                        i.owner_kind == OwnerKind::Deployment
                            && i.namespace == d.namespace
                            && i.owner == d.name
                            && i.owner_uid == d.uid
                            && i.desired == Desired::Run
                    })
                    .filter_map(|i| match self.observe(i) {
                        Observed::Reported(r) if r.state == "running" => {
                            let port = *r.ports.get(s.port.as_str())?;
                            Some(Endpoint { instance: i.id.clone(), node: i.node, port, ready: r.ready })
                        }
                        Observed::Unknown => {
                            before.and_then(|b| b.endpoints.iter().find(|e| e.instance == i.id)).cloned()
                        }
                        _ => None,
                    })
                    .collect();
                endpoints.sort();
                let record = ServiceRecord {
                    namespace: d.namespace.clone(),
                    name: s.name.as_str().to_string(),
                    deployment: d.name.clone(),
                    port: s.port.as_str().to_string(),
                    endpoints,
                };
                wanted.insert(key, record);
            }
        }
        let mut writes = Vec::new();
        for (key, record) in &wanted {
            let before = existing.get(key.as_slice());
            if before.is_some_and(|b| b.value == *record) {
                continue;
            }
            let txn = Txn {
                compare: vec![unchanged(key, before.map_or(0, |b| b.mod_revision))],
                success: vec![put(key.clone(), encode(record)?)],
                failure: vec![],
            };
            writes.push(Write { what: format!("service {}/{}", record.namespace, record.name), txn });
        }
        for (key, v) in &existing {
            if !wanted.contains_key(*key) {
                let txn = Txn {
                    compare: vec![unchanged(key, v.mod_revision)],
                    success: vec![Op::Delete { range: KeyRange::Key(key.to_vec()) }],
                    failure: vec![],
                };
                writes.push(Write { what: format!("service {}/{}", v.value.namespace, v.value.name), txn });
            }
        }
        Ok(writes)
    }
}
