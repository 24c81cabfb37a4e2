//! The node's agent inside the cluster: it runs the instances the store assigns to this node
//! (`/instances/<node id>/...`) and reports them to the master.
//!
//! Two tasks. The applier reads the node's instance records from the local copy of the store
//! (a server has one: after a restart while cut off from every other server it starts from it)
//! and brings the agent to them; it wakes on every change under the prefix. The reporter sends
//! the master a [`NodeReport`] when something changed and at least once per second, with the
//! readiness and state of every unit the agent has. Reports live in the master's memory only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsu_agent::agent::{Agent, OnExit};
use hsu_agent::supervisor::{State, UnitStatus};
use hsu_model::state::{self, Capacity, Desired, InstanceRecord, InstanceReport, NodeReport};
use hsu_model::unit::UnitSpec;
use hsu_store::KeyRange;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::node::Node;
use crate::peer::PeerRequest;

/// The live status of each unit the agent has, shared by the applier with the reporter.
pub(crate) type Views = Arc<Mutex<BTreeMap<String, watch::Receiver<UnitStatus>>>>;

/// Starts both tasks; they end when the node stops, the applier once the agent has left its
/// units running (or stopped them, with `on_exit` [`OnExit::Stop`]). Returns the applier.
pub(crate) fn spawn(
    node: Node,
    agent_dir: PathBuf,
    labels: BTreeMap<String, String>,
    on_exit: OnExit,
) -> Result<tokio::task::JoinHandle<()>, hsu_agent::Error> {
    let agent = Agent::open(&agent_dir)?;
    let views: Views = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let applier = tokio::spawn(applier(node.clone(), agent, views.clone(), seen.clone(), on_exit));
    let me = Me { id: node.id(), name: node.name().to_string(), agent_dir, labels };
    let stop = node.stop_signal();
    let send: Sender = Arc::new(move |report| {
        let node = node.clone();
        Box::pin(async move { node.report(report).await })
    });
    tokio::spawn(reporter(me, views, seen, stop, send));
    Ok(applier)
}

/// Who reports.
pub(crate) struct Me {
    pub id: hsu_model::NodeId,
    pub name: String,
    pub agent_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
}

/// How a report reaches the leader.
pub(crate) type Sender = Arc<
    dyn Fn(NodeReport) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// Brings the agent to `want` and publishes the units' live status for the reporter.
pub(crate) async fn apply_and_publish(agent: &mut Agent, want: &[UnitSpec], views: &Views) {
    agent.apply(want.to_vec()).await;
    let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
    v.clear();
    for u in want {
        if let Some(rx) = agent.watch(u.name.as_str()) {
            v.insert(u.name.as_str().to_string(), rx);
        }
    }
}

fn desired(node: &Node) -> (Vec<UnitSpec>, u64) {
    let prefix = state::node_instances_prefix(node.id());
    let r = node.store().range_local(&KeyRange::Prefix(prefix.into_bytes()), 0);
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

async fn applier(node: Node, mut agent: Agent, views: Views, seen: Arc<std::sync::atomic::AtomicU64>, on_exit: OnExit) {
    let prefix = state::node_instances_prefix(node.id());
    let mut last: Option<Vec<UnitSpec>> = None;
    loop {
        let (want, revision) = desired(&node);
        if last.as_ref() != Some(&want) {
            apply_and_publish(&mut agent, &want, &views).await;
            last = Some(want);
        }
        seen.store(revision, std::sync::atomic::Ordering::Release);
        // Wake on the next change under the prefix (or stop).
        let mut watcher = match node.store().watch(KeyRange::Prefix(prefix.clone().into_bytes()), revision + 1) {
            Ok(w) => w,
            Err(e) => {
                debug!("instance watch: {e}; reading again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tokio::select! {
            _ = watcher.next() => {}
            () = node.stopped() => {
                // A node that left or was removed stops its units: their instances are placed
                // elsewhere, and nobody would supervise these copies any more.
                let on_exit = if node.departure().is_some() { OnExit::Stop } else { on_exit };
                agent.shutdown(on_exit).await;
                return;
            }
        }
    }
}

/// Sends the leader a report when something changed and at least once a second, until `stop`.
pub(crate) async fn reporter(
    me: Me,
    views: Views,
    seen: Arc<std::sync::atomic::AtomicU64>,
    mut stop: watch::Receiver<bool>,
    send: Sender,
) {
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
        let seen_revision = seen.load(std::sync::atomic::Ordering::Acquire);
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
