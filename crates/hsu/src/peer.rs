//! Node-to-node traffic over hsu-net's QUIC endpoint: the Raft RPCs of the store
//! ([`QuicRaftTransport`]) and the node's own requests to the leader ([`PeerRequest`]): forwarded
//! writes and reads, lease keep-alives, joins and membership changes. Only nodes of the cluster
//! can call (mutual TLS against the cluster CA, revoked certificates refused at the handshake),
//! and each may ask only what its role allows (`crate::authz`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsu_model::state::NodeReport;
use hsu_model::{decode_record, encode_record, NodeId};
use hsu_net::pki::Identity;
use hsu_net::quic::{Endpoint, NetError};
use hsu_store::{
    Error, KeyRange, LeaseId, Member, RaftTransport, RangeResult, Request, RequestId, Response, RpcKind, TransportError,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub(crate) const METHOD_APPEND: u16 = 1;
pub(crate) const METHOD_VOTE: u16 = 2;
pub(crate) const METHOD_SNAPSHOT: u16 = 3;
pub(crate) const METHOD_PEER: u16 = 10;
/// A server stream of one unit's log file ([`LogAsk`]).
pub(crate) const METHOD_LOGS: u16 = 11;
/// A server stream of the caller's own instances, for agent-only nodes
/// (`crate::agent_node::InstancesUpdate`).
pub(crate) const METHOD_WATCH: u16 = 12;

/// The TLS server name of a node on the node-to-node endpoint.
pub fn node_server_name(id: NodeId) -> String {
    Identity::Node(id).dns_name()
}

/// What a node asks of the leader (or, for `Health`, of any member).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A write, with its request id in the sending node's session: applied once however often
    /// it is sent (`None` only from tests and tools that speak the protocol by hand).
    Propose {
        req: Request,
        id: Option<RequestId>,
    },
    Range {
        range: KeyRange,
        limit: u64,
    },
    KeepAlive(LeaseId),
    Join(JoinTicket),
    AddMember {
        id: NodeId,
        role: RoleWish,
        target_voters: u32,
    },
    RemoveMember {
        id: NodeId,
        revoke: bool,
    },
    UpdateAddress {
        id: NodeId,
        member: Member,
    },
    Health,
    /// A node's heartbeat with the state of its instances (kept in the leader's memory).
    Report(Box<hsu_model::state::NodeReport>),
    /// The leader's reports of every node, for views of instances.
    Reports,
    /// A voter that lacks the CA key (it was just promoted) asks another voter for it.
    FetchCaKey,
}

impl PeerRequest {
    /// The request's name, for refusals and logs.
    pub fn name(&self) -> &'static str {
        match self {
            PeerRequest::Propose { .. } => "Propose",
            PeerRequest::Range { .. } => "Range",
            PeerRequest::KeepAlive(_) => "KeepAlive",
            PeerRequest::Join(_) => "Join",
            PeerRequest::AddMember { .. } => "AddMember",
            PeerRequest::RemoveMember { .. } => "RemoveMember",
            PeerRequest::UpdateAddress { .. } => "UpdateAddress",
            PeerRequest::Health => "Health",
            PeerRequest::Report(_) => "Report",
            PeerRequest::Reports => "Reports",
            PeerRequest::FetchCaKey => "FetchCaKey",
        }
    }

    /// Safe to send again, or to another leader, when the outcome of a call is unknown: reads,
    /// and writes that carry a request id (the leader answers a copy instead of applying it).
    pub fn safe_to_resend(&self) -> bool {
        match self {
            PeerRequest::Range { .. }
            | PeerRequest::Health
            | PeerRequest::Report(_)
            | PeerRequest::Reports
            | PeerRequest::FetchCaKey => true,
            PeerRequest::Propose { id, .. } => id.is_some(),
            _ => false,
        }
    }

    /// Marks a write as possibly sent before, for the next attempt.
    pub fn mark_retry(&mut self) {
        if let PeerRequest::Propose { id: Some(id), .. } = self {
            id.retry = true;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleWish {
    Auto,
    Voter,
    Learner,
}

/// A joining node's enrollment request. `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinTicket {
    pub token: String,
    pub csr_pem: String,
    pub name: String,
    pub address: String,
    pub api_address: String,
    /// Not a server: it gets no CA key and never joins Raft.
    pub agent_only: bool,
}

impl std::fmt::Debug for JoinTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTicket")
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What the leader grants a joining node. Never the CA key: a node that becomes a voter
/// fetches it from another voter ([`PeerRequest::FetchCaKey`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinGrant {
    pub id: NodeId,
    pub cert_pem: String,
    pub ca_pem: String,
    pub cluster_name: String,
    /// The members' node-to-node addresses, for an agent-only node to follow.
    pub servers: Vec<(NodeId, String)>,
}

