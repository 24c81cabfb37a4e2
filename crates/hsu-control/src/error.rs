//! The errors of hsu-control: a request the controllers refuse (the caller's to fix), a record
//! they cannot make (a bug or a bad record, logged and retried next pass), and the store's own.

use hsu_model::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `undo` to a revision that is not kept, or to the one that runs already.
    #[error("{0}")]
    Undo(String),
    /// A rollout action that does not exist, or takes no revision.
    #[error("{0}")]
    Action(String),
    /// A deployment names a service that another deployment of its namespace provides.
    #[error("{0}")]
    Service(String),
    /// A job run's dispatch parameter is not a valid environment variable name.
    #[error("dispatch parameter {name:?}: {why}")]
    Parameter { name: String, why: String },
    /// An instance id that is no unit name (a deployment or job name too long for one).
    #[error("instance name {id}: {why}")]
    InstanceName { id: String, why: String },
    /// A record did not encode (a bug in a type, never stored empty).
    #[error("a {what} record does not encode: {source}")]
    Encode { what: &'static str, source: CodecError },
    #[error(transparent)]
    Store(#[from] hsu_store::Error),
}

impl Error {
    /// A request the controllers refuse: the caller's to fix, not worth retrying as it is.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Undo(_) | Error::Action(_) | Error::Service(_) | Error::Parameter { .. })
    }
}
