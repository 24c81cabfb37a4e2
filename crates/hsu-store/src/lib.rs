//! The replicated, versioned key-value store that holds all HSU cluster state.
//!
//! One Raft group (openraft) over all servers; log, vote and state machine in sled. The state
//! machine is a versioned KV in the manner of etcd: every key keeps its create and mod revision
//! (the log index that wrote it) and a version; transactions compare those or the value and run
//! one of two lists of operations; leases with a TTL delete their keys when they expire; watches
//! stream every change under a prefix from a revision on. Reads are linearizable by default.
//!
//! The Raft network is the [`RaftTransport`] trait. [`Router`] implements it in process with
//! fault injection for tests; real nodes carry it over QUIC.

mod error;
pub mod forge;
mod kv;
mod lease;
mod network;
mod read_index;
pub mod record;
mod router;
mod split_vote;
mod status;
mod storage;
mod store;
mod types;
mod watch;

pub use error::{Error, OpenError};
pub use network::{Connection, Network, RaftTransport, RpcKind, TransportError};
pub use record::Versioned;
pub use router::{Router, RouterTransport};
pub use status::{Members, RaftRole, RaftStatus, StatusWatch, Stopped};
pub use storage::log::LogStore;
pub use storage::sm::StateMachine;
pub use storage::DATA_VERSION;
pub use store::{Consistency, RangeResult, Store, StoreConfig};
pub use types::*;
pub use watch::Watcher;
