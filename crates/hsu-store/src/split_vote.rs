//! Ending split votes that openraft 0.9 repeats forever.
//!
//! openraft 0.9 draws a member's election timeout once, when its Raft instance starts, and checks
//! it on a tick of 1.5 heartbeat intervals. When a leader dies and two survivors campaign at the
//! same moment, each votes for itself and refuses the other; after that round each campaigns
//! again one timeout later, and when both timeouts round up to the same number of ticks they
//! campaign together again, round after round: two healthy voters of three, and no leader until
//! something else changes the timing. It showed up as failovers that never finished, about one
//! in twenty. (openraft 0.10 draws a new timeout for every campaign.)
//!
//! This task gives each round of a stuck election a fresh random delay: a member that has been a
//! candidate for a whole election round (`election_timeout_max`) campaigns once more after a
//! random part of another round. The first of the two to do so asks for a higher term; the other
//! candidate has no leader whose lease it must respect, grants the vote, and the group has its
//! leader.

use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use tokio::sync::watch;

use crate::types::Raft;

/// Runs until `stop` changes or the Raft instance shuts down.
pub(crate) async fn break_split_votes(raft: Raft, mut stop: watch::Receiver<bool>, round: Duration) {
    let mut metrics = raft.metrics();
    loop {
        let candidate = metrics.wait_for(|m| m.state == ServerState::Candidate);
        tokio::select! {
            r = candidate => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let wait = round + rand::thread_rng().gen_range(Duration::ZERO..round);
        let still = tokio::time::timeout(wait, metrics.wait_for(|m| m.state != ServerState::Candidate));
        tokio::select! {
            r = still => match r {
                // The election ended within the wait, one way or the other.
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return,
                Err(_elapsed) => {}
            },
            _ = stop.changed() => return,
        }
        let term = metrics.borrow().current_term;
        tracing::info!(term, "still a candidate after {wait:?}: campaigning again, at a moment of its own");
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}