/// The leader's view of its followers, for `hsu status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthView {
    pub leader: Option<NodeId>,
    /// The leader's term.
    pub term: u64,
    /// Per member: the last log index the leader knows it has, and whether it answered recently.
    pub members: Vec<(NodeId, u64, bool)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Response(Response),
    Range(RangeResult),
    Ttl(u64),
    Joined(JoinGrant),
    Role(String),
    Done,
    Health(HealthView),
    Reports(ReportsView),
    CaKey(CaKey),
}

/// What a node-to-node request answers, taken out of the wire's [`PeerReply`]: each request
/// has one kind of reply, and a reply of another kind is an internal error, said here once.
pub trait FromReply: Sized {
    fn from_reply(reply: PeerReply) -> Result<Self, PeerError>;
}

/// The reply as it came, for callers that pass it on (a forwarded report).
impl FromReply for PeerReply {
    fn from_reply(reply: PeerReply) -> Result<Self, PeerError> {
        Ok(reply)
    }
}

impl FromReply for () {
    fn from_reply(reply: PeerReply) -> Result<Self, PeerError> {
        match reply {
            PeerReply::Done => Ok(()),
            other => Err(PeerError::Internal(format!("expected Done, the leader answered {other:?}"))),
        }
    }
}

macro_rules! from_reply {
    ($($variant:ident($payload:ty)),* $(,)?) => {$(
        impl FromReply for $payload {
            fn from_reply(reply: PeerReply) -> Result<Self, PeerError> {
                match reply {
                    PeerReply::$variant(v) => Ok(v),
                    other => Err(PeerError::Internal(format!(
                        concat!("expected ", stringify!($variant), ", the leader answered {:?}"),
                        other
                    ))),
                }
            }
        }
    )*};
}

from_reply!(
    Response(Response),
    Range(RangeResult),
    Ttl(u64),
    Joined(JoinGrant),
    Role(String),
    Health(HealthView),
    Reports(ReportsView),
    CaKey(CaKey),
);

/// What one node is asked for: one unit's stdout or stderr.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogAsk {
    pub unit: String,
    pub stderr: bool,
    /// Lines from the end to start with (0: the whole file).
    pub tail: u32,
    pub follow: bool,
}

/// The leader's reports, with their age, as a follower receives them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReportsView {
    pub reports: Vec<(NodeId, u64, NodeReport)>,
    pub grace_ms: u64,
}

/// The CA private key (PEM), between voters only; `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaKey(pub String);

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaKey(<redacted>)")
    }
}

/// When each member last answered a Raft RPC: the leader's heartbeats make this a liveness view
/// kept in memory only, never written through Raft.
#[derive(Clone, Default)]
pub struct LastContact(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl LastContact {
    fn touch(&self, id: NodeId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
    }

    pub fn since(&self, id: NodeId) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|t| t.elapsed())
    }
}

/// The store's Raft network over QUIC.
#[derive(Clone)]
pub struct QuicRaftTransport {
    endpoint: Endpoint,
    contact: LastContact,
}

