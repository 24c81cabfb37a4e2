//! The versioned key-value state machine as pure logic: applying a request to the in-memory
//! state, with no I/O, no clock and no randomness, so that every member that applies the same
//! log ends in the same state and so that the rules can be tested on plain values.
//!
//! The storage layer calls [`KvState::apply`] for each entry and persists what [`Changes`] says
//! was touched; readers and the snapshot builder read the same state under a lock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, LeaseId, Op, OpResponse, Proposal,
    Rejection, Request, RequestId, Response, Txn, TxnResponse,
};

/// A session nobody used for this long (by the leaders' clocks in the log) is forgotten; a retry
/// after that is answered `SessionExpired`. Far above how long any caller retries a write.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// At most this many sessions are kept; past it the least recently used goes.
pub const MAX_SESSIONS: usize = 4096;
/// At most this many answers a client has not collected are kept per session; past it the
/// oldest go (a retry of one of those is answered `SessionExpired`).
pub const MAX_ANSWERS: usize = 4096;

/// One client's session: the answers it may still ask for again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// Retries of numbers below this cannot be vouched for: the session began (or its answers
    /// were forgotten) above them.
    pub floor: u64,
    /// The clock of the entry that last used the session.
    pub last_ms: u64,
    /// Answers by request number.
    pub answers: BTreeMap<u64, Response>,
}

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
    /// Sessions created, changed or dropped.
    pub sessions: BTreeSet<u64>,
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
    /// Client sessions, for writes applied exactly once.
    pub sessions: BTreeMap<u64, Session>,
    /// The latest leader clock seen in the log (never goes back, whatever the leaders' clocks do).
    pub clock_ms: u64,
}

impl KvState {
    /// Builds the state from stored keys, leases and sessions, deriving each lease's key set.
    pub fn from_parts(
        kv: BTreeMap<Vec<u8>, StoredKv>,
        stored_leases: BTreeMap<LeaseId, StoredLease>,
        sessions: BTreeMap<u64, Session>,
        revision: u64,
        compacted: u64,
        clock_ms: u64,
    ) -> Self {
        let mut leases: BTreeMap<LeaseId, Lease> =
            stored_leases.into_iter().map(|(id, l)| (id, Lease { ttl_ms: l.ttl_ms, keys: BTreeSet::new() })).collect();
        for (key, v) in &kv {
            if let Some(lease) = leases.get_mut(&v.lease) {
                lease.keys.insert(key.clone());
            }
        }
        KvState { kv, leases, revision, compacted, sessions, clock_ms }
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

    /// Applies the proposal of the log entry at `index`: a request seen before in its client's
    /// session gets its first answer and changes nothing; a retry the session cannot vouch for
    /// is refused; anything else is applied and, with an id, its answer kept until the client
    /// says it has it. Expiry uses the clock in the log only.
    pub fn apply_proposal(&mut self, index: u64, p: &Proposal, retain: u64, changes: &mut Changes) -> Response {
        self.clock_ms = self.clock_ms.max(p.at_ms);
        if index.is_multiple_of(64) {
            self.expire_sessions(changes);
        }
        let Some(id) = p.id else { return self.apply(index, &p.req, retain, changes) };
        if let Some(answer) = self.seen(&id) {
            return answer;
        }
        let resp = self.apply(index, &p.req, retain, changes);
        self.remember(&id, &resp, changes);
        resp
    }

    /// The answer to give `id` without applying it, if it is a request seen before or a retry
    /// that cannot be vouched for.
    fn seen(&self, id: &RequestId) -> Option<Response> {
        let expired = Response::Rejected(Rejection::SessionExpired { client: id.client, seq: id.seq });
        match self.sessions.get(&id.client) {
            Some(s) => match s.answers.get(&id.seq) {
                Some(answer) => Some(answer.clone()),
                None if id.retry && id.seq < s.floor => Some(expired),
                None => None,
            },
            None if id.retry => Some(expired),
            None => None,
        }
    }

    fn remember(&mut self, id: &RequestId, resp: &Response, changes: &mut Changes) {
        let clock = self.clock_ms;
        let session = self.sessions.entry(id.client).or_insert_with(|| Session { floor: id.seq, ..Default::default() });
        session.last_ms = clock;
        session.answers.insert(id.seq, resp.clone());
        // What the client no longer waits for is forgotten; retries of it are refused.
        session.answers = session.answers.split_off(&id.oldest_pending);
        session.floor = session.floor.max(id.oldest_pending);
        while session.answers.len() > MAX_ANSWERS {
            if let Some((seq, _)) = session.answers.pop_first() {
                session.floor = session.floor.max(seq + 1);
            }
        }
        changes.sessions.insert(id.client);
        if self.sessions.len() > MAX_SESSIONS {
            let oldest = self.sessions.iter().filter(|(c, _)| **c != id.client).min_by_key(|(c, s)| (s.last_ms, **c));
            if let Some((client, _)) = oldest.map(|(c, s)| (*c, s.last_ms)) {
                self.sessions.remove(&client);
                changes.sessions.insert(client);
            }
        }
    }

    fn expire_sessions(&mut self, changes: &mut Changes) {
        let clock = self.clock_ms;
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| clock.saturating_sub(s.last_ms) > SESSION_TTL_MS)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            self.sessions.remove(&client);
            changes.sessions.insert(client);
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
        let counter = |f: fn(&StoredKv) -> u64| cur.map_or(0, f);
        let ord = match &c.target {
            // As etcd: a missing key has no value to compare (an empty one is not the same), so
            // every compare on its value fails.
            CompareTarget::Value(v) => match cur {
                None => return false,
                Some(s) => s.value.as_slice().cmp(v.as_slice()),
            },
            // A missing key has version 0 and revisions 0: "create if absent".
            CompareTarget::Version(n) => counter(|s| s.version).cmp(n),
            CompareTarget::CreateRevision(n) => counter(|s| s.create_revision).cmp(n),
            CompareTarget::ModRevision(n) => counter(|s| s.mod_revision).cmp(n),
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
