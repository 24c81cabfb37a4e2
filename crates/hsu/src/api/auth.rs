//! Who is calling and what they may do. A caller is an administrator (a client certificate with
//! an admin identity, or a bearer API token with the admin role), a read-only client (a bearer
//! token with the read-only role), or a node (its node certificate). Everything else is
//! `Unauthenticated`.

use hsu_model::NodeId;
use hsu_net::pki::Identity;
use tonic::{Request, Status};

use crate::node::{identity_of_chain, Node};
use crate::records::ApiRole;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin(String),
    ReadOnly,
    Node(NodeId),
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

pub fn principal<T>(node: &Node, req: &Request<T>) -> Result<Principal, Status> {
    if let Some(certs) = req.peer_certs() {
        return match identity_of_chain(&certs) {
            Some(Identity::Admin(name)) => Ok(Principal::Admin(name)),
            // The TLS handshake refused revoked certificates only when the connection opened; a
            // connection opened before the node was removed must not keep serving it, and a
            // certificate minted with the CA key is not the one the node was enrolled with.
            Some(Identity::Node(id)) => match node.check_peer(id, certs[0].as_ref()) {
                Ok(()) => Ok(Principal::Node(id)),
                Err(e) => Err(Status::unauthenticated(e)),
            },
            // Authenticated, but an edge machine's credential reads nothing of the cluster: it
            // learns its instances and the servers over the node-to-node endpoint only.
            Some(Identity::Agent(id)) => match node.check_peer(id, certs[0].as_ref()) {
                Ok(()) => Err(Status::permission_denied(format!(
                    "node {id} is an agent-only node: its certificate may not use the API"
                ))),
                Err(e) => Err(Status::unauthenticated(e)),
            },
            None => Err(Status::unauthenticated("the client certificate carries no HSU identity")),
        };
    }
    let Some(value) = req.metadata().get("authorization") else {
        return Err(Status::unauthenticated(
            "no credentials: present the admin client certificate or an `authorization: Bearer <token>` header",
        ));
    };
    let value = value.to_str().map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
    match node.check_api_token(token.trim()) {
        Ok(ApiRole::Admin) => Ok(Principal::Admin("token".into())),
        Ok(ApiRole::ReadOnly) => Ok(Principal::ReadOnly),
        Err(e) => Err(Status::unauthenticated(format!("API token refused: {e}"))),
    }
}

/// Checks that the caller may do what the call needs.
pub fn authorize<T>(node: &Node, req: &Request<T>, need: Need) -> Result<Principal, Status> {
    let p = principal(node, req)?;
    match (&p, need) {
        (Principal::Admin(_), _) => Ok(p),
        (Principal::ReadOnly | Principal::Node(_), Need::Read) => Ok(p),
        (Principal::ReadOnly, Need::Write) => Err(Status::permission_denied("a read-only token cannot write")),
        (Principal::Node(id), Need::Write) => {
            Err(Status::permission_denied(format!("node {id}'s certificate is not an administrator credential")))
        }
    }
}
