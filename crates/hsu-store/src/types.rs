//! The data the store replicates: the openraft type configuration, the requests that travel in
//! log entries, the responses that applying them produces, and the values clients read.
//!
//! Everything a request needs to be applied deterministically is inside it: lease ids are chosen
//! by the leader before it proposes, and the log index of the entry becomes the revision, so
//! every member that applies the same log ends in the same state.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use hsu_model::NodeId;

/// A lease id; 0 means "no lease".
pub type LeaseId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the HSU store.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft instance of this store.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this store's log.
pub type LogId = openraft::LogId<NodeId>;
/// Membership as it is stored with the log id that changed it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;

/// What membership records about a member: its name and where its Raft transport listens.
/// The address may change over time; the node id is the identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
}

impl Member {
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Self {
        Member { name: name.into(), addr: addr.into() }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A key with its value and history counters, as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision that last wrote it.
    pub mod_revision: u64,
    /// How many times it was written since it was created (1 after the first put).
    pub version: u64,
    /// The lease it is attached to, or 0.
    pub lease: LeaseId,
}

/// What a log entry carries: the request, who sent it (so that a retry is answered rather than
/// applied again), and the leader's clock when it proposed it (the state machine's only clock:
/// session expiry is decided by it, the same way on every member).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub req: Request,
    pub id: Option<RequestId>,
    /// Milliseconds since the Unix epoch on the proposing leader.
    pub at_ms: u64,
}

/// A write's identity within its client's session (Raft dissertation §6.3): the state machine
/// keeps the answer of every request of a client that the client may still be waiting for, and
/// answers a request it has seen with that answer instead of applying it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    /// Chosen at random by the client (a node process) when it starts: one session per client.
    pub client: u64,
    /// The client's numbering of its requests, from 1, each number used for one request.
    pub seq: u64,
    /// The lowest number the client is still waiting on when it sends this: answers below it
    /// are forgotten.
    pub oldest_pending: u64,
    /// True when the client may have sent this request before. A retry the session cannot
    /// vouch for (the session expired meanwhile) is refused as indeterminate, never applied.
    pub retry: bool,
}

/// A request that goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Puts, deletes and ranges, guarded by compares. A plain put is a transaction without
    /// compares.
    Txn(Txn),
    /// Creates a lease; `id` was chosen by the leader.
    LeaseGrant { id: LeaseId, ttl_ms: u64 },
    /// Removes a lease and deletes every key attached to it. The leader proposes this when a
    /// lease expires, so expiry is decided once and replicated.
    LeaseRevoke { id: LeaseId },
    /// Drops watch history at and below `revision`.
    Compact { revision: u64 },
}

/// "If every compare holds, run `success`, else run `failure`", atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// One comparison against the current state of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

/// What a compare looks at, and the operand. A key that does not exist has an empty value and
/// 0 for version and both revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(Vec<u8>),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// Which keys a range or delete addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

impl KeyRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_slice() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
        }
    }
}

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, lease: LeaseId },
    Delete { range: KeyRange },
    Range { range: KeyRange, limit: u64 },
}

/// The result of applying a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// For blank and membership entries, which carry no request.
    #[default]
    None,
    Txn(TxnResponse),
    LeaseGranted {
        id: LeaseId,
        ttl_ms: u64,
    },
    LeaseRevoked {
        found: bool,
        deleted: u64,
    },
    Compacted {
        revision: u64,
    },
    /// The request was valid to propose but could not be applied to this state; nothing changed.
    Rejected(Rejection),
}

/// Why an applied request changed nothing. These are decided by the state machine, the same way
/// on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("lease {0:#x} not found")]
    LeaseNotFound(LeaseId),
    #[error("lease {0:#x} already exists")]
    LeaseExists(LeaseId),
    #[error("cannot compact to revision {requested}: the store is at revision {current}")]
    FutureRevision { requested: u64, current: u64 },
    /// A retry whose earlier attempt the store can no longer vouch for: the client's session
    /// expired (or the answer was already collected). Whether that attempt was applied is not
    /// known.
    #[error("request {seq} of client {client:#x} was retried after its session expired; it may or may not have been applied")]
    SessionExpired { client: u64, seq: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// True when every compare held and `success` ran.
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
    /// The store revision after the transaction.
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Put { prev: Option<KeyValue> },
    Delete { prev: Vec<KeyValue> },
    Range { kvs: Vec<KeyValue>, more: bool },
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete, only `key` and `mod_revision` (the deleting revision) are meaningful.
    pub kv: KeyValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}
