//! The node's agent driver, one for both kinds of node: it brings the agent to what a
//! [`DesiredSource`] says should run on this node and reports the units to the master.
//!
//! Two tasks. The applier takes each new desired set from the source and brings the agent to it.
//! A server's source ([`StoreSource`]) reads the node's instance records
//! (`/instances/<node id>/...`) from the local copy of the store, so that after a restart while
//! cut off from every other server it starts from it, and wakes on every change under the
//! prefix. An agent-only node's source follows a server's stream (`crate::agent_node`). The
//! reporter sends the master a [`NodeReport`] when something changed and at least once per
//! second, with the readiness and state of every unit the agent has. Reports live in the
//! master's memory only.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsu_agent::agent::{Agent, OnExit};
use hsu_agent::supervisor::{State, UnitStatus};
use hsu_model::keys;
use hsu_model::state::{Capacity, Desired, InstanceRecord, InstanceReport, NodeReport};
use hsu_model::unit::UnitSpec;
use hsu_store::KeyRange;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::peer::PeerRequest;

/// The live status of each unit the agent has, shared by the applier with the reporter.
type Views = Arc<Mutex<BTreeMap<String, watch::Receiver<UnitStatus>>>>;

/// Where the driver learns what should run on this node.
pub(crate) trait DesiredSource: Send + 'static {
    /// The next desired set of units and the store revision it reflects (the first call answers
    /// at once); `None` once the node stops.
    fn next(&mut self) -> impl Future<Output = Option<(Vec<UnitSpec>, u64)>> + Send;
}

/// How a report reaches the leader.
pub(crate) type Sender =
    Arc<dyn Fn(NodeReport) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Who reports.
pub(crate) struct Me {
    pub id: hsu_model::NodeId,
    pub name: String,
    pub agent_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
}

/// Starts the applier and the reporter. They end when the source ends and `stop` is set; the
/// applier then leaves the units running or stops them, as `on_exit` says at that moment (a
/// node that left or was removed stops them: their instances are placed elsewhere, and nobody
/// would supervise these copies any more). Returns the applier.
pub(crate) fn spawn(
    agent: Agent,
    source: impl DesiredSource,
    me: Me,
    send: Sender,
    stop: watch::Receiver<bool>,
    on_exit: impl FnOnce() -> OnExit + Send + 'static,
) -> JoinHandle<()> {
    let views: Views = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(reporter(me, views.clone(), seen.clone(), stop, send));
    tokio::spawn(applier(agent, source, views, seen, on_exit))
}

async fn applier(
    mut agent: Agent,
    mut source: impl DesiredSource,
    views: Views,
    seen: Arc<AtomicU64>,
    on_exit: impl FnOnce() -> OnExit,
) {
    let mut last: Option<Vec<UnitSpec>> = None;
    while let Some((want, revision)) = source.next().await {
        if last.as_ref() != Some(&want) {
            if last.is_some() {
                info!(units = want.len(), revision, "this node's instances changed");
            }
            apply_and_publish(&mut agent, &want, &views).await;
            last = Some(want);
        }
        seen.store(revision, Ordering::Release);
    }
    agent.shutdown(on_exit()).await;
}

/// Brings the agent to `want` and publishes the units' live status for the reporter (the units
/// first: the reporter reads the revision before the units, see [`reporter`]).
async fn apply_and_publish(agent: &mut Agent, want: &[UnitSpec], views: &Views) {
    agent.apply(want.to_vec()).await;
    let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
    v.clear();
    for u in want {
        if let Some(rx) = agent.watch(u.name.as_str()) {
            v.insert(u.name.as_str().to_string(), rx);
        }
    }
}

/// A server's source: its instance records in the local copy of the store.
pub(crate) struct StoreSource {
    node: Node,
    /// The revision last answered; `None` before the first answer.
    revision: Option<u64>,
}

impl StoreSource {
    pub(crate) fn new(node: Node) -> StoreSource {
        StoreSource { node, revision: None }
    }

    fn desired(&self) -> (Vec<UnitSpec>, u64) {
        let prefix = keys::INSTANCES.of_node(self.node.id());
        let r = self.node.store().range_local(&KeyRange::Prefix(prefix.into_bytes()), 0);
        let mut units = Vec::new();
        for kv in r.kvs {
            match hsu_model::decode_record::<InstanceRecord>(&kv.value) {
                Ok(i) if i.desired == Desired::Run => units.push(i.unit.0),
                Ok(_) => {}
                Err(e) => warn!(key = %String::from_utf8_lossy(&kv.key), "instance record does not decode: {e}"),
            }
        }
        (units, r.revision)
    }
}

