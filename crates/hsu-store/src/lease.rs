//! Lease expiry, decided by the leader and replicated.
//!
//! Only the leader keeps lease deadlines, in memory: keep-alives are not written to the log (an
//! idle cluster with live leases writes nothing). When a lease's deadline passes, the leader
//! proposes its revocation, and every member applies that the same way. A newly elected leader
//! does not know when clients last renewed with its predecessor, so it starts every lease afresh
//! at its full TTL, as etcd does: a lease can outlive its TTL by up to one TTL across a leader
//! change, but it never expires early.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::types::{LeaseId, Raft};

/// The leader's lease deadlines.
#[derive(Default)]
pub(crate) struct LeaseClock {
    /// The term in which this member became the leader that owns `deadlines`.
    term: Option<u64>,
    deadlines: HashMap<LeaseId, Instant>,
}

pub(crate) type SharedLeaseClock = Arc<Mutex<LeaseClock>>;

impl LeaseClock {
    /// Renews a lease at this leader.
    pub(crate) fn renew(&mut self, id: LeaseId, ttl: Duration) {
        self.deadlines.insert(id, Instant::now() + ttl);
    }

    /// One tick: given whether this member is the leader (and in which term) and the leases that
    /// exist, returns the leases whose deadline has passed.
    pub(crate) fn expired(
        &mut self,
        leader_term: Option<u64>,
        leases: impl IntoIterator<Item = (LeaseId, Duration)>,
        now: Instant,
    ) -> Vec<LeaseId> {
        if leader_term.is_none() || leader_term != self.term {
            // Lost or (re)gained leadership: what the old term knew about renewals is void.
            self.deadlines.clear();
            self.term = leader_term;
        }
        if leader_term.is_none() {
            return Vec::new();
        }
        let mut live = HashMap::new();
        let mut expired = Vec::new();
        for (id, ttl) in leases {
            let deadline = *self.deadlines.get(&id).unwrap_or(&(now + ttl));
            if now >= deadline {
                expired.push(id);
            }
            live.insert(id, deadline);
        }
        self.deadlines = live;
        expired
    }
}

/// Whether this member is the leader now, and in which term.
pub(crate) fn leader_term(raft: &Raft) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader).then_some(m.current_term)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_new_leader_starts_every_lease_afresh() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        assert!(clock.expired(Some(1), [(7, TTL)], t0).is_empty());
        assert_eq!(clock.expired(Some(1), [(7, TTL)], t0 + TTL), vec![7]);
        // Leadership moved to term 2 on this member: the lease gets a full TTL from now.
        assert!(clock.expired(Some(2), [(7, TTL)], t0 + TTL).is_empty());
        assert_eq!(clock.expired(Some(2), [(7, TTL)], t0 + 2 * TTL), vec![7]);
    }

    #[test]
    fn renewals_push_the_deadline_and_followers_expire_nothing() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        assert!(clock.expired(None, [(7, TTL)], t0 + 10 * TTL).is_empty());
        assert!(clock.expired(Some(3), [(7, TTL)], t0).is_empty());
        clock.deadlines.insert(7, t0 + TTL + TTL / 2);
        assert!(clock.expired(Some(3), [(7, TTL)], t0 + TTL).is_empty());
        assert_eq!(clock.expired(Some(3), [(7, TTL)], t0 + 2 * TTL), vec![7]);
        // A lease that no longer exists is forgotten.
        assert!(clock.expired(Some(3), [], t0 + 3 * TTL).is_empty());
        assert!(clock.deadlines.is_empty());
    }
}
