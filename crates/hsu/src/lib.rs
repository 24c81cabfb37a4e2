//! The HSU node: the replicated store, the QUIC node-to-node network and the public gRPC API,
//! composed. `bootstrap` starts a node (init, join, run); [`Node`] is the running node, usable
//! as a library (the master embedded in a user's own service), and [`AgentNode`] the agent-only
//! one. The rest of the public surface: [`DataDir`], [`Tuning`], [`NodeError`], the API's
//! [`limits`], and [`peer`], the node-to-node protocol (public so that tests can speak it as
//! another node, a removed one or an attacker would). Every other module is private.

mod agent_node;
mod api;
mod authz;
pub mod bootstrap;
mod datadir;
mod deployments;
mod error;
mod logs;
mod node;
pub mod peer;
mod records;
mod removal;
mod serve;
mod services;
mod session;
mod start;
mod units;

pub use agent_node::AgentNode;
pub use datadir::{DataDir, Pki};
pub use error::NodeError;
pub use node::{ClusterStatus, MemberStatus, Node, Tuning};
pub use removal::Departure;

/// The limits and request metadata of the public gRPC API, for clients and their tests.
pub mod limits {
    pub use crate::api::kv::{ATTEMPT_KEY, MAX_KEY_BYTES, MAX_REQUEST_BYTES, REQUEST_ID_KEY};
    pub use crate::api::MAX_MESSAGE;
}
