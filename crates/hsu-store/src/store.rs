//! [`Store`]: one member of the replicated store. It owns the Raft instance, the state machine
//! and the lease clock, and offers the versioned KV API: writes go through the Raft log, reads are
//! linearizable (read index) or local, watches stream changes from the stored history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Error, OpenError};
use crate::lease::{leader_term, SharedLeaseClock};
use crate::network::{Network, RaftTransport, RpcKind};
use crate::read_index::ReadBatcher;
use crate::status::{Members, RaftStatus, StatusWatch};
use crate::storage::log::LogStore;
use crate::storage::sm::{SmShared, StateMachine};
use crate::storage::Disk;
use crate::types::{
    KeyRange, KeyValue, LeaseId, Member, NodeId, Op, OpResponse, Proposal, Raft, Request, RequestId, Response, Txn,
    TxnResponse,
};
use crate::watch::Watcher;

/// How a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The leader confirms with a quorum that it still leads, and answers once its state machine
    /// has applied everything committed before the read began.
    #[default]
    Linearizable,
    /// This member answers from its own state machine, which may be behind.
    Local,
}

/// Settings of one member.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a client request may wait for its answer.
    pub request_timeout: Duration,
    /// Build a snapshot after this many new log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a slightly lagging follower needs no snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Revisions of watch history kept.
    pub history_revisions: u64,
    /// How often the leader looks for expired leases.
    pub lease_tick: Duration,
    /// Make log appends durable (fsync) before acknowledging them (default). `false` leaves
    /// them to sled's flush, which a power cut does not survive: acknowledged writes are lost.
    /// Only for showing that the power-loss test catches exactly that.
    pub fsync: bool,
    /// Give a member that stays a candidate for a whole election round another campaign at a
    /// random moment ([`crate::split_vote`]). On by default; off only for tests that steer every
    /// election by hand.
    pub break_split_votes: bool,
}

impl StoreConfig {
    /// Defaults for a LAN with ordinary disks. A follower acknowledges an append only after its
    /// fsync, and openraft gives an append one heartbeat interval to complete, so the interval
    /// sits above the fsync tails seen under load (100-200 ms here). openraft 0.9 adds a leader
    /// lease of `election_timeout_max` to the randomized timeout: a follower campaigns only after
    /// `max + random(min..max)` without hearing from a leader: 750-1000 ms with these values, five
    /// or more missed heartbeats (etcd campaigns after 1000-2000 ms with its defaults).
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            id,
            data_dir: data_dir.into(),
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            history_revisions: 10_000,
            lease_tick: Duration::from_millis(50),
            fsync: true,
            break_split_votes: true,
        }
    }

    fn raft_config(&self) -> Result<Arc<openraft::Config>, OpenError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "hsu".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.request_timeout).max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Default::default()
        };
        config.validate().map(Arc::new).map_err(|e| OpenError::Config(e.to_string()))
    }
}

