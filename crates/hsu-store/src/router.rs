//! An in-process [`RaftTransport`] for tests and benchmarks: members of one process call each
//! other's Raft directly through the same encoding as a real transport, and the router can break
//! the network between chosen members (partition, one-way block, drop a share of messages, add
//! delay), as openraft's own test router does.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::network::{serve_rpc, RaftTransport, RpcKind, TransportError};
use crate::types::{Member, NodeId, Raft};

#[derive(Default)]
struct Faults {
    /// (from, to) pairs whose messages are lost.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Percentage of all messages lost at random.
    drop_percent: u8,
    /// Added one-way delay per (from, to).
    delays: HashMap<(NodeId, NodeId), Duration>,
}

struct Inner {
    members: HashMap<NodeId, Raft>,
    faults: Faults,
    rng: SmallRng,
}

/// The shared switchboard. Clone it freely; all clones are the same network.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Mutex<Inner>>,
}

impl Router {
    /// A router whose random drops come from `seed`, so a failing run can be replayed.
    pub fn new(seed: u64) -> Self {
        Router {
            inner: Arc::new(Mutex::new(Inner {
                members: HashMap::new(),
                faults: Faults::default(),
                rng: SmallRng::seed_from_u64(seed),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport that member `from` uses to send.
    pub fn transport(&self, from: NodeId) -> RouterTransport {
        RouterTransport { router: self.clone(), from }
    }

    /// Makes `raft` reachable as member `id`.
    pub fn register(&self, id: NodeId, raft: Raft) {
        self.lock().members.insert(id, raft);
    }

    /// Makes member `id` unreachable, as if its process were gone.
    pub fn unregister(&self, id: NodeId) {
        self.lock().members.remove(&id);
    }

    /// Loses every message between `id` and everyone else, both ways.
    pub fn isolate(&self, id: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut inner = self.lock();
        for o in others {
            if o != id {
                inner.faults.blocked.insert((id, o));
                inner.faults.blocked.insert((o, id));
            }
        }
    }

    /// Splits the members into groups that can talk only within themselves.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let mut inner = self.lock();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in a {
                        for y in b {
                            inner.faults.blocked.insert((*x, *y));
                        }
                    }
                }
            }
        }
    }

    /// Loses messages from `from` to `to` (one way).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().faults.blocked.insert((from, to));
    }

    /// Loses `percent` of all messages at random.
    pub fn set_drop_percent(&self, percent: u8) {
        self.lock().faults.drop_percent = percent.min(100);
    }

    /// Delays messages from `from` to `to` by `delay`.
    pub fn set_delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.lock().faults.delays.insert((from, to), delay);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.lock().faults = Faults::default();
    }

    /// `Err` if messages from `from` to `to` are blocked now.
    fn reachable(&self, from: NodeId, to: NodeId) -> Result<(), TransportError> {
        if self.lock().faults.blocked.contains(&(from, to)) {
            return Err(TransportError::Unreachable(to, format!("partitioned from node {from}")));
        }
        Ok(())
    }

    /// Removes the one-way block from `from` to `to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.lock().faults.blocked.remove(&(from, to));
    }

    /// Decides the fate of one message: `Err` if it is lost, otherwise the delay to add.
    fn route(&self, from: NodeId, to: NodeId) -> Result<(Duration, Raft), TransportError> {
        let mut inner = self.lock();
        if inner.faults.blocked.contains(&(from, to)) {
            return Err(TransportError::Unreachable(to, format!("partitioned from node {from}")));
        }
        let drop_percent = inner.faults.drop_percent;
        if drop_percent > 0 && inner.rng.gen_range(0..100) < drop_percent {
            return Err(TransportError::Failed(to, "message dropped".into()));
        }
        let delay = inner.faults.delays.get(&(from, to)).copied().unwrap_or_default();
        let raft =
            inner.members.get(&to).cloned().ok_or_else(|| TransportError::Unreachable(to, "not running".into()))?;
        Ok((delay, raft))
    }
}

/// One member's sending side of the [`Router`].
#[derive(Clone)]
pub struct RouterTransport {
    router: Router,
    from: NodeId,
}

impl RaftTransport for RouterTransport {
    async fn call(
        &self,
        target: NodeId,
        _member: &Member,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (delay, raft) = self.router.route(self.from, target)?;
        let deliver = async {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                // A message still on its way when a partition forms is lost with it.
                self.router.reachable(self.from, target)?;
            }
            let reply =
                serve_rpc(&raft, kind, &body, self.from).await.map_err(|e| TransportError::Failed(target, e))?;
            // The reply crosses the network too: it is lost if the way back broke meanwhile.
            self.router.route(target, self.from)?;
            Ok(reply)
        };
        tokio::time::timeout(timeout, deliver).await.map_err(|_| TransportError::Timeout(target, timeout))?
    }
}
