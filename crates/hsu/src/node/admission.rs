//! The leader's decisions about membership, as pure functions of what it read: whether a join
//! is admitted and under which id and identity ([`admit`]), the one transaction that enrolls
//! it ([`enrollment`]), and the voter autopilot: whether a node asking to be added becomes a
//! voter or a learner ([`place_member`]). The callers in `membership.rs` read, call these, and
//! carry out the answer; the tests here assert on the answers.

use super::*;
use hsu_model::keys;

/// What the leader read for a join.
pub(crate) struct JoinView<'a> {
    pub ticket: &'a JoinTicket,
    pub token: &'a JoinToken,
    /// The token's record, or `None` when no such token exists.
    pub entry: Option<&'a TokenEntry>,
    pub nodes: &'a [NodeRecord],
    pub next_id: NodeId,
    pub now_ms: u64,
}

/// A join the leader admits: the id the node gets and the identity its certificate carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Admission {
    pub id: NodeId,
    pub identity: Identity,
}

/// Admits the join in `view`, or says why not. The token is checked (kind, secret, expiry,
/// uses, revocation); the name must be free among nodes not removed (a removed node's name may
/// be taken again); the id is the counter's.
pub(crate) fn admit(view: &JoinView<'_>) -> Result<Admission, PeerError> {
    let entry = view.entry.ok_or_else(|| PeerError::Denied("unknown token".into()))?;
    if entry.kind != TokenKind::Join {
        return Err(PeerError::Denied("an API token cannot be used to join".into()));
    }
    view.token.check_against(&entry.record, view.now_ms).map_err(|e| PeerError::Denied(format!("join token: {e}")))?;
    if view.nodes.iter().any(|n| !n.removed && n.name == view.ticket.name) {
        return Err(PeerError::Invalid(format!("a node named {:?} is already in the cluster", view.ticket.name)));
    }
    let id = view.next_id;
    let identity = if view.ticket.agent_only { Identity::Agent(id) } else { Identity::Node(id) };
    Ok(Admission { id, identity })
}

/// The transaction that enrolls an admitted node: one use of the token, the next id, the node's
/// record, compared on the token's and the counter's mod revisions (a concurrent join makes it
/// fail as a whole, and the leader reads again).
pub(crate) fn enrollment(
    token_key: &At<TokenEntry>,
    token_revision: u64,
    entry: &TokenEntry,
    counter_revision: u64,
    record: &NodeRecord,
) -> Result<Txn, crate::records::RecordError> {
    Ok(Txn {
        compare: vec![unchanged(token_key, token_revision), unchanged(keys::NEXT_NODE_ID.key(()), counter_revision)],
        success: vec![
            records::put(token_key, &TokenEntry { record: entry.record.used(), ..entry.clone() })?,
            records::put(&keys::NEXT_NODE_ID.key(()), &(record.id + 1))?,
            records::put(&keys::NODES.key(record.id), record)?,
        ],
        failure: vec![],
    })
}

/// What to do with a node that asks to be added to Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// It is a voter already: nothing to do (the answer to a repeated request).
    AlreadyVoter,
    AddVoter,
    AddLearner,
}

/// The voter autopilot. `record` is the node's record (`None`: it never enrolled), `members`
/// the leader's membership. A node not in Raft yet becomes a voter when it asks to, a learner
/// when it asks to, and with `Auto` a voter while there are fewer than `target_voters` (at
/// least one), else a learner. A learner is never promoted by asking.
pub(crate) fn place_member(
    id: NodeId,
    record: Option<&NodeRecord>,
    members: &hsu_store::Members,
    wish: RoleWish,
    target_voters: u32,
) -> Result<Placement, PeerError> {
    let record = record.ok_or_else(|| PeerError::Denied(format!("node {id} has not enrolled")))?;
    if record.removed {
        return Err(PeerError::Denied(format!("node {id} was removed from the cluster")));
    }
    if record.agent_only {
        return Err(PeerError::Denied(format!("node {id} is an agent-only node: it is never added to raft")));
    }
    if members.is_voter(id) {
        return Ok(Placement::AlreadyVoter);
    }
    if members.contains(id) {
        // Adding is for nodes that are not in Raft yet; asking again must not make a learner a
        // voter (that is the master's decision, not the learner's).
        return Err(PeerError::Denied(format!("node {id} is already a learner; a learner is not promoted by asking")));
    }
    let voter = match wish {
        RoleWish::Voter => true,
        RoleWish::Learner => false,
        RoleWish::Auto => (members.voter_count() as u32) < target_voters.max(1),
    };
    Ok(if voter { Placement::AddVoter } else { Placement::AddLearner })
}

#[cfg(test)]
mod tests;