impl QuicRaftTransport {
    pub fn new(endpoint: Endpoint, contact: LastContact) -> Self {
        QuicRaftTransport { endpoint, contact }
    }
}

pub fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|e| format!("address {addr:?} is not HOST:PORT with an IP host: {e}"))
}

impl RaftTransport for QuicRaftTransport {
    async fn call(
        &self,
        target: NodeId,
        member: &Member,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let addr = parse_addr(&member.addr).map_err(|e| TransportError::Unreachable(target, e))?;
        let method = match kind {
            RpcKind::AppendEntries => METHOD_APPEND,
            RpcKind::Vote => METHOD_VOTE,
            RpcKind::InstallSnapshot => METHOD_SNAPSHOT,
        };
        let reply =
            self.endpoint.call(addr, &node_server_name(target), method, &body, timeout).await.map_err(|e| match e {
                NetError::Timeout { after, .. } => TransportError::Timeout(target, after),
                NetError::Connect { .. }
                | NetError::ConnectionLost { .. }
                | NetError::Tls(_)
                | NetError::Revoked { .. }
                | NetError::Closed => TransportError::Unreachable(target, e.to_string()),
                other => TransportError::Failed(target, other.to_string()),
            })?;
        self.contact.touch(target);
        Ok(reply)
    }
}

/// Sends `req` to node `id` at `addr` and decodes its answer.
pub async fn call_peer(
    endpoint: &Endpoint,
    id: NodeId,
    addr: &str,
    req: &PeerRequest,
    timeout: Duration,
) -> Result<PeerReply, PeerCallError> {
    let addr = parse_addr(addr).map_err(|e| PeerCallError::NotSent(NetError::Protocol(e)))?;
    let body = encode_record(req).map_err(|e| PeerCallError::NotSent(NetError::Protocol(e.to_string())))?;
    // A request with side effects must reach the leader at most once: if the connection dies
    // after it was written, the answer is "unknown", never a second copy.
    let call = if req.safe_to_resend() {
        endpoint.call(addr, &node_server_name(id), METHOD_PEER, &body, timeout).await
    } else {
        endpoint.call_once(addr, &node_server_name(id), METHOD_PEER, &body, timeout).await
    };
    let bytes = call.map_err(|e| match e {
        NetError::Connect { .. }
        | NetError::Tls(_)
        | NetError::Revoked { .. }
        | NetError::Closed
        | NetError::FrameTooLarge { .. } => PeerCallError::NotSent(e),
        other => PeerCallError::Unknown(other),
    })?;
    let reply: Result<PeerReply, PeerError> =
        decode_record(&bytes).map_err(|e| PeerCallError::Unknown(NetError::Protocol(e.to_string())))?;
    reply.map_err(PeerCallError::Remote)
}

/// Why a peer call failed, split by what it means for a write: not sent (safe to retry), an
/// answer from the peer, or unknown (the peer may have acted on it).
#[derive(Debug)]
pub enum PeerCallError {
    NotSent(NetError),
    Remote(PeerError),
    Unknown(NetError),
}

/// What a node answers when it refuses a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The request is fine but this node cannot serve it (a learner asked for a write): the
    /// message says where to send it.
    #[error("{0}")]
    WrongNode(String),
    /// Something that should not happen did (a missing cluster record, an answer of the wrong
    /// kind): the request may or may not have taken effect.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<hsu_control::Error> for PeerError {
    fn from(e: hsu_control::Error) -> Self {
        match e {
            hsu_control::Error::Store(e) => PeerError::Store(e),
            e if e.is_refusal() => PeerError::Invalid(e.to_string()),
            e => PeerError::Internal(e.to_string()),
        }
    }
}

impl From<crate::records::RecordError> for PeerError {
    fn from(e: crate::records::RecordError) -> Self {
        PeerError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests;
