//! What this member knows of its Raft group, in the store's own plain types: who leads, the term,
//! the membership (voters and learners with their addresses) and, on the leader, how far each
//! member's log matches. Callers outside the store read this and never openraft's metrics, so the
//! consensus engine stays an implementation detail of this crate.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;

use crate::types::{Member, NodeId, TypeConfig};

/// The role this member plays in the group now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RaftRole {
    Leader,
    #[default]
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// The members of the group as the latest membership entry this member has seen says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    voters: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, Member>,
}

impl Members {
    /// A membership of `voters` and `learners` (for callers that plan from one, and their tests).
    pub fn new(voters: Vec<(NodeId, Member)>, learners: Vec<(NodeId, Member)>) -> Members {
        Members {
            voters: voters.iter().map(|(id, _)| *id).collect(),
            nodes: voters.into_iter().chain(learners).collect(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// A voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.nodes.get(&id)
    }

    pub fn voter_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied()
    }

    pub fn voter_count(&self) -> usize {
        self.voters.len()
    }

    /// Voters and learners, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Member)> + '_ {
        self.nodes.iter().map(|(id, m)| (*id, m))
    }

    pub(crate) fn of(m: &openraft::RaftMetrics<NodeId, Member>) -> Self {
        let membership = m.membership_config.membership();
        Members {
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
    }

    /// The voters other than `me`, with their addresses.
    pub fn other_voters(&self, me: NodeId) -> Vec<(NodeId, Member)> {
        self.nodes().filter(|(id, _)| *id != me && self.is_voter(*id)).map(|(id, m)| (id, m.clone())).collect()
    }
}

/// One reading of this member's view of the group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: RaftRole,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub members: Members,
    /// The log index of the membership entry `members` comes from (0 before the first one).
    pub membership_index: u64,
    /// The index of the last entry in this member's log (0 for an empty log).
    pub last_log_index: u64,
    /// The index of the last entry this member applied to its state machine.
    pub applied_index: u64,
    /// On the leader only: the highest index known to match on each member (0 for none yet).
    pub matched: Option<BTreeMap<NodeId, u64>>,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.role == RaftRole::Leader
    }

    /// The known leader with its address, when the membership holds it.
    pub fn leader_member(&self) -> Option<(NodeId, Member)> {
        self.leader.and_then(|l| self.members.get(l).map(|m| (l, m.clone())))
    }

    pub(crate) fn of(m: &openraft::RaftMetrics<NodeId, Member>) -> Self {
        RaftStatus {
            id: m.id,
            role: match m.state {
                openraft::ServerState::Leader => RaftRole::Leader,
                openraft::ServerState::Follower => RaftRole::Follower,
                openraft::ServerState::Candidate => RaftRole::Candidate,
                openraft::ServerState::Learner => RaftRole::Learner,
                openraft::ServerState::Shutdown => RaftRole::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            members: Members::of(m),
            membership_index: m.membership_config.log_id().map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            matched: m.replication.as_ref().map(|r| r.iter().map(|(id, l)| (*id, l.map_or(0, |l| l.index))).collect()),
        }
    }
}

/// The store stopped: no further status will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store has stopped")]
pub struct Stopped;

/// A watch of [`RaftStatus`]: read the current one, or wait for the next change.
#[derive(Clone)]
pub struct StatusWatch {
    rx: watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
}

impl StatusWatch {
    pub(crate) fn new(raft: &openraft::Raft<TypeConfig>) -> Self {
        StatusWatch { rx: raft.metrics() }
    }

    /// The status now, marking it seen.
    pub fn current(&mut self) -> RaftStatus {
        RaftStatus::of(&self.rx.borrow_and_update())
    }

    /// Resolves at the next change after the last [`current`](Self::current). Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), Stopped> {
        self.rx.changed().await.map_err(|_| Stopped)
    }

    /// Resolves with the first status (the current one included) for which `f` holds.
    /// Cancel-safe.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&RaftStatus) -> bool) -> Result<RaftStatus, Stopped> {
        let m = self.rx.wait_for(|m| f(&RaftStatus::of(m))).await.map_err(|_| Stopped)?;
        Ok(RaftStatus::of(&m))
    }
}
