//! Agent-only nodes: machines that run units but hold no replica of the store (edge devices).
//!
//! An agent-only node keeps a QUIC endpoint and an agent, nothing else. It asks any server for
//! its own instances (`METHOD_WATCH`: a server stream that sends this node's instance records,
//! and the servers' addresses, now and whenever they change) and reports to the leader through
//! that server. It only ever sees what concerns it. Its units outlive it; when it starts again
//! while no server can be reached (a reboot while cut off) it starts the units of its own
//! records, then follows the servers once one answers.
//!
//! Its certificate says it is agent-only (`hsu://agent/<id>`), so servers grant it only what
//! `crate::authz` allows an agent. Having no store, it learns which certificates are revoked
//! from the same stream and refuses them on its own endpoint.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hsu_agent::agent::{Agent, OnExit};
use hsu_model::keys;
use hsu_model::state::{Desired, InstanceRecord};
use hsu_model::unit::UnitSpec;
use hsu_model::{decode_record, encode_record, NodeId};
use hsu_net::pki::{self, certs_from_pem, identity_of, Identity, RevocationAwareVerifier};
use hsu_net::quic::{Endpoint, EndpointConfig, Handler, NetError, Peer, ALPN};
use hsu_store::KeyRange;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::datadir::{DataDir, NodeState, Pki};
use crate::error::NodeError;
use crate::node::{Node, Tuning};
use crate::peer::{
    call_peer, node_server_name, parse_addr, PeerError, PeerReply, PeerRequest, METHOD_LOGS, METHOD_WATCH,
};
use crate::removal::{Departure, Removal};
use crate::units::{self, DesiredSource, Me, Sender};

/// What a server sends an agent-only node: its instances at a store revision, where the
/// servers are (voters first), and which nodes' certificates are revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstancesUpdate {
    pub revision: u64,
    pub instances: Vec<InstanceRecord>,
    pub servers: Vec<(NodeId, String)>,
    pub revoked: Vec<NodeId>,
}

/// How often a server sends the list again even when nothing changed.
const REFRESH: Duration = Duration::from_secs(10);