/// The answer to a range read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the answer short.
    pub more: bool,
    /// The store revision the answer reflects.
    pub revision: u64,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    sm: Arc<SmShared>,
    leases: SharedLeaseClock,
    request_timeout: Duration,
    reads: ReadBatcher,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One member of the store. Cloning gives another handle on the same member.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the member's data directory and starts its Raft instance. A new
    /// member is not part of any cluster until [`Store::initialize`] runs on it or a leader adds
    /// it.
    pub async fn open<T: RaftTransport>(config: StoreConfig, transport: T) -> Result<Store, OpenError> {
        let raft_config = config.raft_config()?;
        let disk = Disk::open(&config.data_dir, config.fsync)?;
        let log = LogStore::open(&disk)?;
        if let Some(term) = log.step_down_if_leader(config.id)? {
            tracing::info!(node = config.id, term, "led term {term} before the restart; starting as a follower");
        }
        let sm = SmShared::open(&disk, config.history_revisions)?;
        drop(disk);
        let raft = Raft::new(config.id, raft_config, Network::new(transport), log, StateMachine { shared: sm.clone() })
            .await
            .map_err(|e| OpenError::Config(format!("raft does not start: {e}")))?;
        let inner = Arc::new(Inner {
            id: config.id,
            raft,
            sm,
            leases: SharedLeaseClock::default(),
            request_timeout: config.request_timeout,
            reads: ReadBatcher::default(),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let store = Store { inner };
        let expiry = tokio::spawn(
            lease_expiry_loop(Arc::downgrade(&store.inner), store.inner.stop.subscribe(), config.lease_tick)
                .instrument(tracing::info_span!("lease_expiry", node = config.id)),
        );
        let mut tasks = store.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.push(expiry);
        if config.break_split_votes {
            let raft = store.inner.raft.clone();
            let round = config.election_timeout_max.max(Duration::from_millis(1));
            tasks.push(tokio::spawn(
                crate::split_vote::break_split_votes(raft, store.inner.stop.subscribe(), round)
                    .instrument(tracing::info_span!("split_vote", node = config.id)),
            ));
        }
        drop(tasks);
        Ok(store)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The Raft instance, for this crate's own tests and benches (which steer elections and
    /// read openraft's metrics). Other crates use [`Store::status`] and [`Store::status_watch`];
    /// the workspace's tidy test refuses a call of this outside hsu-store.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This member's view of its group now: role, term, leader, membership.
    pub fn status(&self) -> RaftStatus {
        self.status_watch().current()
    }

    /// This member's view of the membership alone: what the checks on every request need,
    /// without the rest of [`Store::status`].
    pub fn members(&self) -> Members {
        Members::of(&self.inner.raft.metrics().borrow())
    }

    /// Whether this member is the leader now.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    /// A watch of this member's view of its group.
    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch::new(&self.inner.raft)
    }

    /// Whether this member has a membership yet (it was initialized, or it joined a group).
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        self.inner.raft.is_initialized().await.map_err(fatal)
    }

    /// Handles one encoded Raft RPC that the transport received from `from`; see
    /// [`crate::network::serve_rpc`].
    pub async fn serve_rpc(&self, kind: RpcKind, body: &[u8], from: NodeId) -> Result<Vec<u8>, String> {
        crate::network::serve_rpc(&self.inner.raft, kind, body, from).await
    }

    /// The index of the last entry this member applied.
    pub fn applied_index(&self) -> u64 {
        self.inner.sm.read().last_applied.map_or(0, |l| l.index)
    }

    /// Creates a cluster whose first voters are `members`; run on one of them only.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), Error> {
        self.inner.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => Error::InvalidRequest(e.to_string()),
            RaftError::Fatal(f) => fatal(f),
        })
    }

    /// Adds a non-voting member and waits until it has caught up with the log (by snapshot when
    /// the log it needs was purged).
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), Error> {
        self.inner.raft.add_learner(id, member, true).await.map(drop).map_err(membership_err)
    }

    /// Adds `id` as a voter: first as a learner that catches up, then promoted.
    pub async fn add_voter(&self, id: NodeId, member: Member) -> Result<(), Error> {
        self.add_learner(id, member).await?;
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(drop)
            .map_err(membership_err)
    }

    /// Updates what membership records about `id` (its address after it moved).
    pub async fn set_member(&self, id: NodeId, member: Member) -> Result<(), Error> {
        let nodes = BTreeMap::from([(id, member)]);
        self.inner.raft.change_membership(ChangeMembers::SetNodes(nodes), false).await.map(drop).map_err(membership_err)
    }

    /// Removes `id` from the cluster, whether it is a voter or a learner. A removed voter is not
    /// kept as a learner. A leader may remove itself: it steps down once the change commits.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        let is_voter = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().any(|v| v == id)
        };
        let ids = BTreeSet::from([id]);
        let change = if is_voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
        self.inner.raft.change_membership(change, false).await.map(drop).map_err(membership_err)
    }

    /// Writes one key. Returns the revision of the write and the previous value.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<(u64, Option<KeyValue>), Error> {
        let txn = Txn { success: vec![Op::Put { key: key.into(), value: value.into(), lease }], ..Default::default() };
        let resp = self.txn(txn).await?;
        match resp.responses.into_iter().next() {
            Some(OpResponse::Put { prev }) => Ok((resp.revision, prev)),
            other => Err(Error::Fatal(format!("put answered with {other:?}"))),
        }
    }

    /// Deletes one key or a prefix. Returns the revision and what was deleted.
    pub async fn delete(&self, range: KeyRange) -> Result<(u64, Vec<KeyValue>), Error> {
        let resp = self.txn(Txn { success: vec![Op::Delete { range }], ..Default::default() }).await?;
        match resp.responses.into_iter().next() {
            Some(OpResponse::Delete { prev }) => Ok((resp.revision, prev)),
            other => Err(Error::Fatal(format!("delete answered with {other:?}"))),
        }
    }

    /// Runs a transaction through the log.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        match self.write(Request::Txn(txn)).await? {
            Response::Txn(r) => Ok(r),
            other => Err(Error::Fatal(format!("transaction answered with {other:?}"))),
        }
    }

    /// Reads keys.
    pub async fn range(&self, range: KeyRange, limit: u64, consistency: Consistency) -> Result<RangeResult, Error> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        Ok(self.range_local(&range, limit))
    }

    /// Reads one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>, consistency: Consistency) -> Result<Option<KeyValue>, Error> {
        let r = self.range(KeyRange::Key(key.into()), 1, consistency).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// Creates a lease; keys put with it are deleted when it expires or is revoked.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, Error> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(Error::InvalidRequest("lease ttl must be at least 1ms, got 0".into()));
        }
        // The leader picks the id; apply stays deterministic because the id travels in the entry.
        let id = rand::thread_rng().gen_range(1..=i64::MAX as u64);
        match self.write(Request::LeaseGrant { id, ttl_ms }).await? {
            Response::LeaseGranted { id, .. } => Ok(id),
            other => Err(Error::Fatal(format!("lease grant answered with {other:?}"))),
        }
    }

    /// Renews a lease for its full TTL. Served by the leader only.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, Error> {
        self.read_barrier().await?;
        let ttl = self
            .inner
            .sm
            .read()
            .state
            .leases
            .get(&id)
            .map(|l| Duration::from_millis(l.ttl_ms))
            .ok_or(Error::Rejected(crate::types::Rejection::LeaseNotFound(id)))?;
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner()).renew(id, ttl);
        Ok(ttl)
    }

    /// Revokes a lease and deletes its keys. Returns how many keys were deleted.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, Error> {
        match self.write(Request::LeaseRevoke { id }).await? {
            Response::LeaseRevoked { found: true, deleted } => Ok(deleted),
            Response::LeaseRevoked { found: false, .. } => {
                Err(Error::Rejected(crate::types::Rejection::LeaseNotFound(id)))
            }
            other => Err(Error::Fatal(format!("lease revoke answered with {other:?}"))),
        }
    }

    /// Drops watch history at and below `revision` on every member.
    pub async fn compact(&self, revision: u64) -> Result<u64, Error> {
        match self.write(Request::Compact { revision }).await? {
            Response::Compacted { revision } => Ok(revision),
            other => Err(Error::Fatal(format!("compact answered with {other:?}"))),
        }
    }

    /// How many watchers of this member are alive (each holds memory and a task's attention
    /// until it is dropped).
    pub fn watchers(&self) -> usize {
        self.inner.sm.subscribers()
    }

    /// Watches `range` from revision `start` (0: changes after the current revision), served
    /// from this member's state machine.
    pub fn watch(&self, range: KeyRange, start: u64) -> Result<Watcher, Error> {
        let start = if start == 0 { self.applied_index() + 1 } else { start };
        Watcher::new(&self.inner.sm, range, start)
    }

    /// Stops the member: its Raft instance and its background tasks. Other handles on it then
    /// answer `Shutdown`; the data directory is released when the last handle is dropped.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(node = self.inner.id, "raft did not shut down cleanly: {e}");
        }
    }

    /// Proposes a raw request through the log (what `put`, `txn` and the lease calls build).
    pub async fn propose(&self, req: Request) -> Result<Response, Error> {
        self.write(req).await
    }

    /// Proposes `req` as request `id` of its client's session: applied once however often it
    /// is proposed (a retry after a lost answer, a copy sent twice), every copy answered with
    /// the first one's result. So a caller may send it again after any failure, to any leader,
    /// with `id.retry` set: `NotLeader` here never means "applied twice if retried". A node
    /// uses it to run a write another member forwarded to it.
    pub async fn propose_once(&self, req: Request, id: RequestId) -> Result<Response, Error> {
        self.write_proposal(req, Some(id)).await
    }

    /// Reads keys from this member's state machine without waiting: for hot paths that accept a
    /// possibly stale answer (credential lookups on every API call).
    pub fn range_local(&self, range: &KeyRange, limit: u64) -> RangeResult {
        let inner = self.inner.sm.read();
        let (kvs, more) = inner.state.range(range, limit);
        RangeResult { kvs, more, revision: inner.state.revision }
    }

    async fn write(&self, req: Request) -> Result<Response, Error> {
        self.write_proposal(req, None).await
    }

    async fn write_proposal(&self, req: Request, id: Option<RequestId>) -> Result<Response, Error> {
        let timeout = self.inner.request_timeout;
        let leader = |m: &openraft::RaftMetrics<NodeId, Member>| {
            m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| (l, n.clone())))
        };
        // Not the leader: nothing is proposed, and the caller may go to the leader.
        {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            if m.state != openraft::ServerState::Leader {
                return Err(Error::NotLeader { leader: leader(&m) });
            }
        }
        // The leader's clock travels in the entry: it is the state machine's only clock.
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let proposal = Proposal { req, id, at_ms };
        let resp = tokio::time::timeout(timeout, self.inner.raft.client_write(proposal))
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|e| match e {
                // Proposed as leader, then answered ForwardToLeader: the entry was truncated here
                // because this member lost its leadership. It may still be committed by a new
                // leader that has it (with five voters it can). With an id that is harmless, a
                // retry is answered, not applied again; without one the outcome is unknown.
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match id {
                    Some(_) => Error::NotLeader { leader: f.leader_id.zip(f.leader_node) },
                    None => Error::LeaderChanged { from: self.inner.id },
                },
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Error::InvalidRequest(e.to_string()),
                RaftError::Fatal(f) => fatal(f),
            })?;
        match resp.data {
            Response::Rejected(r) => Err(Error::Rejected(r)),
            data => Ok(data),
        }
    }

    /// Waits until a read from the local state machine is linearizable. Concurrent callers share
    /// read-index rounds (see [`crate::read_index`]).
    async fn read_barrier(&self) -> Result<(), Error> {
        let (mut round, start_driver) = self.inner.reads.join();
        if start_driver {
            let store = self.clone();
            tokio::spawn(async move {
                while let Some(batch) = store.inner.reads.next_batch() {
                    batch.send_replace(Some(store.read_round().await));
                }
            });
        }
        let timeout = self.inner.request_timeout;
        let done = tokio::time::timeout(timeout, round.wait_for(Option::is_some))
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|_| Error::Unavailable("the read-index round was abandoned".into()))?;
        done.clone().unwrap_or(Err(Error::Shutdown))
    }

    /// One read-index round: confirms leadership with a quorum and waits until this member has
    /// applied everything committed when the round began.
    async fn read_round(&self) -> Result<(), Error> {
        let timeout = self.inner.request_timeout;
        tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable())
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map(drop)
            .map_err(|e| match e {
                RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                    Error::NotLeader { leader: f.leader_id.zip(f.leader_node) }
                }
                RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::Unavailable(q.to_string()),
                RaftError::Fatal(f) => fatal(f),
            })
    }
}