impl DesiredSource for StoreSource {
    async fn next(&mut self) -> Option<(Vec<UnitSpec>, u64)> {
        if let Some(revision) = self.revision {
            // Wake on the next change under the prefix (or stop).
            let prefix = keys::INSTANCES.of_node(self.node.id()).into_bytes();
            match self.node.store().watch(KeyRange::Prefix(prefix), revision + 1) {
                Ok(mut watcher) => {
                    tokio::select! {
                        _ = watcher.next() => {}
                        () = self.node.stopped() => return None,
                    }
                }
                Err(e) => {
                    debug!("instance watch: {e}; reading again");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = self.node.stopped() => return None,
                    }
                }
            }
        }
        let (units, revision) = self.desired();
        self.revision = Some(revision);
        Some((units, revision))
    }
}

/// Starts a server's driver on its own store.
pub(crate) fn spawn_for_server(
    node: Node,
    agent_dir: PathBuf,
    labels: BTreeMap<String, String>,
    on_exit: OnExit,
) -> Result<JoinHandle<()>, hsu_agent::Error> {
    let agent = Agent::open(&agent_dir)?;
    let me = Me { id: node.id(), name: node.name().to_string(), agent_dir, labels };
    let stop = node.stop_signal();
    let sender = node.clone();
    let send: Sender = Arc::new(move |report| {
        let node = sender.clone();
        Box::pin(async move { node.report(report).await })
    });
    let departed = node.clone();
    let on_exit = move || if departed.departure().is_some() { OnExit::Stop } else { on_exit };
    Ok(spawn(agent, StoreSource::new(node), me, send, stop, on_exit))
}

/// Sends the leader a report when something changed and at least once a second, until `stop`.
async fn reporter(me: Me, views: Views, seen: Arc<AtomicU64>, mut stop: watch::Receiver<bool>, send: Sender) {
    let capacity = match hsu_agent::resources::Sampler::new().and_then(|mut s| s.sample(&me.agent_dir)) {
        Ok(r) => Capacity { cpu_millis: u64::from(r.cpu_cores) * 1000, memory_bytes: r.memory_total_bytes },
        Err(e) => {
            warn!("node resources unknown ({e}): only instances that ask for no CPU and no memory fit here");
            Capacity::default()
        }
    };
    let mut ready_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_sent: Option<(Instant, Vec<InstanceReport>, u64)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // The revision first, then the units: the applier publishes the units before the
        // revision, so the units read here are at least as new as the revision says. (The other
        // order could report an instance it has just started as missing, and the master would
        // take it for lost.)
        let seen_revision = seen.load(Ordering::Acquire);
        let statuses: Vec<UnitStatus> = {
            let v = views.lock().unwrap_or_else(|p| p.into_inner());
            v.values().map(|rx| rx.borrow().clone()).collect()
        };
        let now = Instant::now();
        ready_since.retain(|name, _| statuses.iter().any(|s| s.name == *name && s.ready));
        let instances: Vec<InstanceReport> = statuses
            .iter()
            .map(|s| {
                let since = if s.ready { Some(*ready_since.entry(s.name.clone()).or_insert(now)) } else { None };
                InstanceReport {
                    id: s.name.clone(),
                    state: state_name(s.state).into(),
                    ready: s.ready,
                    // Rounded to 100 ms, so that a report changes when readiness does, not every tick.
                    ready_for_ms: since.map_or(0, |t| (now - t).as_millis() as u64 / 100 * 100),
                    restarts: s.restarts,
                    exit_code: match s.last_exit {
                        Some(hsu_agent::Exit::Code(c)) => Some(c),
                        _ => None,
                    },
                    finished: matches!(s.state, State::Exited),
                    message: s.message.clone().or_else(|| s.probe_failure.clone()),
                    ports: s.ports.clone(),
                }
            })
            .collect();
        let due = match &last_sent {
            None => true,
            Some((at, prev, rev)) => {
                at.elapsed() >= Duration::from_secs(1) || !same_shape(prev, &instances) || *rev != seen_revision
            }
        };
        if !due {
            continue;
        }
        let report = NodeReport {
            node: me.id,
            name: me.name.clone(),
            labels: me.labels.clone(),
            capacity,
            instances: instances.clone(),
            seen_revision,
        };
        match send(report).await {
            Ok(()) => last_sent = Some((Instant::now(), instances, seen_revision)),
            Err(e) => debug!("report to the master: {e}"),
        }
    }
}

/// Equal but for how long each has been ready (which changes every tick).
fn same_shape(a: &[InstanceReport], b: &[InstanceReport]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            InstanceReport { ready_for_ms: 0, ..x.clone() } == InstanceReport { ready_for_ms: 0, ..y.clone() }
        })
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Running => "running",
        State::Backoff => "backoff",
        State::Exited => "exited",
        State::Failed => "failed",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
    }
}

impl Node {
    /// Sends this node's report to the master.
    pub async fn report(&self, report: NodeReport) -> Result<(), String> {
        self.leader_call::<()>(PeerRequest::Report(Box::new(report))).await.map_err(|e| e.to_string())
    }
}
