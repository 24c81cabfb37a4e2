//! [`Node`]: one machine of the cluster with its store member, its QUIC endpoint and its gRPC
//! API. A node forwards what only the leader can do (writes, linearizable reads, lease
//! keep-alives, joins and membership changes) to the leader over QUIC, and answers local reads
//! and watches itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hsu_agent::OnExit;
use hsu_model::NodeId;
use hsu_net::pki::{self, certs_from_pem, identity_of, sha256, ClusterCa, Identity, RevocationCheck};
use hsu_net::quic::{Endpoint, EndpointConfig, ALPN};
use hsu_net::token::{JoinToken, TokenRecord};
use hsu_store::{
    Compare, CompareOp, CompareTarget, Consistency, Error, KeyRange, LeaseId, Member, Op, RangeResult, Request,
    RequestId, Response, Store, StoreConfig, Txn,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::authz::{self, Ask, Caller, Role};
use crate::datadir::{DataDir, NodeState, Pki};
use crate::error::NodeError;
use crate::peer::{
    call_peer, CaKey, HealthView, JoinGrant, JoinTicket, LastContact, PeerCallError, PeerError, PeerHandler, PeerReply,
    PeerRequest, QuicRaftTransport, RoleWish,
};
use crate::records::{self, ApiRole, NodeRecord, TokenEntry, TokenKind};
use crate::removal::{Departure, Removal};

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
}

