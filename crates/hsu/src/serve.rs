//! The server side of node-to-node traffic: [`PeerHandler`] takes every call and stream another
//! node makes on this node's QUIC endpoint, finds out who is calling (a node of this cluster
//! with the certificate it was enrolled with, in the role this node sees it in), refuses what
//! that role may not ask (`crate::authz`), and hands the rest to the node or its store.

use std::sync::{Arc, OnceLock};

use hsu_model::{decode_record, encode_record};
use hsu_net::pki::identity_of;
use hsu_net::quic::{Handler, Peer};
use hsu_store::RpcKind;

use crate::authz::{self, Ask, Caller};
use crate::node::Node;
use crate::peer::{
    PeerError, PeerRequest, METHOD_APPEND, METHOD_LOGS, METHOD_PEER, METHOD_SNAPSHOT, METHOD_VOTE, METHOD_WATCH,
};

/// Serves node-to-node requests. Set up before the node exists (the endpoint must listen before
/// the store can start), so the node arrives later through the `OnceLock`.
pub struct PeerHandler {
    pub node: Arc<OnceLock<Node>>,
}

impl PeerHandler {
    fn node(&self) -> Result<&Node, String> {
        self.node.get().ok_or_else(|| "node is starting".to_string())
    }
}

impl PeerHandler {
    /// Who is calling: a node of this cluster with the certificate it was enrolled with, not
    /// removed, in the role this node sees it in.
    fn caller(&self, peer: &Peer) -> Result<(&Node, Caller), String> {
        let identity = identity_of(&peer.cert_der).map_err(|e| e.to_string())?;
        let Some(id) = identity.node_id() else {
            return Err(format!("{identity} may not call the node-to-node endpoint"));
        };
        let node = self.node()?;
        Ok((node, Caller { id, role: node.role_of(&identity) }))
    }
}

impl Handler for PeerHandler {
    /// The handshake checked revocation only when the connection opened; a removed node that is
    /// still running keeps its connections open, so every request is checked again, and against
    /// the certificate the node was enrolled with (a removed voter may still hold the CA key).
    fn admitted(&self, peer: &Peer) -> Result<(), String> {
        let id = identity_of(&peer.cert_der).map_err(|e| e.to_string())?.node_id();
        match (id, self.node.get()) {
            (Some(id), Some(node)) => node.check_peer(id, &peer.cert_der),
            // Not a node: refused with a reason by `caller`. No node yet: nobody is removed.
            _ => Ok(()),
        }
    }

    async fn call(&self, peer: Peer, method: u16, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let (node, caller) = self.caller(&peer)?;
        let kind = match method {
            METHOD_APPEND => RpcKind::AppendEntries,
            METHOD_VOTE => RpcKind::Vote,
            METHOD_SNAPSHOT => RpcKind::InstallSnapshot,
            METHOD_PEER => {
                let req: PeerRequest = decode_record(&body).map_err(|e| format!("bad peer request: {e}"))?;
                let reply = match authz::allowed(caller, &Ask::Peer(&req)) {
                    Err(refusal) => Err(PeerError::Denied(refusal)),
                    // From an agent-only node, which reaches any server: passed on to the leader.
                    // (Not from inside `handle_peer`: a node that has just stopped leading may
                    // still name itself as the leader, and would pass the report to itself.)
                    Ok(()) if matches!(req, PeerRequest::Report(_)) && !node.is_leader() => {
                        node.leader_call::<crate::peer::PeerReply>(req).await
                    }
                    Ok(()) => node.handle_peer(req).await,
                };
                #[cfg(feature = "failpoints")]
                if matches!(reply, Ok(crate::peer::PeerReply::Response(_))) {
                    // The write is done; its answer is lost on the way, as with a dead connection.
                    let name = format!("peer-reply-drop-{}", node.state().listen.port());
                    if fail::eval(&name, |_| ()).is_some() {
                        return Err("the reply was dropped (failpoint)".into());
                    }
                }
                return encode_record(&reply).map_err(|e| e.to_string());
            }
            other => return Err(format!("unknown method {other}")),
        };
        authz::allowed(caller, &Ask::Raft)?;
        node.store().serve_rpc(kind, &body, caller.id).await
    }

    async fn stream(
        &self,
        peer: Peer,
        method: u16,
        body: Vec<u8>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, String> {
        let (node, caller) = self.caller(&peer)?;
        match method {
            METHOD_LOGS => {
                authz::allowed(caller, &Ask::Logs)?;
                let ask: crate::peer::LogAsk = decode_record(&body).map_err(|e| format!("bad log request: {e}"))?;
                node.local_log(ask)
            }
            // Only the caller's own instances: an agent-only node sees nothing else.
            METHOD_WATCH => {
                authz::allowed(caller, &Ask::OwnInstances)?;
                node.watch_for(caller.id)
            }
            other => Err(format!("unknown stream method {other}")),
        }
    }
}
