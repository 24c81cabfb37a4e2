//! The versioned key-value state machine as pure logic: applying a request to the in-memory
//! state, with no I/O, no clock and no randomness, so that every member that applies the same
//! log ends in the same state and so that the rules can be tested on plain values.
//!
//! The storage layer calls [`KvState::apply`] for each entry and persists what [`Changes`] says
//! was touched; readers and the snapshot builder read the same state under a lock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, LeaseId, Op, OpResponse, Rejection,
    Request, Response, Txn, TxnResponse,
};

/// A key's value and counters as stored (the key itself is the map key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredKv {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: LeaseId,
}

impl StoredKv {
    fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A lease as stored: only its TTL. Which keys are attached is derived from the keys' own
/// `lease` field when the state is loaded, so it cannot disagree with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredLease {
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub ttl_ms: u64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What one or more applied entries touched, for the storage layer to persist.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub keys: BTreeSet<Vec<u8>>,
    pub leases: BTreeSet<LeaseId>,
    /// Every change in apply order; an event's revision is its `kv.mod_revision`.
    pub events: Vec<Event>,
}

/// The whole replicated key space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvState {
    pub kv: BTreeMap<Vec<u8>, StoredKv>,
    pub leases: BTreeMap<LeaseId, Lease>,
    /// The revision of the last change to the key space (0 before the first).
    pub revision: u64,
    /// Watch history at and below this revision is gone.
    pub compacted: u64,
}

impl KvState {
    /// Builds the state from stored keys and leases, deriving each lease's key set.
    pub fn from_parts(
        kv: BTreeMap<Vec<u8>, StoredKv>,
        stored_leases: BTreeMap<LeaseId, StoredLease>,
        revision: u64,
        compacted: u64,
    ) -> Self {
        let mut leases: BTreeMap<LeaseId, Lease> =
            stored_leases.into_iter().map(|(id, l)| (id, Lease { ttl_ms: l.ttl_ms, keys: BTreeSet::new() })).collect();
        for (key, v) in &kv {
            if let Some(lease) = leases.get_mut(&v.lease) {
                lease.keys.insert(key.clone());
            }
        }
        KvState { kv, leases, revision, compacted }
    }