fn fatal(f: Fatal<NodeId>) -> Error {
    match f {
        Fatal::Stopped => Error::Shutdown,
        other => Error::Fatal(other.to_string()),
    }
}

fn membership_err(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        // Another change is still being committed: nothing was done, and trying again later works.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            Error::Unavailable(format!("another membership change is in progress: {p}"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Error::InvalidRequest(e.to_string()),
        RaftError::Fatal(f) => fatal(f),
    }
}

/// The leader's side of lease expiry: find expired leases and propose their revocation.
async fn lease_expiry_loop(store: std::sync::Weak<Inner>, mut stop: watch::Receiver<bool>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(inner) = store.upgrade() else { return };
        let expired = {
            let term = leader_term(&inner.raft);
            let leases: Vec<(LeaseId, Duration)> =
                inner.sm.read().state.leases.iter().map(|(id, l)| (*id, Duration::from_millis(l.ttl_ms))).collect();
            inner.leases.lock().unwrap_or_else(|p| p.into_inner()).expired(term, leases, tokio::time::Instant::now())
        };
        let store = Store { inner };
        for id in expired {
            match store.write(Request::LeaseRevoke { id }).await {
                Ok(_) => tracing::debug!(lease = id, "lease expired and was revoked"),
                // Retried on a later tick, by this member or by the next leader.
                Err(e) => tracing::debug!(lease = id, "revoking expired lease failed: {e}"),
            }
        }
    }
}
