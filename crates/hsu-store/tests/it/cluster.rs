//! An in-process cluster of real stores (sled on disk, fsync on) joined by the fault-injecting
//! router, with helpers that wait on events with a deadline instead of sleeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hsu_store::{Consistency, Error, KeyRange, KeyValue, Member, NodeId, OpenError, Router, Store, StoreConfig};
use openraft::ServerState;
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Snapshots every 40 entries, keeping no log behind them: a lagging or new member needs one.
pub fn small_snapshots(cfg: &mut StoreConfig) {
    cfg.snapshot_every = 40;
    cfg.logs_kept_after_snapshot = 0;
}

pub fn member(id: NodeId) -> Member {
    Member::new(format!("n{id}"), format!("inproc:{id}"))
}

pub struct Cluster {
    pub router: Router,
    dir: tempfile::TempDir,
    nodes: BTreeMap<NodeId, Option<Store>>,
    tune: fn(&mut StoreConfig),
}

impl Cluster {
    /// Starts `n` members (ids 1..=n), initializes the cluster on member 1 and waits for a leader.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: u64, tune: fn(&mut StoreConfig)) -> Cluster {
        init_tracing();
        let mut c = Cluster { router: Router::new(7), dir: tempfile::tempdir().unwrap(), nodes: BTreeMap::new(), tune };
        for id in 1..=n {
            c.launch(id).await;
        }
        let members = (1..=n).map(|id| (id, member(id))).collect();
        c.store(1).initialize(members).await.unwrap();
        c.wait_leader().await;
        c
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn config(&self, id: NodeId) -> StoreConfig {
        let mut cfg = StoreConfig::new(id, self.data_dir(id));
        // Fast elections keep the fault scenarios short; the data is small, so fsyncs are quick.
        cfg.heartbeat_interval = Duration::from_millis(50);
        cfg.election_timeout_min = Duration::from_millis(150);
        cfg.election_timeout_max = Duration::from_millis(300);
        cfg.request_timeout = Duration::from_secs(3);
        (self.tune)(&mut cfg);
        cfg
    }

    /// Opens member `id` from its data directory (new or existing) and connects it. Retries while
    /// the directory is still held by the previous incarnation's last handles.
    pub async fn launch(&mut self, id: NodeId) -> Store {
        let started = Instant::now();
        let store = loop {
            match Store::open(self.config(id), self.router.transport(id)).await {
                Ok(s) => break s,
                Err(OpenError::Locked { .. }) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("node {id} does not open: {e}"),
            }
        };
        self.router.register(id, store.raft().clone());
        self.nodes.insert(id, Some(store.clone()));
        store
    }

    /// Stops member `id` as a crash would look to the others: it vanishes from the network at once.
    pub async fn crash(&mut self, id: NodeId) {
        self.router.unregister(id);
        if let Some(store) = self.nodes.get_mut(&id).and_then(Option::take) {
            store.shutdown().await;
        }
    }

    pub fn store(&self, id: NodeId) -> Store {
        self.nodes.get(&id).and_then(Clone::clone).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, s)| s.is_some()).map(|(id, _)| *id).collect()
    }

    /// Waits until the running members agree on one leader that is itself running, and returns it.
    pub async fn wait_leader(&self) -> NodeId {
        self.wait_leader_among(&self.running()).await
    }

    pub async fn wait_leader_among(&self, ids: &[NodeId]) -> NodeId {
        poll("a leader agreed by all", || async {
            let mut leader = None;
            for id in ids {
                let m = self.store(*id).raft().metrics().borrow().clone();
                let l = m.current_leader?;
                if leader.is_some_and(|x| x != l) || !ids.contains(&l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            (self.store(l).raft().metrics().borrow().state == ServerState::Leader).then_some(l)
        })
        .await
    }

    /// Runs `op` against the current leader, retrying on errors that say "ask someone else".
    pub async fn on_leader<T, F, Fut>(&self, op: F) -> T
    where
        F: Fn(Store) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        loop {
            let leader = self.wait_leader().await;
            match op(self.store(leader)).await {
                Ok(v) => return v,
                Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_) | Error::Shutdown)) => {
                    assert!(started.elapsed() < DEADLINE, "no leader accepted the request: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("request failed: {e}"),
            }
        }
    }

    /// Puts `key` = `value` on the leader. A put whose leader was replaced while it was in
    /// flight may or may not have been applied; putting the same value again leaves the same
    /// state either way, so this helper retries it (tests of indeterminate outcomes call the
    /// store themselves).
    pub async fn put(&self, key: &str, value: &str) -> u64 {
        let (k, v) = (key.to_string(), value.to_string());
        self.on_leader(|s| {
            let (k, v) = (k.clone(), v.clone());
            async move {
                match s.put(k, v, 0).await {
                    Ok((rev, _)) => Ok(rev),
                    Err(Error::LeaderChanged { .. }) => Err(Error::Unavailable("the leader changed; put again".into())),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        for id in self.running() {
            let store = self.store(id);
            poll(&format!("node {id} applies index {index}"), || async {
                (store.applied_index() >= index).then_some(())
            })
            .await;
        }
    }

    /// Everything in member `id`'s state machine.
    pub async fn dump(&self, id: NodeId) -> (u64, Vec<KeyValue>) {
        let r = self.store(id).range(KeyRange::Prefix(vec![]), 0, Consistency::Local).await.unwrap();
        (r.revision, r.kvs)
    }

    /// Waits until every running member has the same state machine as the leader, and returns it.
    pub async fn converged(&self) -> (u64, Vec<KeyValue>) {
        let leader = self.wait_leader().await;
        let target = self.store(leader).raft().metrics().borrow().last_log_index.unwrap_or(0);
        self.wait_applied(target).await;
        let expected = self.dump(leader).await;
        for id in self.running() {
            assert_eq!(self.dump(id).await, expected, "node {id} differs from the leader {leader}");
        }
        expected
    }

    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.crash(id).await;
        }
    }
}

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_test_writer()
        .try_init();
}
