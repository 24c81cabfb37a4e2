//! The errors of hsu-agent at its boundary: what a caller of `Agent::open`, the standalone
//! agent and its control socket, and the resource sampler can be told. Each message says which
//! file, unit or socket, and what was expected. (A probe's failure and a placement's reason are
//! not errors of the agent: they are status, and stay text.)

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the agent's could not be used.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Another agent holds the data directory.
    #[error("another agent runs with data directory {0}")]
    Locked(PathBuf),
    /// The units file was refused, or a record an earlier agent left does not read.
    #[error("{0}")]
    Units(String),
    /// No agent answers on the control socket, or its answer does not parse.
    #[error("{0}")]
    Control(String),
    /// The system information the agent reports could not be read.
    #[error("{0}")]
    System(String),
    /// A unit's user or group does not exist here.
    #[error("{0}")]
    Account(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
