//! This node's client session for writes: every write it sends to the leader carries a
//! [`RequestId`] (a client id chosen at random when the process starts, and a sequence number),
//! so the store applies it once however often it is sent: after a lost reply, to a new leader,
//! or as a copy the network made. The store keeps the answers the node may still ask for; the
//! node tells it which those are (the oldest number it still waits on).

use std::collections::BTreeSet;
use std::sync::Mutex;

use hsu_store::RequestId;

pub struct ClientSession {
    client: u64,
    state: Mutex<Numbers>,
}

struct Numbers {
    next: u64,
    pending: BTreeSet<u64>,
}

impl ClientSession {
    pub fn new() -> Self {
        // Random, so two processes (or two runs of one node) never share a session.
        let client = rand::random::<u64>().max(1);
        ClientSession { client, state: Mutex::new(Numbers { next: 1, pending: BTreeSet::new() }) }
    }

    /// The id of a new write, pending until [`ClientSession::end`].
    pub fn begin(&self) -> RequestId {
        let mut n = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = n.next;
        n.next += 1;
        n.pending.insert(seq);
        let oldest_pending = n.pending.first().copied().unwrap_or(seq);
        RequestId { client: self.client, seq, oldest_pending, retry: false }
    }

    /// The write numbered `seq` is answered (or given up on): its answer may be forgotten.
    pub fn end(&self, seq: u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).pending.remove(&seq);
    }
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}