impl Node {
    /// The server side of `METHOD_WATCH` for node `id`.
    pub(crate) fn watch_for(&self, id: NodeId) -> Result<mpsc::Receiver<Vec<u8>>, String> {
        let (tx, rx) = mpsc::channel(4);
        let node = self.clone();
        tokio::spawn(async move {
            let prefix = keys::INSTANCES.of_node(id);
            loop {
                let r = node.store().range_local(&KeyRange::Prefix(prefix.clone().into_bytes()), 0);
                let instances = r.kvs.iter().filter_map(|kv| decode_record::<InstanceRecord>(&kv.value).ok()).collect();
                let servers = {
                    let members = node.store().members();
                    crate::node::voters_first(members.nodes().map(|(id, n)| (id, n.addr.clone())), |id| {
                        members.is_voter(id)
                    })
                };
                let revoked = node.revoked_ids();
                let update = InstancesUpdate { revision: r.revision, instances, servers, revoked };
                let Ok(bytes) = encode_record(&update) else { return };
                if tx.send(bytes).await.is_err() {
                    return;
                }
                let Ok(mut w) = node.store().watch(KeyRange::Prefix(prefix.clone().into_bytes()), r.revision + 1)
                else {
                    return;
                };
                tokio::select! {
                    _ = w.next() => {}
                    () = tokio::time::sleep(REFRESH) => {}
                    () = tx.closed() => return,
                    () = node.stopped() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// Node ids whose certificates the cluster revoked, as servers last told this node; kept in the
/// data directory so that a restart while cut off still refuses them.
type Revoked = Arc<RwLock<BTreeSet<NodeId>>>;

/// Serves the agent-only node's own endpoint: servers ask it for unit logs; nobody else may
/// ask anything.
struct AgentHandler {
    agent_dir: PathBuf,
    revoked: Revoked,
}

impl Handler for AgentHandler {
    async fn call(&self, _peer: Peer, method: u16, _body: Vec<u8>) -> Result<Vec<u8>, String> {
        Err(format!("an agent-only node serves no method {method}"))
    }

    fn admitted(&self, peer: &Peer) -> Result<(), String> {
        let identity = identity_of(&peer.cert_der).map_err(|e| e.to_string())?;
        match identity.node_id() {
            Some(id) if self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&id) => {
                Err(format!("node {id}'s certificate was revoked"))
            }
            _ => Ok(()),
        }
    }

    async fn stream(&self, peer: Peer, method: u16, body: Vec<u8>) -> Result<mpsc::Receiver<Vec<u8>>, String> {
        // Only servers (which ask on behalf of `hsu logs`); another agent-only node asks nothing.
        match identity_of(&peer.cert_der) {
            Ok(Identity::Node(_)) => {}
            Ok(other) => return Err(format!("{other} may not ask an agent-only node for anything")),
            Err(e) => return Err(e.to_string()),
        }
        match method {
            METHOD_LOGS => crate::logs::serve_log(&self.agent_dir, decode_record(&body).map_err(|e| e.to_string())?),
            other => Err(format!("unknown stream method {other}")),
        }
    }
}

struct Inner {
    state: NodeState,
    endpoint: Endpoint,
    stop: watch::Sender<bool>,
    units: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Servers as (id, QUIC address), first the one that answered last; kept in the data
    /// directory for the next start.
    servers: Mutex<Vec<(NodeId, String)>>,
    servers_file: PathBuf,
    revoked: Revoked,
    revoked_file: PathBuf,
    dir: PathBuf,
    removal: Removal,
}

/// A running agent-only node.
#[derive(Clone)]
pub struct AgentNode {
    inner: Arc<Inner>,
}

impl AgentNode {
    /// Starts the node of data directory `dir` (made by `hsu node join --role agent`).
    pub async fn start(dir: &DataDir, state: NodeState, pki: Pki, tuning: Tuning) -> Result<AgentNode, NodeError> {
        let ca_der = certs_from_pem(&pki.ca_pem)?
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| NodeError::Config("pki/ca.crt holds no certificate".into()))?;
        // No store here: the revocation list comes with the instance stream.
        let revoked_file = dir.root().join("revoked.json");
        let known: BTreeSet<NodeId> =
            std::fs::read(&revoked_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let revoked: Revoked = Arc::new(RwLock::new(known));
        let is_revoked = {
            let revoked = revoked.clone();
            Arc::new(move |identity: &Identity| {
                identity.node_id().is_some_and(|id| revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&id))
            })
        };
        let verifier = RevocationAwareVerifier::new(ca_der, is_revoked)?;
        let server_tls = pki::server_config(&pki.node, verifier, &[ALPN])?;
        let client_tls = pki::client_config(&pki.ca_pem, Some(&pki.node), &[ALPN])?;
        let agent_dir = dir.agent_dir();
        let handler = Arc::new(AgentHandler { agent_dir: agent_dir.clone(), revoked: revoked.clone() });
        let endpoint = Endpoint::bind(state.listen, server_tls, client_tls, handler, EndpointConfig::default())?;
        let servers_file = dir.root().join("servers.json");
        let servers: Vec<(NodeId, String)> =
            std::fs::read(&servers_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let node = AgentNode {
            inner: Arc::new(Inner {
                state,
                endpoint,
                stop: watch::channel(false).0,
                units: Mutex::new(None),
                servers: Mutex::new(servers),
                servers_file,
                revoked,
                revoked_file,
                dir: dir.root().to_path_buf(),
                removal: Removal::default(),
            }),
        };
        let agent = Agent::open(&agent_dir)?;
        // What the agent recorded runs at once, before any server answers.
        let mut recorded = agent.recorded_specs();
        recorded.sort_by(|a, b| a.name.cmp(&b.name));
        let source = StreamSource { node: node.clone(), recorded: Some(recorded), stream: None, turn: 0, pause: false };
        let me = Me { id: node.id(), name: node.name().to_string(), agent_dir, labels: tuning.labels.clone() };
        let sender = node.clone();
        let send: Sender = Arc::new(move |report| {
            let node = sender.clone();
            Box::pin(async move { node.report(report).await })
        });
        let departed = node.clone();
        let keep = if tuning.stop_units_on_exit { OnExit::Stop } else { OnExit::Keep };
        // Departed: the cluster placed the instances elsewhere; nobody would supervise these.
        let on_exit = move || if departed.departure().is_some() { OnExit::Stop } else { keep };
        let applier = units::spawn(agent, source, me, send, node.inner.stop.subscribe(), on_exit);
        *node.inner.units.lock().unwrap_or_else(|p| p.into_inner()) = Some(applier);
        tokio::spawn(node.clone().notice_removal());
        Ok(node)
    }

    /// Why this node stopped being part of the cluster, once it did.
    pub fn departure(&self) -> Option<Departure> {
        self.inner.removal.get()
    }

    /// The servers refuse this node's certificate as revoked, again and again: the cluster
    /// removed it (a node that left marked its data directory first).
    async fn notice_removal(self) {
        let mut refused = self.inner.endpoint.revocations();
        tokio::select! {
            r = refused.wait_for(|n| *n >= crate::removal::REFUSALS_IN_A_ROW) => if r.is_err() { return },
            () = self.stopped() => return,
        }
        let departure = crate::removal::marked(&self.inner.dir)
            .unwrap_or_else(|| Departure::Removed("the servers refuse its certificate as revoked".into()));
        self.depart(departure);
    }

    fn depart(&self, departure: Departure) {
        let who = format!("this agent-only node (id {})", self.id());
        if self.inner.removal.depart(&self.inner.dir, &who, departure) {
            self.inner.stop.send_replace(true);
        }
    }

    /// Keeps the servers' revocation list (and a copy in the data directory).
    fn set_revoked(&self, ids: Vec<NodeId>) {
        let ids: BTreeSet<NodeId> = ids.into_iter().collect();
        let mut known = self.inner.revoked.write().unwrap_or_else(|p| p.into_inner());
        if *known != ids {
            if let Ok(text) = serde_json::to_vec(&ids) {
                if let Err(e) = std::fs::write(&self.inner.revoked_file, text) {
                    warn!("cannot keep the revocation list in {}: {e}", self.inner.revoked_file.display());
                }
            }
            *known = ids;
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.state.id
    }

    pub fn name(&self) -> &str {
        &self.inner.state.name
    }

    /// Sets the servers to try, e.g. those a join learned (kept for the next start).
    pub fn set_servers(&self, servers: Vec<(NodeId, String)>) {
        let mut s = self.inner.servers.lock().unwrap_or_else(|p| p.into_inner());
        if *s != servers && !servers.is_empty() {
            if let Ok(text) = serde_json::to_vec(&servers) {
                if let Err(e) = std::fs::write(&self.inner.servers_file, text) {
                    warn!("cannot keep the server list in {}: {e}", self.inner.servers_file.display());
                }
            }
            *s = servers;
        }
    }

    fn servers(&self) -> Vec<(NodeId, String)> {
        self.inner.servers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves when the node has been asked to stop.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops the agent (its units keep running unless `stop_units_on_exit`) and the endpoint.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let units = self.inner.units.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(units) = units {
            let _ = units.await;
        }
        self.inner.endpoint.shutdown().await;
    }

    /// Sends a report to the first server that takes it (servers pass it on to the leader).
    async fn report(&self, report: hsu_model::state::NodeReport) -> Result<(), String> {
        to_any_server(&self.inner.endpoint, &self.servers(), &PeerRequest::Report(Box::new(report))).await
    }
}

/// An agent-only node's [`DesiredSource`]: first the units its agent recorded, then the
/// instances of one server's stream, trying the servers in turn (one a second) while none answers.
struct StreamSource {
    node: AgentNode,
    recorded: Option<Vec<UnitSpec>>,
    /// The stream followed, and the server it comes from.
    stream: Option<(NodeId, Frames)>,
    turn: usize,
    /// A server failed or ended its stream: wait a second before the next.
    pause: bool,
}

type Frames = mpsc::Receiver<Result<Vec<u8>, NetError>>;

impl StreamSource {
    /// Opens the stream of the next server in turn.
    async fn connect(&mut self) -> Result<(NodeId, Frames), String> {
        let servers = self.node.servers();
        let (id, addr) = servers.get(self.turn % servers.len().max(1)).cloned().ok_or("no server is known")?;
        self.turn += 1;
        let addr = parse_addr(&addr)?;
        let rx = self
            .node
            .inner
            .endpoint
            .stream(addr, &node_server_name(id), METHOD_WATCH, &[])
            .await
            .map_err(|e| format!("server {id}: {e}"))?;
        Ok((id, rx))
    }

    /// The next update of the followed stream; `Err` when it failed or ended.
    async fn update(&mut self) -> Option<Result<(NodeId, InstancesUpdate), String>> {
        let (id, rx) = self.stream.as_mut()?;
        let id = *id;
        let mut stop = self.node.inner.stop.subscribe();
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = stop.wait_for(|s| *s) => return None,
        };
        Some(match frame {
            Some(Ok(bytes)) => decode_record(&bytes).map(|u| (id, u)).map_err(|e| format!("server {id}: {e}")),
            Some(Err(e)) => Err(format!("server {id}: {e}")),
            None => Err(format!("server {id} ended the stream")),
        })
    }
}

impl DesiredSource for StreamSource {
    async fn next(&mut self) -> Option<(Vec<UnitSpec>, u64)> {
        if let Some(recorded) = self.recorded.take() {
            return Some((recorded, 0));
        }
        loop {
            if *self.node.inner.stop.borrow() {
                return None;
            }
            if self.stream.is_none() {
                if self.pause {
                    let mut stop = self.node.inner.stop.subscribe();
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return None,
                    }
                }
                match self.connect().await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        debug!("instance stream: {e}");
                        self.pause = true;
                        continue;
                    }
                }
            }
            match self.update().await? {
                Ok((id, update)) => {
                    self.node.set_revoked(update.revoked);
                    // The server that answered goes first next time.
                    let mut servers = update.servers;
                    servers.sort_by_key(|(s, _)| *s != id);
                    self.node.set_servers(servers);
                    let mut want: Vec<UnitSpec> =
                        update.instances.into_iter().filter(|i| i.desired == Desired::Run).map(|i| i.unit.0).collect();
                    want.sort_by(|a, b| a.name.cmp(&b.name));
                    return Some((want, update.revision));
                }
                Err(e) => {
                    debug!("instance stream: {e}");
                    self.stream = None;
                    self.pause = true;
                }
            }
        }
    }
}

/// Sends `req` to the first of `servers` that takes it (each passes it on to the leader); the
/// error says how the last one refused.
async fn to_any_server(endpoint: &Endpoint, servers: &[(NodeId, String)], req: &PeerRequest) -> Result<(), String> {
    let mut last = "no server known yet".to_string();
    for (id, addr) in servers {
        match call_peer(endpoint, *id, addr, req, Duration::from_secs(3)).await {
            Ok(PeerReply::Done) => return Ok(()),
            // A revocation holds for the whole cluster: asking the others only takes longer.
            Err(crate::peer::PeerCallError::NotSent(e @ NetError::Revoked { .. })) => return Err(e.to_string()),
            Ok(other) => last = format!("server {id}: unexpected reply {other:?}"),
            Err(crate::peer::PeerCallError::Remote(PeerError::Denied(why))) => last = format!("server {id}: {why}"),
            Err(e) => last = format!("server {id}: {e:?}"),
        }
    }
    Err(last)
}

impl AgentNode {
    /// `hsu node leave` for the agent-only node of data directory `dir`: asks a server, with the
    /// node's own certificate, to mark it removed, and marks the data directory. The running node
    /// (if any) is then refused by the servers and stops, with its units.
    pub async fn leave(dir: &DataDir) -> Result<NodeId, NodeError> {
        let state = dir.load_state()?;
        let pki = dir.load_pki()?;
        let servers: Vec<(NodeId, String)> = std::fs::read(dir.root().join("servers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let client_tls = pki::client_config(&pki.ca_pem, Some(&pki.node), &[ALPN])?;
        let endpoint =
            Endpoint::client_on((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), client_tls, EndpointConfig::default())?;
        let req = PeerRequest::RemoveMember { id: state.id, revoke: false };
        let sent = to_any_server(&endpoint, &servers, &req).await;
        endpoint.shutdown().await;
        sent.map_err(|e| NodeError::Api(format!("no server took the leave: {e}")))?;
        crate::removal::mark(dir.root(), &Departure::Left);
        Ok(state.id)
    }
}
