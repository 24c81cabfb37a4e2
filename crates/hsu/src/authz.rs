//! Who may ask what of a node, between nodes: the one table of node-to-node authorization.
//!
//! Authentication comes first and is not this module's: the TLS layer admits only certificates
//! of this cluster's CA that are not revoked, and [`crate::Node::check_peer`] admits only the
//! certificate a node was enrolled with, of a node that was not removed. That says *who* calls.
//! This table says *what* that caller may ask, from its role as the receiving node sees it:
//! the kind of its certificate (agent-only nodes get their own, `hsu://agent/<id>`) and its place
//! in the receiving node's Raft membership. Nothing a request says about its sender counts,
//! except where a voter forwards for another node: voters hold the CA key and could mint any
//! certificate, so trusting their word adds nothing an attacker could use.
//!
//! | request                         | voter | learner  | joining server | agent-only |
//! |---------------------------------|-------|----------|----------------|------------|
//! | Raft append, vote, snapshot     | yes¹  | no¹      | no¹            | no         |
//! | Propose, Range, KeepAlive       | yes   | no       | no             | no         |
//! | Join (forwarding an enrollment) | yes   | no       | no             | no         |
//! | FetchCaKey                      | yes   | no       | no             | no         |
//! | AddMember                       | yes²  | no       | itself²        | no         |
//! | RemoveMember                    | yes   | itself³  | itself³        | itself³    |
//! | UpdateAddress                   | itself| itself   | no             | no         |
//! | Health, Reports                 | yes   | yes      | yes            | no         |
//! | Report                          | yes⁴  | itself   | itself         | itself     |
//! | unit logs (stream)              | yes   | yes      | no             | no         |
//! | own instances (stream)          | no    | no       | no             | yes        |
//!
//! 1. Checked by hsu-store's `serve_rpc`: the sender named in the message must be the
//!    certificate's node, and a voter of the receiver's membership (only voters campaign or
//!    lead). A node with no membership yet (being added) cannot tell and takes any server.
//! 2. Only a node that is not in Raft yet is added; a learner is never promoted by asking
//!    (the leader refuses AddMember for a node that is already a member).
//! 3. Leaving (no revocation); removing another node or revoking is a voter's forward of an
//!    administrator's `hsu node remove`.
//! 4. A voter passes on the reports of agent-only nodes, which report through any server.
//!
//! Learners are read replicas, as etcd's are: their API serves local reads, status and views,
//! and refuses writes and linearizable reads with the address of a voter instead of forwarding.

use std::fmt;

use hsu_model::NodeId;

use crate::peer::PeerRequest;

/// What a calling node is, as the receiving node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A voter of the receiver's Raft membership.
    Voter,
    /// A non-voting member: it replicates the store and votes on nothing.
    Learner,
    /// A server certificate whose node is not in the receiver's membership (yet): joining, or
    /// known to a member that is behind.
    Joining,
    /// An agent-only node: runs units, holds no store and no key, never in Raft.
    Agent,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Voter => "a voter",
            Role::Learner => "a learner",
            Role::Joining => "a server that is not a member of raft",
            Role::Agent => "an agent-only node",
        })
    }
}

/// An authenticated calling node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: NodeId,
    pub role: Role,
}

/// What a node asks of another, as the table names it.
#[derive(Clone, Copy, Debug)]
pub enum Ask<'a> {
    /// A Raft RPC (append, vote, install snapshot).
    Raft,
    /// A request on the node-to-node method.
    Peer(&'a PeerRequest),
    /// The server stream of a unit's log.
    Logs,
    /// The server stream of the caller's own instance records.
    OwnInstances,
}

impl Ask<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Ask::Raft => "raft messages",
            Ask::Peer(req) => req.name(),
            Ask::Logs => "unit logs",
            Ask::OwnInstances => "its instance stream",
        }
    }
}

/// Whether `caller` may ask `ask`; the refusal names the caller, its role and the request.
pub fn allowed(caller: Caller, ask: &Ask<'_>) -> Result<(), String> {
    use Role::*;
    let role = caller.role;
    let itself = |id: NodeId| id == caller.id;
    let ok = match ask {
        // The rest (sender field, voter of the membership) is checked by the store, which
        // knows Raft.
        Ask::Raft => role != Agent,
        Ask::Logs => matches!(role, Voter | Learner),
        Ask::OwnInstances => role == Agent,
        Ask::Peer(req) => match req {
            PeerRequest::Propose { .. }
            | PeerRequest::Range { .. }
            | PeerRequest::KeepAlive(_)
            | PeerRequest::Join(_)
            | PeerRequest::FetchCaKey => role == Voter,
            PeerRequest::AddMember { id, .. } => role == Voter || (itself(*id) && role == Joining),
            PeerRequest::RemoveMember { id, revoke } => role == Voter || (itself(*id) && !*revoke),
            PeerRequest::UpdateAddress { id, .. } => itself(*id) && matches!(role, Voter | Learner),
            PeerRequest::Health | PeerRequest::Reports => role != Agent,
            PeerRequest::Report(r) => itself(r.node) || role == Voter,
        },
    };
    if ok {
        return Ok(());
    }
    let whose = match ask {
        Ask::Peer(PeerRequest::AddMember { id, .. })
        | Ask::Peer(PeerRequest::RemoveMember { id, .. })
        | Ask::Peer(PeerRequest::UpdateAddress { id, .. })
            if !itself(*id) =>
        {
            format!(" for node {id}")
        }
        Ask::Peer(PeerRequest::Report(r)) if !itself(r.node) => format!(" for node {}", r.node),
        _ => String::new(),
    };
    Err(format!("node {} is {role} and may not send {}{whose}", caller.id, ask.name()))
}

#[cfg(test)]
mod tests;
