//! [`Node`]: one machine of the cluster with its store member, its QUIC endpoint and its gRPC
//! API. A node forwards what only the leader can do (writes, linearizable reads, lease
//! keep-alives, joins and membership changes) to the leader over QUIC, and answers local reads
//! and watches itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hsu_model::keys::{self, At};
use hsu_model::NodeId;
use hsu_net::pki::{self, certs_from_pem, identity_of, sha256, ClusterCa, Identity, RevocationCheck};
use hsu_net::quic::{Endpoint, EndpointConfig, Handler, ALPN};
use hsu_net::token::JoinToken;
use hsu_store::record::unchanged;
use hsu_store::{
    Consistency, Error, KeyRange, LeaseId, Member, RangeResult, Request, RequestId, Response, Store, StoreConfig, Txn,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::authz::{self, Ask, Caller, Role};
use crate::datadir::{DataDir, NodeState, Pki};
use crate::error::NodeError;
use crate::peer::{
    call_peer, CaKey, FromReply, HealthView, JoinGrant, JoinTicket, LastContact, PeerCallError, PeerError, PeerReply,
    PeerRequest, QuicRaftTransport, RoleWish,
};
use crate::records::{self, ApiRole, NodeRecord, RecordError, TokenEntry, TokenKind};
use crate::removal::{Departure, Removal};

mod admission;
mod health;
mod keepers;
mod membership;
mod route;
mod tokens;

/// Timings and options of a node; the defaults suit a LAN.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Labels the scheduler matches node selectors and constraints against.
    pub labels: BTreeMap<String, String>,
    /// A node that has not reported to the master for this long is down; its instances are
    /// placed elsewhere.
    pub node_grace: Duration,
    /// Stop this node's units when it stops (`hsu dev`); by default they keep running and the
    /// node adopts them when it starts again.
    pub stop_units_on_exit: bool,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub request_timeout: Duration,
    /// How long a membership change (a learner catching up) may take.
    pub membership_timeout: Duration,
    /// Make the store's writes durable before acknowledging them (`StoreConfig::fsync`).
    pub fsync: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        let store = StoreConfig::new(0, "");
        Tuning {
            labels: BTreeMap::new(),
            node_grace: hsu_control::controller::ControllerConfig::default().node_grace,
            stop_units_on_exit: false,
            heartbeat_interval: store.heartbeat_interval,
            election_timeout_min: store.election_timeout_min,
            election_timeout_max: store.election_timeout_max,
            request_timeout: store.request_timeout,
            membership_timeout: Duration::from_secs(120),
            fsync: true,
        }
    }
}

/// A member the cluster status reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub role: &'static str,
    pub address: String,
    pub api_address: String,
    pub healthy: bool,
    pub matched_index: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub leader: Option<(NodeId, String)>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    pub served_by: NodeId,
    pub cluster_name: String,
}

struct Inner {
    state: NodeState,
    pki: Pki,
    /// The CA private key, on voters only: loaded from `pki/ca.key`, or fetched from another
    /// voter once this node is one. It is in no record of the store, so no read, watch or
    /// snapshot can hand it to anybody.
    ca_key: std::sync::Mutex<Option<String>>,
    /// The data directory, where the CA key and the removal marker are kept.
    dir: std::path::PathBuf,
    /// Set when this node left or was removed from the cluster.
    removal: Removal,
    /// This process's session for writes applied exactly once.
    session: crate::session::ClientSession,
    ca_fingerprint: [u8; 32],
    store: Store,
    endpoint: Endpoint,
    contact: LastContact,
    tuning: Tuning,
    /// Flipped to true when the node should stop (after `leave`, or on a signal).
    stop: watch::Sender<bool>,
    /// Raft allows one membership change at a time; the leader queues its own here.
    membership: tokio::sync::Mutex<()>,
    /// The nodes' last reports, while this node leads.
    reports: Arc<hsu_control::controller::Reports>,
    agent_dir: std::path::PathBuf,
    /// The agent's task: it ends after the agent let go of (or stopped) the units.
    units: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The services as this node sees them.
    registry: hsu_registry::Registry,
}

/// What `Node::open` hands to the start-up that wires the API: the CA certificate (DER) and
/// the revocation check of every handshake.
pub(crate) struct Wiring {
    pub ca_der: Vec<u8>,
    pub is_revoked: RevocationCheck,
}

