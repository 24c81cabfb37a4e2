//! The Raft network as a small trait of the store's own: [`RaftTransport`] carries an encoded
//! Raft RPC to a member and brings back the encoded reply. Anything that moves bytes can carry
//! Raft: the in-process [`crate::router::Router`] with fault injection for tests, and the QUIC
//! transport between real nodes. The encoding, the dispatch into openraft ([`serve_rpc`]) and the
//! error mapping are here, once, so every transport exercises the same code.

use std::future::Future;
use std::time::Duration;

use hsu_model::{decode_record, encode_record};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{Member, NodeId, Raft, TypeConfig};

/// Which Raft RPC a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// Why a transport could not deliver a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (down, partitioned, unknown); openraft backs off.
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The call was sent but no reply came back in time.
    #[error("no reply from node {0} within {1:?}")]
    Timeout(NodeId, Duration),
    /// The call or its reply was lost or mangled on the way.
    #[error("call to node {0} failed: {1}")]
    Failed(NodeId, String),
}

/// Carries encoded Raft RPCs between members.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    /// Sends `body` (an encoded request of `kind`) to `target` and returns the encoded reply that
    /// [`serve_rpc`] produced there. Must give up after `timeout`. If the returned future is
    /// dropped, the call is abandoned; the target may or may not have processed it.
    fn call(
        &self,
        target: NodeId,
        member: &Member,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// The reply envelope: the RPC's own result, or the target's refusal of a message it could not
/// decode.
#[derive(Serialize, Deserialize)]
enum Reply<T, E> {
    Done(Result<T, E>),
    BadRequest(String),
}

/// Handles one encoded RPC on the receiving member and returns the encoded reply. `from` is the
/// sender as the transport authenticated it (the certificate's node id over QUIC). The message
/// must say it is from that node (the vote in every Raft RPC names its sender), and the sender
/// must be a voter of this member's membership: only a voter campaigns or leads. A member that
/// has no membership yet (a node being added, before its first entries) cannot tell, and takes
/// whoever speaks; the transport must have refused non-servers already. A refused sender is
/// `Err(why)`, for the transport to return as its refusal; openraft never sees the message.
pub async fn serve_rpc(raft: &Raft, kind: RpcKind, body: &[u8], from: NodeId) -> Result<Vec<u8>, String> {
    async fn run<Req, T, E, F>(
        raft: &Raft,
        body: &[u8],
        from: NodeId,
        sender: impl FnOnce(&Req) -> Option<NodeId>,
        f: impl FnOnce(Req) -> F,
    ) -> Result<Vec<u8>, String>
    where
        Req: DeserializeOwned,
        T: Serialize,
        E: Serialize,
        F: Future<Output = Result<T, E>>,
    {
        let reply: Reply<T, E> = match decode_record::<Req>(body) {
            Ok(req) => {
                check_sender(raft, sender(&req), from)?;
                Reply::Done(f(req).await)
            }
            Err(e) => Reply::BadRequest(e.to_string()),
        };
        Ok(encode_record(&reply).unwrap_or_else(|e| {
            encode_record(&Reply::<(), ()>::BadRequest(format!("reply does not encode: {e}"))).unwrap_or_default()
        }))
    }
    match kind {
        RpcKind::AppendEntries => {
            let sender = |r: &AppendEntriesRequest<TypeConfig>| r.vote.leader_id().voted_for();
            run(raft, body, from, sender, |r| raft.append_entries(r)).await
        }
        RpcKind::Vote => {
            let sender = |r: &VoteRequest<NodeId>| r.vote.leader_id().voted_for();
            run(raft, body, from, sender, |r| raft.vote(r)).await
        }
        RpcKind::InstallSnapshot => {
            let sender = |r: &InstallSnapshotRequest<TypeConfig>| r.vote.leader_id().voted_for();
            run(raft, body, from, sender, |r| raft.install_snapshot(r)).await
        }
    }
}

/// Why a Raft RPC that claims to come from `claimed` and was delivered by `from` is refused.
fn check_sender(raft: &Raft, claimed: Option<NodeId>, from: NodeId) -> Result<(), String> {
    if claimed != Some(from) {
        let claimed = claimed.map_or("no node".to_string(), |c| format!("node {c}"));
        return Err(format!("the message says it is from {claimed}, but it was sent by node {from}"));
    }
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let knows_members = membership.nodes().next().is_some();
    if knows_members && !membership.voter_ids().any(|v| v == from) {
        let role = if membership.get_node(&from).is_some() { "a learner" } else { "not a member" };
        return Err(format!("node {from} is {role} of this member's membership; only voters send raft messages"));
    }
    Ok(())
}

/// openraft's network factory over any [`RaftTransport`].
#[derive(Clone)]
pub struct Network<T> {
    transport: T,
}

impl<T: RaftTransport> Network<T> {
    pub fn new(transport: T) -> Self {
        Network { transport }
    }
}

/// openraft's connection to one target over a [`RaftTransport`].
pub struct Connection<T> {
    transport: T,
    target: NodeId,
    member: Member,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        Connection { transport: self.transport.clone(), target, member: node.clone() }
    }
}

impl<T: RaftTransport> Connection<T> {
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = encode_record(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let bytes = self.transport.call(self.target, &self.member, kind, body, option.hard_ttl()).await.map_err(
            |e| match e {
                TransportError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Timeout(..) | TransportError::Failed(..) => RPCError::Network(NetworkError::new(&e)),
            },
        )?;
        let reply: Reply<Resp, RaftError<NodeId, E>> =
            decode_record(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match reply {
            Reply::Done(Ok(resp)) => Ok(resp),
            Reply::Done(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.member.clone(), e)))
            }
            Reply::BadRequest(msg) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("node {} refused the request: {msg}", self.target),
                );
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}