    #[cfg(test)]
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kv.get(key).map(|v| v.to_kv(key))
    }

    /// Keys in `range` in key order, at most `limit` of them (0: no limit); the flag says whether
    /// the limit cut the answer short.
    pub fn range(&self, range: &KeyRange, limit: u64) -> (Vec<KeyValue>, bool) {
        let limit = if limit == 0 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
        let mut out = Vec::new();
        let mut more = false;
        for (k, v) in self.iter_range(range) {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(v.to_kv(k));
        }
        (out, more)
    }

    fn iter_range<'a>(&'a self, range: &'a KeyRange) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a StoredKv)> + 'a> {
        match range {
            KeyRange::Key(k) => Box::new(self.kv.get_key_value(k).into_iter()),
            KeyRange::Prefix(p) => {
                Box::new(self.kv.range::<Vec<u8>, _>(p.clone()..).take_while(move |(k, _)| k.starts_with(p)))
            }
        }
    }

    /// Applies the request of the log entry at `index`. `retain` is how many revisions of watch
    /// history to keep (0 keeps all); older history is compacted as a deterministic part of apply.
    pub fn apply(&mut self, index: u64, req: &Request, retain: u64, changes: &mut Changes) -> Response {
        let resp = match req {
            Request::Txn(txn) => self.apply_txn(index, txn, changes),
            Request::LeaseGrant { id, ttl_ms } => {
                if *id == 0 || self.leases.contains_key(id) {
                    Response::Rejected(Rejection::LeaseExists(*id))
                } else {
                    self.leases.insert(*id, Lease { ttl_ms: *ttl_ms, keys: BTreeSet::new() });
                    changes.leases.insert(*id);
                    Response::LeaseGranted { id: *id, ttl_ms: *ttl_ms }
                }
            }
            Request::LeaseRevoke { id } => match self.leases.remove(id) {
                None => Response::LeaseRevoked { found: false, deleted: 0 },
                Some(lease) => {
                    changes.leases.insert(*id);
                    let deleted = lease.keys.len() as u64;
                    for key in lease.keys {
                        self.delete_key(index, &key, changes);
                    }
                    Response::LeaseRevoked { found: true, deleted }
                }
            },
            Request::Compact { revision } => {
                if *revision > self.revision {
                    Response::Rejected(Rejection::FutureRevision { requested: *revision, current: self.revision })
                } else {
                    self.compacted = self.compacted.max(*revision);
                    Response::Compacted { revision: self.compacted }
                }
            }
        };
        // Keep `retain` revisions of history; compact in steps of an eighth of that so that the
        // deletes are batched rather than done on every entry.
        if retain > 0 && index > self.compacted.saturating_add(retain + retain / 8) {
            self.compacted = index - retain;
        }
        resp
    }

    fn apply_txn(&mut self, index: u64, txn: &Txn, changes: &mut Changes) -> Response {
        let succeeded = txn.compare.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { &txn.success } else { &txn.failure };
        // Validate before changing anything, so that a rejected transaction changes nothing.
        for op in ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Response::Rejected(Rejection::LeaseNotFound(*lease));
                }
            }
        }
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                Op::Put { key, value, lease } => {
                    OpResponse::Put { prev: self.put_key(index, key, value, *lease, changes) }
                }
                Op::Delete { range } => {
                    let keys: Vec<Vec<u8>> = self.iter_range(range).map(|(k, _)| k.clone()).collect();
                    let prev = keys.iter().filter_map(|k| self.delete_key(index, k, changes)).collect();
                    OpResponse::Delete { prev }
                }
                Op::Range { range, limit } => {
                    let (kvs, more) = self.range(range, *limit);
                    OpResponse::Range { kvs, more }
                }
            });
        }
        Response::Txn(TxnResponse { succeeded, responses, revision: self.revision })
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let cur = self.kv.get(&c.key);
        let ord = match &c.target {
            CompareTarget::Value(v) => cur.map_or(&[][..], |s| s.value.as_slice()).cmp(v.as_slice()),
            CompareTarget::Version(n) => cur.map_or(0, |s| s.version).cmp(n),
            CompareTarget::CreateRevision(n) => cur.map_or(0, |s| s.create_revision).cmp(n),
            CompareTarget::ModRevision(n) => cur.map_or(0, |s| s.mod_revision).cmp(n),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Less => ord.is_lt(),
            CompareOp::Greater => ord.is_gt(),
        }
    }

    fn put_key(
        &mut self,
        index: u64,
        key: &[u8],
        value: &[u8],
        lease: LeaseId,
        changes: &mut Changes,
    ) -> Option<KeyValue> {
        let prev = self.kv.get(key).cloned();
        if let Some(p) = &prev {
            if p.lease != lease {
                if let Some(l) = self.leases.get_mut(&p.lease) {
                    l.keys.remove(key);
                }
            }
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
        }
        let stored = StoredKv {
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(index, |p| p.create_revision),
            mod_revision: index,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        changes.events.push(Event { kind: EventKind::Put, kv: stored.to_kv(key) });
        self.kv.insert(key.to_vec(), stored);
        changes.keys.insert(key.to_vec());
        self.revision = index;
        prev.map(|p| p.to_kv(key))
    }

    fn delete_key(&mut self, index: u64, key: &[u8], changes: &mut Changes) -> Option<KeyValue> {
        let prev = self.kv.remove(key)?;
        if let Some(l) = self.leases.get_mut(&prev.lease) {
            l.keys.remove(key);
        }
        changes.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: index,
                version: 0,
                lease: 0,
            },
        });
        changes.keys.insert(key.to_vec());
        self.revision = index;
        Some(prev.to_kv(key))
    }
}

#[cfg(test)]
mod tests;
