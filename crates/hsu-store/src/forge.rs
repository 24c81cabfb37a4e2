//! Raft messages made by hand, encoded as a transport carries them: for tests that a node refuses
//! a vote or an append whose sender is forged or not a voter. Nothing in a running node builds
//! these; they exist so that such tests need not know the consensus engine's types.

use hsu_model::encode_record;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;

use crate::types::{NodeId, TypeConfig};

/// A request for votes from `candidate` in `term`, with an empty log.
pub fn vote(term: u64, candidate: NodeId) -> Vec<u8> {
    encode_record(&VoteRequest::<NodeId>::new(Vote::new(term, candidate), None)).expect("a vote request encodes")
}

/// An empty append from `leader`, which claims a committed vote in `term`.
pub fn append(term: u64, leader: NodeId) -> Vec<u8> {
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    encode_record(&req).expect("an append request encodes")
}