/// A running node. Cloning gives another handle on the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Opens the node of data directory `dir`: binds its QUIC endpoint (served by `handler`) and
    /// opens its store member. `crate::start` then starts the API, the controllers and the
    /// agent around it.
    pub(crate) async fn open<H: Handler>(
        dir: &DataDir,
        state: NodeState,
        pki: Pki,
        tuning: Tuning,
        handler: Arc<H>,
    ) -> Result<(Node, Wiring), NodeError> {
        let ca_der = certs_from_pem(&pki.ca_pem)?
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| NodeError::Config("pki/ca.crt holds no certificate".into()))?;
        let store_cell: Arc<OnceLock<Store>> = Arc::new(OnceLock::new());
        let is_revoked: RevocationCheck = {
            let store = store_cell.clone();
            // Servers and agent-only nodes alike (`node_id`), at every handshake.
            Arc::new(move |identity: &Identity| match (identity.node_id(), store.get()) {
                (Some(id), Some(store)) => {
                    !store.range_local(&KeyRange::from(&keys::REVOKED.key(id)), 1).kvs.is_empty()
                }
                _ => false,
            })
        };
        let verifier = pki::RevocationAwareVerifier::new(ca_der.clone(), is_revoked.clone())?;
        let server_tls = pki::server_config(&pki.node, verifier, &[ALPN])?;
        let client_tls = pki::client_config(&pki.ca_pem, Some(&pki.node), &[ALPN])?;
        let quic_cfg = EndpointConfig {
            // Stable across restarts and secret: peers learn at once that an old connection died.
            stateless_reset_key: Some(sha256(format!("hsu quic reset\0{}", pki.node.key_pem).as_bytes())),
            ..EndpointConfig::default()
        };
        let endpoint = Endpoint::bind(state.listen, server_tls, client_tls, handler, quic_cfg)?;
        let contact = LastContact::default();
        let mut store_cfg = StoreConfig::new(state.id, dir.store_dir());
        store_cfg.heartbeat_interval = tuning.heartbeat_interval;
        store_cfg.election_timeout_min = tuning.election_timeout_min;
        store_cfg.election_timeout_max = tuning.election_timeout_max;
        store_cfg.request_timeout = tuning.request_timeout;
        store_cfg.fsync = tuning.fsync;
        if !tuning.fsync {
            tracing::warn!("fsync is off (--unsafe-no-fsync): a power cut loses acknowledged writes");
        }
        let store = Store::open(store_cfg, QuicRaftTransport::new(endpoint.clone(), contact.clone())).await?;
        let _ = store_cell.set(store.clone());
        let node = Node {
            inner: Arc::new(Inner {
                ca_fingerprint: sha256(&ca_der),
                state,
                ca_key: std::sync::Mutex::new(pki.ca_key_pem.clone()),
                dir: dir.root().to_path_buf(),
                removal: Removal::default(),
                session: crate::session::ClientSession::new(),
                pki,
                store,
                endpoint,
                contact,
                tuning,
                stop: watch::channel(false).0,
                membership: tokio::sync::Mutex::new(()),
                reports: Arc::default(),
                units: std::sync::Mutex::new(None),
                agent_dir: dir.agent_dir(),
                registry: hsu_registry::Registry::new(),
            }),
        };
        Ok((node, Wiring { ca_der, is_revoked }))
    }

    /// The services as this node sees them.
    pub fn registry(&self) -> &hsu_registry::Registry {
        &self.inner.registry
    }

    /// Keeps the agent's task, for `shutdown` to wait on.
    pub(crate) fn set_units(&self, units: tokio::task::JoinHandle<()>) {
        *self.inner.units.lock().unwrap_or_else(|p| p.into_inner()) = Some(units);
    }

    /// Starts the tasks that keep the CA key on voters and notice this node's removal.
    pub(crate) fn spawn_keepers(&self) {
        tokio::spawn(self.clone().keep_ca_key());
        tokio::spawn(self.clone().notice_removal());
    }

    /// Why this node stopped being part of the cluster, once it did.
    pub fn departure(&self) -> Option<Departure> {
        self.inner.removal.get()
    }

    /// The role node `identity` has as this node sees it: agent-only by its certificate (or, for
    /// certificates from before agent-only nodes had their own kind, by its record), else by
    /// its place in this node's Raft membership.
    pub(crate) fn role_of(&self, identity: &Identity) -> Role {
        let id = match identity {
            Identity::Node(id) => *id,
            // Callers refuse identities without a node id before asking; were one to get here,
            // it gets the least.
            Identity::Agent(_) | Identity::Admin(_) => return Role::Agent,
        };
        let kv = self.store().range_local(&KeyRange::from(&keys::NODES.key(id)), 1).kvs.into_iter().next();
        if kv.and_then(|kv| records::decode::<NodeRecord>(&kv.key, &kv.value).ok()).is_some_and(|r| r.agent_only) {
            return Role::Agent;
        }
        let members = self.store().members();
        if members.is_voter(id) {
            Role::Voter
        } else if members.contains(id) {
            Role::Learner
        } else {
            Role::Joining
        }
    }

    /// This node's own role, as its own membership says.
    fn own_role(&self) -> Role {
        self.role_of(&Identity::Node(self.id()))
    }

    pub fn id(&self) -> NodeId {
        self.inner.state.id
    }

    pub fn name(&self) -> &str {
        &self.inner.state.name
    }

    pub fn state(&self) -> &NodeState {
        &self.inner.state
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Where this node's agent keeps its records and the units' files.
    pub fn agent_dir(&self) -> std::path::PathBuf {
        self.inner.agent_dir.clone()
    }

    pub fn tuning(&self) -> &Tuning {
        &self.inner.tuning
    }

    /// The nodes' last reports (filled while this node leads).
    pub fn reports(&self) -> &Arc<hsu_control::controller::Reports> {
        &self.inner.reports
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.inner.state.api
    }

    pub(crate) fn pki(&self) -> &Pki {
        &self.inner.pki
    }

    /// True when node `id`'s certificate has been revoked (the node was removed), in this node's
    /// copy of the store. The TLS layers check this once per connection; the endpoints check it
    /// again per request ([`Node::check_peer`]), so that a connection opened before the removal
    /// serves no more.
    pub fn is_revoked(&self, id: NodeId) -> bool {
        !self.store().range_local(&KeyRange::from(&keys::REVOKED.key(id)), 1).kvs.is_empty()
    }

    /// The nodes whose certificates were revoked, in this node's copy of the store.
    pub(crate) fn revoked_ids(&self) -> Vec<NodeId> {
        let r = self.store().range_local(&KeyRange::from(&keys::REVOKED.all()), 0);
        r.kvs.iter().filter_map(|kv| keys::REVOKED.id_of(&kv.key)).collect()
    }

    /// Checks that `cert_der` is the certificate node `id` was enrolled with, and that the node is
    /// neither removed nor revoked, against this node's copy of the store. A removed voter may
    /// keep a copy of the CA key and mint itself a certificate for any id: chaining to the CA is
    /// necessary, not sufficient. A store that has not received the node records yet (a node
    /// that is joining and catching up) knows nobody and relies on the TLS checks alone.
    pub fn check_peer(&self, id: NodeId, cert_der: &[u8]) -> Result<(), String> {
        if self.is_revoked(id) {
            return Err(format!("node {id}'s certificate was revoked"));
        }
        let store = self.store();
        if store.range_local(&KeyRange::from(&keys::NODES.all()), 1).kvs.is_empty() {
            return Ok(());
        }
        let kv = store.range_local(&KeyRange::from(&keys::NODES.key(id)), 1).kvs.into_iter().next();
        let kv = kv.ok_or_else(|| format!("node {id} is not enrolled in this cluster"))?;
        let record: NodeRecord = records::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
        // A node marked removed may still finish leaving: its record is marked before the
        // membership change (a leader that removes itself cannot write afterwards), and until that
        // change commits it may have to forward its own removal to a new leader.
        let in_membership = store.members().contains(id);
        if record.removed && !in_membership {
            return Err(format!("node {id} was removed from the cluster"));
        }
        if record.cert_sha256 != sha256(cert_der) {
            return Err(format!("this is not the certificate node {id} was enrolled with"));
        }
        Ok(())
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.inner.ca_fingerprint
    }

    /// Turns true when the node has been asked to stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Resolves when the node has been asked to stop.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Asks the node to stop; [`Node::stopped`] resolves.
    pub fn request_stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Stops the agent (its units keep running unless `stop_units_on_exit`), the store and the
    /// endpoint.
    pub async fn shutdown(&self) {
        self.request_stop();
        let units = self.inner.units.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(units) = units {
            let _ = units.await;
        }
        self.inner.store.shutdown().await;
        self.inner.endpoint.shutdown().await;
    }

    /// Waits until some member is the leader, for at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, NodeError> {
        let mut status = self.store().status_watch();
        let leader = tokio::time::timeout(timeout, async {
            match status.wait_for(|s| s.leader.is_some()).await {
                Ok(s) => s.leader.unwrap_or(0),
                Err(_) => 0,
            }
        })
        .await
        .map_err(|_| NodeError::Config(format!("no leader within {timeout:?}")))?;
        Ok(leader)
    }
}

fn put_if_unchanged<V: serde::Serialize>(at: &At<V>, revision: u64, value: &V) -> Result<Request, RecordError> {
    Ok(Request::Txn(Txn {
        compare: vec![unchanged(at, revision)],
        success: vec![records::put(at, value)?],
        failure: vec![],
    }))
}

/// `(id, address)` of members with the voters first: who to follow and report through.
pub(crate) fn voters_first(
    members: impl Iterator<Item = (NodeId, String)>,
    is_voter: impl Fn(NodeId) -> bool,
) -> Vec<(NodeId, String)> {
    let mut all: Vec<(NodeId, String)> = members.collect();
    all.sort_by_key(|(id, _)| (!is_voter(*id), *id));
    all
}

/// Node names: what a DNS label allows, so they can appear in certificates and hostnames.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("node name {name:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"))
    }
}

/// The identity behind a peer certificate chain, if any.
pub fn identity_of_chain(certs: &[impl AsRef<[u8]>]) -> Option<Identity> {
    certs.first().and_then(|c| identity_of(c.as_ref()).ok())
}