/// A running node. Cloning gives another handle on the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Starts the node of data directory `dir`: its QUIC endpoint, its store member and its API.
    pub async fn start(dir: &DataDir, state: NodeState, pki: Pki, tuning: Tuning) -> Result<Node, NodeError> {
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
                    !store.range_local(&KeyRange::Key(records::revoked_key(id).into_bytes()), 1).kvs.is_empty()
                }
                _ => false,
            })
        };
        let verifier = pki::RevocationAwareVerifier::new(ca_der.clone(), is_revoked.clone())?;
        let server_tls = pki::server_config(&pki.node, verifier, &[ALPN])?;
        let client_tls = pki::client_config(&pki.ca_pem, Some(&pki.node), &[ALPN])?;
        let node_cell: Arc<OnceLock<Node>> = Arc::new(OnceLock::new());
        let handler = Arc::new(PeerHandler { node: node_cell.clone() });
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
            }),
        };
        let _ = node_cell.set(node.clone());
        crate::api::spawn(node.clone(), ca_der, is_revoked)?;
        let config = hsu_control::controller::ControllerConfig {
            node_grace: node.inner.tuning.node_grace,
            ..Default::default()
        };
        let stopping = node.clone();
        tokio::spawn(hsu_control::controller::run(
            node.store().clone(),
            node.inner.reports.clone(),
            config,
            async move { stopping.stopped().await },
        ));
        let on_exit = if node.inner.tuning.stop_units_on_exit { OnExit::Stop } else { OnExit::Keep };
        let units = crate::units::spawn(node.clone(), dir.agent_dir(), node.inner.tuning.labels.clone(), on_exit)
            .map_err(NodeError::Config)?;
        *node.inner.units.lock().unwrap_or_else(|p| p.into_inner()) = Some(units);
        tokio::spawn(node.clone().keep_ca_key());
        tokio::spawn(node.clone().notice_removal());
        Ok(node)
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
        let kv = self.store().range_local(&KeyRange::Key(records::node_key(id).into_bytes()), 1).kvs.into_iter().next();
        if kv.and_then(|kv| records::decode::<NodeRecord>(&kv.key, &kv.value).ok()).is_some_and(|r| r.agent_only) {
            return Role::Agent;
        }
        let members = self.store().status().members;
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
    pub fn reports(&self) -> &hsu_control::controller::Reports {
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
        !self.store().range_local(&KeyRange::Key(records::revoked_key(id).into_bytes()), 1).kvs.is_empty()
    }

    /// The nodes whose certificates were revoked, in this node's copy of the store.
    pub(crate) fn revoked_ids(&self) -> Vec<NodeId> {
        let r = self.store().range_local(&KeyRange::Prefix(records::REVOKED.as_bytes().to_vec()), 0);
        r.kvs.iter().filter_map(|kv| records::revoked_id(&kv.key)).collect()
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
        if store.range_local(&KeyRange::Prefix(records::NODES.as_bytes().to_vec()), 1).kvs.is_empty() {
            return Ok(());
        }
        let kv = store.range_local(&KeyRange::Key(records::node_key(id).into_bytes()), 1).kvs.into_iter().next();
        let kv = kv.ok_or_else(|| format!("node {id} is not enrolled in this cluster"))?;
        let record: NodeRecord = records::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
        // A node marked removed may still finish leaving: its record is marked before the
        // membership change (a leader that removes itself cannot write afterwards), and until that
        // change commits it may have to forward its own removal to a new leader.
        let in_membership = store.status().members.contains(id);
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

    // ----- forwarding to the leader -----

    /// Runs `req` on the leader: here when this node leads, else over QUIC. Retries while there
    /// is no leader or the leader moved, until the request timeout.
    pub async fn leader_call(&self, mut req: PeerRequest) -> Result<PeerReply, PeerError> {
        // What the leader would refuse from this node is refused here, saying where to go.
        if let Err(refusal) = authz::allowed(Caller { id: self.id(), role: self.own_role() }, &Ask::Peer(&req)) {
            return Err(PeerError::WrongNode(format!("{refusal}; {}", self.voter_hint())));
        }
        let timeout = match req {
            PeerRequest::AddMember { .. } => self.inner.tuning.membership_timeout,
            _ => self.inner.tuning.request_timeout,
        };
        let deadline = Instant::now() + timeout;
        // Who the leader is, when this node's own Raft state does not know: a node that moved
        // hears from no leader until the leader learns its new address, so it asks the others.
        let mut hint: Option<(NodeId, Member)> = None;
        let mut probe = 0usize;
        // Whether some attempt may have reached a leader: then running out of time is an
        // unknown outcome, not "not done", however the last attempt failed.
        let mut maybe_sent = false;
        loop {
            let (leader, member) = {
                let status = self.store().status();
                match status.leader {
                    Some(l) => (Some(l), status.members.get(l).cloned()),
                    None => match hint.take() {
                        Some((l, member)) => (Some(l), Some(member)),
                        None => {
                            // No leader known: ask another member, which answers or names the leader.
                            let others: Vec<(NodeId, Member)> = status
                                .members
                                .nodes()
                                .filter(|(id, _)| *id != self.id())
                                .map(|(id, n)| (id, n.clone()))
                                .collect();
                            probe += 1;
                            match others.get(probe % others.len().max(1)) {
                                Some((id, n)) => (Some(*id), Some(n.clone())),
                                None => (None, None),
                            }
                        }
                    },
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = req.clone();
            // Every later attempt says it may be a copy (what the session needs to refuse a copy
            // it cannot vouch for instead of applying it).
            req.mark_retry();
            let result = match (leader, member) {
                (Some(l), _) if l == self.id() => {
                    maybe_sent = true;
                    self.handle_peer(attempt).await
                }
                (Some(l), Some(member)) => {
                    let req = attempt;
                    // A leader that died does not answer until the timeout; once another leader is
                    // known, waiting longer for this one serves nobody.
                    let call = tokio::select! {
                        r = call_peer(&self.inner.endpoint, l, &member.addr, &req, remaining) => Some(r),
                        () = self.leader_replaced(l) => None,
                    };
                    maybe_sent |= !matches!(call, Some(Err(PeerCallError::NotSent(_))));
                    match call {
                        None if req.safe_to_resend() => {
                            Err(Error::Unavailable(format!("leader {l} was replaced during the request")).into())
                        }
                        // It may have reached the old leader and may still commit: the outcome is unknown.
                        None => return Err(Error::LeaderChanged { from: l }.into()),
                        Some(Ok(reply)) => Ok(reply),
                        Some(Err(PeerCallError::Remote(e))) => Err(e),
                        Some(Err(PeerCallError::NotSent(e))) => {
                            Err(Error::Unavailable(format!("leader {l} unreachable: {e}")).into())
                        }
                        Some(Err(PeerCallError::Unknown(e))) => {
                            if req.safe_to_resend() {
                                Err(Error::Unavailable(format!("leader {l}: {e}")).into())
                            } else {
                                // The leader may have acted on it: say so rather than retry.
                                return Err(Error::Timeout(timeout).into());
                            }
                        }
                    }
                }
                _ => Err(Error::Unavailable("no leader is known yet".into()).into()),
            };
            match result {
                Err(PeerError::Store(Error::NotLeader { leader })) if Instant::now() < deadline => {
                    hint = leader.filter(|(l, _)| *l != self.id());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(PeerError::Store(Error::Unavailable(_))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(PeerError::Store(Error::NotLeader { .. } | Error::Unavailable(_)))
                    if maybe_sent && matches!(req, PeerRequest::Propose { .. }) =>
                {
                    return Err(Error::Timeout(timeout).into())
                }
                other => return other,
            }
        }
    }

    /// Resolves once this node knows of a leader other than `old` (never, if the store stops).
    async fn leader_replaced(&self, old: NodeId) {
        if self.store().status_watch().wait_for(|s| s.leader.is_some_and(|l| l != old)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Handles a request another node (or this one) routed here.
    pub async fn handle_peer(&self, req: PeerRequest) -> Result<PeerReply, PeerError> {
        match req {
            PeerRequest::Propose { req, id: Some(id) } => {
                Ok(PeerReply::Response(self.store().propose_once(req, id).await?))
            }
            PeerRequest::Propose { req, id: None } => Ok(PeerReply::Response(self.store().propose(req).await?)),
            PeerRequest::Range { range, limit } => {
                Ok(PeerReply::Range(self.store().range(range, limit, Consistency::Linearizable).await?))
            }
            PeerRequest::KeepAlive(id) => {
                Ok(PeerReply::Ttl(self.store().lease_keep_alive(id).await?.as_millis() as u64))
            }
            PeerRequest::Join(ticket) => Ok(PeerReply::Joined(self.join_as_leader(ticket).await?)),
            PeerRequest::FetchCaKey => {
                let key = self
                    .ca_key_local()
                    .ok_or_else(|| PeerError::NotFound(format!("the CA key on node {}", self.id())))?;
                Ok(PeerReply::CaKey(CaKey(key)))
            }
            PeerRequest::AddMember { id, role, target_voters } => {
                Ok(PeerReply::Role(self.add_member_as_leader(id, role, target_voters).await?))
            }
            PeerRequest::RemoveMember { id, revoke } => {
                // Boxed: removing reads and writes the node record through `leader_call`, which
                // comes back here.
                Box::pin(self.remove_member_as_leader(id, revoke)).await?;
                Ok(PeerReply::Done)
            }
            PeerRequest::UpdateAddress { id, member } => {
                Box::pin(self.update_address_as_leader(id, member.addr)).await?;
                Ok(PeerReply::Done)
            }
            PeerRequest::Health => Ok(PeerReply::Health(self.health_as_leader()?)),
            PeerRequest::Reports => {
                self.must_lead()?;
                Ok(PeerReply::Reports(self.reports_as_leader()))
            }
            PeerRequest::Report(report) => {
                self.must_lead()?;
                self.inner.reports.record(*report);
                Ok(PeerReply::Done)
            }
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.must_lead().is_ok()
    }

    fn must_lead(&self) -> Result<(), PeerError> {
        let status = self.store().status();
        if status.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader { leader: status.leader_member() }.into())
        }
    }

    // ----- the KV API, routed -----

    /// Runs a write on the leader as a request of this node's session: applied once, however
    /// often it has to be sent.
    pub async fn propose(&self, req: Request) -> Result<Response, PeerError> {
        let id = self.inner.session.begin();
        let reply = self.propose_as(req, id).await;
        self.inner.session.end(id.seq);
        reply
    }

    /// Runs a write on the leader as request `id` of a client's own session (a gRPC client
    /// that numbers its writes, so that it can send one again after a timeout).
    pub async fn propose_as(&self, req: Request, id: RequestId) -> Result<Response, PeerError> {
        match self.leader_call(PeerRequest::Propose { req, id: Some(id) }).await? {
            PeerReply::Response(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn range(&self, range: KeyRange, limit: u64, consistency: Consistency) -> Result<RangeResult, PeerError> {
        match consistency {
            Consistency::Local => Ok(self.store().range_local(&range, limit)),
            Consistency::Linearizable => match self.leader_call(PeerRequest::Range { range, limit }).await? {
                PeerReply::Range(r) => Ok(r),
                other => Err(unexpected(other)),
            },
        }
    }

    pub async fn keep_alive(&self, id: LeaseId) -> Result<u64, PeerError> {
        match self.leader_call(PeerRequest::KeepAlive(id)).await? {
            PeerReply::Ttl(ms) => Ok(ms),
            other => Err(unexpected(other)),
        }
    }

    async fn get_record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PeerError> {
        let kv = self.store().get(key, Consistency::Linearizable).await?;
        kv.map(|kv| records::decode(&kv.key, &kv.value)).transpose().map_err(PeerError::Store)
    }

    async fn put_record<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<u64, PeerError> {
        Ok(self.store().put(key, records::encode(value), 0).await?.0)
    }

    /// Records of kind `T` under `prefix`, from this node's state machine.
    pub fn list_local<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, Error> {
        let r = self.store().range_local(&KeyRange::Prefix(prefix.as_bytes().to_vec()), 0);
        r.kvs.iter().map(|kv| records::decode(&kv.key, &kv.value)).collect()
    }

    // ----- tokens -----

    /// Creates a token; returns the whole token (shown once) and what the cluster keeps.
    pub async fn create_token(
        &self,
        kind: TokenKind,
        role: ApiRole,
        ttl: Option<Duration>,
        uses: Option<u32>,
        description: String,
    ) -> Result<(JoinToken, TokenEntry), PeerError> {
        let token = JoinToken::generate(self.ca_fingerprint()).map_err(|e| PeerError::Denied(e.to_string()))?;
        let ttl_ms = ttl.map(|t| t.as_millis() as u64);
        let entry =
            TokenEntry { kind, role, record: TokenRecord::new(&token, records::now_ms(), ttl_ms, uses, description) };
        let req = Request::Txn(Txn {
            success: vec![Op::Put {
                key: records::token_key(&token.id).into_bytes(),
                value: records::encode(&entry),
                lease: 0,
            }],
            ..Default::default()
        });
        self.propose(req).await?;
        Ok((token, entry))
    }

    /// Marks a token revoked. A join that uses the token at the same moment changes its record
    /// too; the write compares on the record's revision, and a lost race is read and tried again.
    pub async fn revoke_token(&self, id: &str) -> Result<(), PeerError> {
        let key = records::token_key(id);
        self.update_record(&key, &format!("token {id:?}"), |entry: &mut TokenEntry| entry.record.revoked = true).await
    }

    /// Reads the record at `key` linearizably, changes it with `change` and writes it back with a
    /// compare on the revision it was read at, again until no other writer came between. `what`
    /// names it in a not-found error.
    async fn update_record<T>(&self, key: &str, what: &str, change: impl Fn(&mut T)) -> Result<(), PeerError>
    where
        T: DeserializeOwned + serde::Serialize,
    {
        for _attempt in 0..20 {
            let kv = self
                .range(KeyRange::Key(key.as_bytes().to_vec()), 1, Consistency::Linearizable)
                .await?
                .kvs
                .into_iter()
                .next()
                .ok_or_else(|| PeerError::NotFound(what.to_string()))?;
            let mut record: T = records::decode(&kv.key, &kv.value)?;
            change(&mut record);
            match self.propose(put_if_unchanged(key, kv.mod_revision, records::encode(&record))).await? {
                Response::Txn(t) if t.succeeded => return Ok(()),
                Response::Txn(_) => continue,
                other => return Err(unexpected(PeerReply::Response(other))),
            }
        }
        Err(Error::Unavailable(format!("{what} kept changing while it was being updated; try again")).into())
    }

    /// Checks a bearer API token against this node's copy of the token records.
    pub fn check_api_token(&self, presented: &str) -> Result<ApiRole, String> {
        let token = JoinToken::parse(presented).map_err(|e| e.to_string())?;
        let key = records::token_key(&token.id);
        let kv = self.store().range_local(&KeyRange::Key(key.into_bytes()), 1).kvs.into_iter().next();
        let kv = kv.ok_or_else(|| "unknown token".to_string())?;
        let entry: TokenEntry = records::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
        if entry.kind != TokenKind::Api {
            return Err("a join token is not an API credential".into());
        }
        entry.record.check(&token, records::now_ms()).map_err(|e| e.to_string())?;
        Ok(entry.role)
    }

    // ----- membership, on the leader -----

    async fn join_as_leader(&self, ticket: JoinTicket) -> Result<JoinGrant, PeerError> {
        self.must_lead()?;
        let token = JoinToken::parse(&ticket.token).map_err(|e| PeerError::Denied(format!("join token: {e}")))?;
        if token.ca_hash != self.ca_fingerprint() {
            return Err(PeerError::Denied("the token was made for another cluster (its CA hash differs)".into()));
        }
        validate_name(&ticket.name).map_err(PeerError::Invalid)?;
        let ca = self.cluster_ca().await?;
        let cluster: records::ClusterInfo = self
            .get_record(records::CLUSTER)
            .await?
            .ok_or_else(|| PeerError::Store(Error::Fatal("cluster info is missing".into())))?;
        for _attempt in 0..20 {
            let token_key = records::token_key(&token.id);
            let tok = self.store().get(token_key.clone(), Consistency::Linearizable).await?;
            let tok = tok.ok_or_else(|| PeerError::Denied("unknown token".into()))?;
            let entry: TokenEntry = records::decode(&tok.key, &tok.value)?;
            if entry.kind != TokenKind::Join {
                return Err(PeerError::Denied("an API token cannot be used to join".into()));
            }
            entry.record.check(&token, records::now_ms()).map_err(|e| PeerError::Denied(format!("join token: {e}")))?;
            let taken =
                self.list_local::<NodeRecord>(records::NODES)?.into_iter().any(|n| !n.removed && n.name == ticket.name);
            if taken {
                return Err(PeerError::Invalid(format!("a node named {:?} is already in the cluster", ticket.name)));
            }
            let next = self.store().get(records::NEXT_NODE_ID, Consistency::Linearizable).await?;
            let next = next.ok_or_else(|| PeerError::Store(Error::Fatal("node id counter is missing".into())))?;
            let id: NodeId = records::decode(&next.key, &next.value)?;
            let identity = if ticket.agent_only { Identity::Agent(id) } else { Identity::Node(id) };
            let cert_pem = ca
                .sign_node_csr(&ticket.csr_pem, &identity, 365)
                .map_err(|e| PeerError::Invalid(format!("csr: {e}")))?;
            let cert_sha256 = records::leaf_fingerprint(&cert_pem)
                .ok_or_else(|| PeerError::Store(Error::Fatal("the signed certificate does not parse".into())))?;
            let record = NodeRecord {
                cert_sha256,
                id,
                name: ticket.name.clone(),
                address: ticket.address.clone(),
                api_address: ticket.api_address.clone(),
                joined_ms: records::now_ms(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                removed: false,
                agent_only: ticket.agent_only,
            };
            let txn = Txn {
                compare: vec![
                    same_revision(&token_key, tok.mod_revision),
                    same_revision(records::NEXT_NODE_ID, next.mod_revision),
                ],
                success: vec![
                    put(&token_key, records::encode(&TokenEntry { record: entry.record.used(), ..entry })),
                    put(records::NEXT_NODE_ID, records::encode(&(id + 1))),
                    put(&records::node_key(id), records::encode(&record)),
                ],
                failure: vec![],
            };
            if self.store().txn(txn).await?.succeeded {
                tracing::info!(node = id, name = %ticket.name, agent_only = ticket.agent_only, "node enrolled");
                let servers = {
                    let members = self.store().status().members;
                    voters_first(members.nodes().map(|(id, n)| (id, n.addr.clone())), |id| members.is_voter(id))
                };
                return Ok(JoinGrant {
                    id,
                    cert_pem,
                    ca_pem: ca.cert_pem().to_string(),
                    cluster_name: cluster.name,
                    servers,
                });
            }
        }
        Err(Error::Unavailable("the token or the id counter kept changing; try again".into()).into())
    }

    async fn add_member_as_leader(&self, id: NodeId, wish: RoleWish, target_voters: u32) -> Result<String, PeerError> {
        self.must_lead()?;
        let record: NodeRecord = self
            .get_record(&records::node_key(id))
            .await?
            .ok_or_else(|| PeerError::Denied(format!("node {id} has not enrolled")))?;
        if record.removed {
            return Err(PeerError::Denied(format!("node {id} was removed from the cluster")));
        }
        if record.agent_only {
            return Err(PeerError::Denied(format!("node {id} is an agent-only node: it is never added to raft")));
        }
        let (is_voter, is_member, voters) = {
            let members = self.store().status().members;
            (members.is_voter(id), members.contains(id), members.voter_count() as u32)
        };
        if is_voter {
            return Ok("voter".into());
        }
        if is_member {
            // Adding is for nodes that are not in Raft yet; asking again must not make a learner
            // a voter (that is the master's decision, not the learner's).
            return Err(PeerError::Denied(format!(
                "node {id} is already a learner; a learner is not promoted by asking"
            )));
        }
        let voter = match wish {
            RoleWish::Voter => true,
            RoleWish::Learner => false,
            RoleWish::Auto => voters < target_voters.max(1),
        };
        let member = Member::new(record.name.clone(), record.address.clone());
        let _one_at_a_time = self.inner.membership.lock().await;
        // `add_voter` adds the node as a learner that catches up first, then promotes it.
        if voter {
            self.retry_membership(|| self.store().add_voter(id, member.clone())).await?;
        } else {
            self.retry_membership(|| self.store().add_learner(id, member.clone())).await?;
        }
        Ok(if voter { "voter" } else { "learner" }.into())
    }

    async fn remove_member_as_leader(&self, id: NodeId, revoke: bool) -> Result<(), PeerError> {
        self.must_lead()?;
        let in_membership = self.store().status().members.contains(id);
        if !in_membership && self.get_record::<NodeRecord>(&records::node_key(id)).await?.is_none() {
            return Err(PeerError::NotFound(format!("node {id}")));
        }
        if revoke && id == self.id() {
            // A revoked leader could not replicate the change that removes it.
            return Err(PeerError::Invalid(format!(
                "node {id} is the leader: run `hsu node leave` on it, or stop it and remove it once another node leads"
            )));
        }
        if revoke {
            // Revoke first: from now on its certificate opens no connection, whatever follows.
            self.put_record(&records::revoked_key(id), &records::now_ms()).await?;
        }
        // Recorded before the membership change, because a leader that removes itself can no
        // longer write once the change has committed.
        match self
            .update_record(&records::node_key(id), &format!("node {id}"), |r: &mut NodeRecord| r.removed = true)
            .await
        {
            Ok(()) | Err(PeerError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if in_membership {
            let _one_at_a_time = self.inner.membership.lock().await;
            self.retry_membership(|| self.store().remove_member(id)).await?;
        }
        Ok(())
    }

    /// Records node `id`'s new node-to-node address: in Raft's membership (for members) and in
    /// its node record, compared on the record's revision.
    async fn update_address_as_leader(&self, id: NodeId, addr: String) -> Result<(), PeerError> {
        self.must_lead()?;
        let record: NodeRecord =
            self.get_record(&records::node_key(id)).await?.ok_or_else(|| PeerError::NotFound(format!("node {id}")))?;
        let in_membership = self.store().status().members.contains(id);
        if in_membership {
            let _one_at_a_time = self.inner.membership.lock().await;
            let timeout = self.inner.tuning.request_timeout;
            // The name is the record's, not the caller's.
            let member = Member::new(record.name.clone(), addr.clone());
            tokio::time::timeout(timeout, self.store().set_member(id, member))
                .await
                .map_err(|_| Error::Timeout(timeout))??;
        }
        self.update_record(&records::node_key(id), &format!("node {id}"), |r: &mut NodeRecord| r.address = addr.clone())
            .await
    }

    // ----- the CA key, on voters -----

    pub(crate) fn ca_key_local(&self) -> Option<String> {
        self.inner.ca_key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cluster CA with its key, to sign a joining node's certificate: this voter's own key,
    /// or one fetched from another voter when this node became a voter moments ago.
    async fn cluster_ca(&self) -> Result<ClusterCa, PeerError> {
        let key = match self.ca_key_local() {
            Some(key) => key,
            None => self.fetch_ca_key().await?,
        };
        ClusterCa::from_pem(&self.inner.pki.ca_pem, &key).map_err(|e| PeerError::Store(Error::Fatal(e.to_string())))
    }

    /// Asks the other voters for the CA key (only voters are given it), checks that it is the
    /// key of this cluster's CA certificate, and keeps it in `pki/ca.key` (0600).
    pub async fn fetch_ca_key(&self) -> Result<String, PeerError> {
        if let Some(key) = self.ca_key_local() {
            return Ok(key);
        }
        let voters = self.store().status().members.other_voters(self.id());
        let mut last = format!("node {} knows no other voter to ask", self.id());
        for (id, member) in voters {
            let timeout = self.inner.tuning.request_timeout;
            match call_peer(&self.inner.endpoint, id, &member.addr, &PeerRequest::FetchCaKey, timeout).await {
                Ok(PeerReply::CaKey(CaKey(key))) => {
                    ClusterCa::from_pem(&self.inner.pki.ca_pem, &key)
                        .map_err(|e| PeerError::Invalid(format!("node {id} sent a CA key that does not fit: {e}")))?;
                    let path = crate::datadir::DataDir::new(&self.inner.dir).ca_key_file();
                    hsu_net::pki::write_private(&path, key.as_bytes())
                        .map_err(|e| PeerError::Store(Error::Fatal(format!("{}: {e}", path.display()))))?;
                    *self.inner.ca_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
                    tracing::info!(from = id, "this voter now holds the CA key");
                    return Ok(key);
                }
                Ok(other) => last = format!("node {id}: unexpected answer {other:?}"),
                Err(e) => last = format!("node {id}: {e:?}"),
            }
        }
        Err(Error::Unavailable(format!("cannot get the CA key: {last}")).into())
    }

    /// While this node is a voter without the CA key (just promoted), fetches it, so that it can
    /// sign joins when it leads.
    async fn keep_ca_key(self) {
        let mut status = self.store().status_watch();
        let mut backoff = Duration::from_millis(200);
        loop {
            let voter = self.own_role() == Role::Voter;
            if voter && self.ca_key_local().is_none() {
                match self.fetch_ca_key().await {
                    Ok(_) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        tracing::debug!("the CA key: {e}");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.stopped() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            // Only a membership change can make this node a voter.
            let seen = status.current().membership_index;
            tokio::select! {
                r = status.wait_for(|s| s.membership_index != seen) => if r.is_err() { return },
                () = self.stopped() => return,
            }
        }
    }

    /// Where to send what a learner may not forward: the voters' API addresses.
    fn voter_hint(&self) -> String {
        let voters: Vec<NodeId> = self.store().status().members.voter_ids().collect();
        let nodes = self.list_local::<NodeRecord>(records::NODES).unwrap_or_default();
        let apis: Vec<String> = nodes
            .iter()
            .filter(|n| voters.contains(&n.id) && !n.removed)
            .map(|n| format!("{} ({})", n.api_address, n.name))
            .collect();
        if apis.is_empty() {
            "send it to a voter's API".into()
        } else {
            format!("send it to a voter's API: {}", apis.join(", "))
        }
    }

    // ----- leaving and being removed -----

    /// Watches for signs that the cluster removed this node: its own revocation in its copy of
    /// the store, or peers refusing its certificate as revoked, several times in a row (a removed node cut off from the cluster hears of it no other way). Then it says so
    /// once, marks its data directory, and stops (its units with it: the cluster has placed
    /// their instances elsewhere).
    async fn notice_removal(self) {
        let mut refused = self.inner.endpoint.revocations();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                () = self.stopped() => return,
                _ = tick.tick() => {
                    if let Some(departure) = self.departed_in_store() {
                        break departure;
                    }
                }
                r = refused.wait_for(|n| *n >= crate::removal::REFUSALS_IN_A_ROW) => {
                    if r.is_err() { return }
                    break Departure::Removed("the other nodes refuse its certificate as revoked".into());
                }
            }
        };
        self.depart(reason);
    }

    /// What this node's own copy of the store says about it having been removed. (Leaving is
    /// not read from the store: the node that leaves departs once its leave has succeeded, and
    /// its record is marked before the membership change, mid-way.)
    fn departed_in_store(&self) -> Option<Departure> {
        self.is_revoked(self.id()).then(|| Departure::Removed("its certificate was revoked (hsu node remove)".into()))
    }

    /// This node is no longer part of the cluster: records why in its data directory (so that
    /// `hsu node run` says so), drops the CA key, and stops.
    pub(crate) fn depart(&self, departure: Departure) {
        if !self.inner.removal.depart(&self.inner.dir, &format!("this node (id {})", self.id()), departure) {
            return;
        }
        *self.inner.ca_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = std::fs::remove_file(crate::datadir::DataDir::new(&self.inner.dir).ca_key_file());
        self.request_stop();
    }

    /// Runs a membership change, waiting out a change that is still being committed.
    /// Every attempt is bounded too: a leader that lost its leadership without hearing of it (a
    /// restarted node whose old vote made it leader again) would otherwise wait forever for a
    /// change that can never commit.
    async fn retry_membership<F, Fut>(&self, change: F) -> Result<(), Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let limit = self.inner.tuning.membership_timeout;
        let deadline = Instant::now() + limit;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, change()).await {
                Err(_) => return Err(Error::Timeout(limit)),
                Ok(Err(Error::Unavailable(_))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(other) => return other,
            }
        }
    }

    fn health_as_leader(&self) -> Result<HealthView, PeerError> {
        self.must_lead()?;
        let status = self.store().status();
        let last = status.last_log_index;
        let fresh = self.inner.tuning.election_timeout_max * 2;
        let mut members = vec![(self.id(), last, true)];
        for (&id, &matched) in status.matched.iter().flatten() {
            if id == self.id() {
                continue;
            }
            let heard = self.inner.contact.since(id).is_some_and(|d| d < fresh);
            members.push((id, matched, heard && last.saturating_sub(matched) < 10_000));
        }
        Ok(HealthView { leader: Some(self.id()), term: status.term, members })
    }

    /// Leader, term, commit index and members with their health.
    pub async fn status(&self) -> Result<ClusterStatus, PeerError> {
        let status = self.store().status();
        let health = match self.leader_call(PeerRequest::Health).await {
            Ok(PeerReply::Health(h)) => h,
            _ => HealthView::default(),
        };
        let nodes: BTreeMap<NodeId, NodeRecord> =
            self.list_local::<NodeRecord>(records::NODES)?.into_iter().map(|n| (n.id, n)).collect();
        let membership = &status.members;
        let mut members = Vec::new();
        for (id, member) in membership.nodes() {
            let (matched, healthy) =
                health.members.iter().find(|(h, _, _)| *h == id).map(|(_, mi, ok)| (*mi, *ok)).unwrap_or((0, false));
            members.push(MemberStatus {
                id,
                name: member.name.clone(),
                role: if membership.is_voter(id) { "voter" } else { "learner" },
                address: member.addr.clone(),
                api_address: nodes.get(&id).map(|n| n.api_address.clone()).unwrap_or_default(),
                healthy,
                matched_index: matched,
            });
        }
        let leader_id = health.leader.or(status.leader);
        let leader = leader_id.map(|l| (l, membership.get(l).map(|n| n.name.clone()).unwrap_or_default()));
        let commit_index = members.iter().find(|mm| Some(mm.id) == leader_id).map_or(0, |mm| mm.matched_index);
        Ok(ClusterStatus {
            leader,
            // The leader's term when a leader answered; this member's own view otherwise.
            term: if health.leader.is_some() { health.term } else { status.term },
            commit_index: commit_index.max(status.applied_index),
            applied_index: status.applied_index,
            members,
            served_by: self.id(),
            cluster_name: self.inner.state.cluster_name.clone(),
        })
    }
}

fn unexpected(reply: PeerReply) -> PeerError {
    PeerError::Store(Error::Fatal(format!("unexpected reply from the leader: {reply:?}")))
}

fn same_revision(key: &str, revision: u64) -> Compare {
    Compare { key: key.as_bytes().to_vec(), target: CompareTarget::ModRevision(revision), op: CompareOp::Equal }
}

fn put(key: &str, value: Vec<u8>) -> Op {
    Op::Put { key: key.as_bytes().to_vec(), value, lease: 0 }
}

fn put_if_unchanged(key: &str, revision: u64, value: Vec<u8>) -> Request {
    Request::Txn(Txn { compare: vec![same_revision(key, revision)], success: vec![put(key, value)], failure: vec![] })
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
