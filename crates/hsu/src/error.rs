//! The node's errors, and their mapping to gRPC statuses in one place.

use hsu_sdk::client::{ClientError, OUTCOME_KEY};
use hsu_store::Error as StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Open(#[from] hsu_store::OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] hsu_net::pki::PkiError),
    #[error(transparent)]
    Net(#[from] hsu_net::quic::NetError),
    #[error("join refused: {0}")]
    Join(String),
    #[error("{0}")]
    Api(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
    #[error(transparent)]
    Agent(#[from] hsu_agent::Error),
    /// The node left or was removed from the cluster; it does not start again.
    #[error("{0}")]
    Departed(String),
}

/// The gRPC status for a store error: what the client can act on gets a specific code, and
/// [`OUTCOME_KEY`] says whether a write may have taken effect.
pub fn status_of(e: StoreError) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        StoreError::NotLeader { .. }
        | StoreError::Unavailable(_)
        | StoreError::Shutdown
        | StoreError::LeaderChanged { .. } => Code::Unavailable,
        StoreError::Timeout(_) => Code::DeadlineExceeded,
        StoreError::Compacted { .. } => Code::OutOfRange,
        StoreError::Rejected(_) => Code::FailedPrecondition,
        StoreError::InvalidRequest(_) => Code::InvalidArgument,
        StoreError::Fatal(_) => Code::Internal,
    };
    let outcome = if e.is_indeterminate() { "unknown" } else { "not-applied" };
    with_outcome(tonic::Status::new(code, e.to_string()), outcome)
}

/// `status` with [`OUTCOME_KEY`] set to `outcome`.
fn with_outcome(mut status: tonic::Status, outcome: &'static str) -> tonic::Status {
    status.metadata_mut().insert(OUTCOME_KEY, tonic::metadata::MetadataValue::from_static(outcome));
    status
}

/// A failure whose effect nobody can vouch for.
fn unknown(status: tonic::Status) -> tonic::Status {
    with_outcome(status, "unknown")
}

impl From<crate::records::RecordError> for tonic::Status {
    fn from(e: crate::records::RecordError) -> Self {
        unknown(tonic::Status::internal(e.to_string()))
    }
}

/// A refusal before anything reached the store: certainly not applied.
pub(crate) fn refused(status: tonic::Status) -> tonic::Status {
    with_outcome(status, "not-applied")
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(s) => status_of(s),
            NodeError::Peer(p) => p.into(),
            NodeError::Join(m) => tonic::Status::permission_denied(format!("join refused: {m}")),
            NodeError::Config(m) | NodeError::Client(ClientError::Config(m)) => tonic::Status::invalid_argument(m),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

impl From<crate::peer::PeerError> for tonic::Status {
    fn from(e: crate::peer::PeerError) -> Self {
        use crate::peer::PeerError;
        match e {
            PeerError::Store(s) => status_of(s),
            PeerError::Denied(m) => refused(tonic::Status::permission_denied(m)),
            PeerError::Invalid(m) => refused(tonic::Status::invalid_argument(m)),
            PeerError::NotFound(m) => refused(tonic::Status::not_found(format!("{m} not found"))),
            PeerError::WrongNode(m) => refused(tonic::Status::failed_precondition(m)),
            e @ PeerError::Internal(_) => unknown(tonic::Status::internal(e.to_string())),
        }
    }
}
