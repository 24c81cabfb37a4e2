//! The HSU node: the replicated store, the QUIC node-to-node network and the public gRPC API,
//! composed. `bootstrap` starts a node (init, join, run); [`Node`] is the running node, usable
//! as a library (the master embedded in a user's own service).

pub mod agent_node;
pub mod api;
mod authz;
pub mod bootstrap;
pub mod datadir;
mod deployments;
mod error;
mod logs;
mod node;
pub mod peer;
pub mod records;
mod removal;
mod serve;
mod session;
mod start;
mod units;

pub use error::NodeError;
pub use node::{ClusterStatus, MemberStatus, Node, Tuning};
pub use removal::Departure;
