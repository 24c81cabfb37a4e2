//! The store's errors: [`OpenError`] for opening a data directory (fatal for that directory) and
//! [`Error`] for requests, split into what a client can act on (not the leader, timed out,
//! compacted, rejected) and what is fatal (storage failed, shut down).

use std::path::PathBuf;
use std::time::Duration;

use hsu_model::CodecError;

use crate::types::{Member, NodeId, Rejection};

/// Why a data directory could not be opened. Nothing is changed on disk when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data directory {path} holds format {found:?}, this build reads {expected:?}")]
    Version { path: PathBuf, found: String, expected: &'static str },
    #[error("data directory {path} has a store but no VERSION file; refusing to guess its format")]
    MissingVersion { path: PathBuf },
    #[error("data directory {path} is in use by another process: {detail}")]
    Locked { path: PathBuf, detail: String },
    #[error("storage engine cannot open {path}: {detail}")]
    Engine { path: PathBuf, detail: String },
    #[error("corrupt record in {tree} at {key}: {source}")]
    Corrupt { tree: &'static str, key: String, source: CodecError },
    #[error("inconsistent {tree}: {detail}")]
    Inconsistent { tree: &'static str, detail: String },
    #[error("invalid store configuration: {0}")]
    Config(String),
}

/// Why a request failed. Serializable, so that a member can return it for a request another
/// member forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// This member is not the leader; nothing was proposed. `leader` is the leader this member
    /// knows of, if any.
    #[error("not the leader{}", match .leader { Some((id, m)) => format!("; the leader is node {id} ({m})"), None => "; no leader is known".to_string() })]
    NotLeader { leader: Option<(NodeId, Member)> },
    /// No answer in time. A write that timed out may still be applied later.
    #[error("no answer within {}ms; a write may or may not have been applied", .0.as_millis())]
    Timeout(Duration),
    /// The leader could not reach a quorum to confirm a read.
    #[error("no quorum: {0}")]
    Unavailable(String),
    /// The requested watch history is gone.
    #[error("revision {requested} is compacted: history is kept from revision {} on", .compacted + 1)]
    Compacted { requested: u64, compacted: u64 },
    /// The state machine refused the request; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the store is shut down")]
    Shutdown,
    /// The leader a request was sent to was replaced before it answered: the request may or may
    /// not take effect (as etcd's "leader changed").
    #[error(
        "leader changed: node {from} was replaced while the request was in flight; it may or may not have been applied"
    )]
    LeaderChanged { from: NodeId },
    /// A storage or consensus failure; the member stops serving.
    #[error("fatal store error: {0}")]
    Fatal(String),
}

impl Error {
    /// True when a write that returned this error may nevertheless take effect.
    pub fn is_indeterminate(&self) -> bool {
        matches!(
            self,
            Error::Timeout(_)
                | Error::Shutdown
                | Error::Fatal(_)
                | Error::LeaderChanged { .. }
                | Error::Rejected(crate::types::Rejection::SessionExpired { .. })
        )
    }
}
