//! Identifiers. A node's identity is its id (and later its certificate), never its address, so
//! that a node whose IP changes keeps its membership.

/// The id of a node in the cluster; also its Raft node id.
pub type NodeId = u64;
