//! `hsu.v1.Cluster` over the node: status, nodes, tokens, and the two steps of joining.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use hsu_model::keys;
use hsu_net::token::JoinToken;
use hsu_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{authorize, principal, Need, Principal};
use crate::node::Node;
use crate::peer::{JoinGrant, JoinTicket, PeerRequest, RoleWish};
use crate::records::{ApiRole, TokenEntry, TokenKind};

pub struct ClusterApi {
    pub node: Node,
}

/// Join tokens are valid for a day unless asked otherwise, like kubeadm's.
const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);

fn token_info(e: TokenEntry) -> pb::TokenInfo {
    pb::TokenInfo {
        id: e.record.id,
        kind: match e.kind {
            TokenKind::Join => pb::TokenKind::Join,
            TokenKind::Api => pb::TokenKind::Api,
        } as i32,
        created_unix_ms: e.record.created_ms,
        expires_unix_ms: e.record.expires_ms.unwrap_or(0),
        uses_left: e.record.uses_left,
        revoked: e.record.revoked,
        description: e.record.description,
        role: match e.role {
            ApiRole::Admin => pb::ApiRole::Admin,
            ApiRole::ReadOnly => pb::ApiRole::ReadOnly,
        } as i32,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::AddMemberProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let s = self.node.status().await?;
        Ok(Response::new(pb::StatusResponse {
            leader: s.leader.as_ref().map(|(_, n)| n.clone()).unwrap_or_default(),
            leader_id: s.leader.map_or(0, |(id, _)| id),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    name: m.name,
                    role: m.role.to_string(),
                    address: m.address,
                    api_address: m.api_address,
                    healthy: m.healthy,
                    matched_index: m.matched_index,
                })
                .collect(),
            served_by: s.served_by,
            cluster_name: s.cluster_name,
        }))
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let membership = self.node.store().members();
        let nodes = self.node.list_local(&keys::NODES.all()).map_err(Status::from)?;
        // Health and resources come from the leader's memory; without a leader, none are known.
        let reports = tokio::time::timeout(Duration::from_secs(1), self.node.reports_view())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let nodes = nodes
            .into_iter()
            .map(|n| {
                let report = reports.reports.iter().find(|(id, _, _)| *id == n.id);
                let role = if n.removed {
                    "removed"
                } else if n.agent_only {
                    "agent"
                } else if membership.is_voter(n.id) {
                    "voter"
                } else if membership.contains(n.id) {
                    "learner"
                } else {
                    "joining"
                };
                pb::Node {
                    id: n.id,
                    name: n.name,
                    address: n.address,
                    api_address: n.api_address,
                    joined_unix_ms: n.joined_ms,
                    version: n.version,
                    role: role.into(),
                    ready: report.is_some_and(|(_, age, _)| *age < reports.grace_ms),
                    cpu_millis: report.map_or(0, |(_, _, r)| r.capacity.cpu_millis),
                    memory_bytes: report.map_or(0, |(_, _, r)| r.capacity.memory_bytes),
                    labels: report.map(|(_, _, r)| r.labels.clone().into_iter().collect()).unwrap_or_default(),
                    units: report.map_or(0, |(_, _, r)| r.instances.len() as u32),
                    last_report_ms: report.map_or(0, |(_, age, _)| *age),
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = self.node.id();
        self.node.leader_call::<()>(PeerRequest::RemoveMember { id, revoke: false }).await?;
        // Answer first, then stop.
        let node = self.node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            node.depart(crate::removal::Departure::Left);
        });
        Ok(Response::new(pb::LeaveResponse { node_id: id }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let id = req.into_inner().id;
        self.node.leader_call::<()>(PeerRequest::RemoveMember { id, revoke: true }).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        let kind = match pb::TokenKind::try_from(r.kind) {
            Ok(pb::TokenKind::Join) => TokenKind::Join,
            Ok(pb::TokenKind::Api) => TokenKind::Api,
            Err(_) => return Err(Status::invalid_argument(format!("kind: unknown value {}", r.kind))),
        };
        let role = match pb::ApiRole::try_from(r.role) {
            Ok(pb::ApiRole::Admin) => ApiRole::Admin,
            Ok(pb::ApiRole::ReadOnly) => ApiRole::ReadOnly,
            Err(_) => return Err(Status::invalid_argument(format!("role: unknown value {}", r.role))),
        };
        let ttl = match (r.ttl_seconds, kind) {
            (0, TokenKind::Join) => Some(DEFAULT_JOIN_TTL),
            (0, TokenKind::Api) => None,
            (s, _) => Some(Duration::from_secs(s)),
        };
        let uses = (r.uses > 0).then_some(r.uses);
        if kind == TokenKind::Api && uses.is_some() {
            return Err(Status::invalid_argument("uses: API tokens are not counted; leave it 0"));
        }
        let (token, entry) = self.node.create_token(kind, role, ttl, uses, r.description).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.to_string(),
            id: token.id.clone(),
            expires_unix_ms: entry.record.expires_ms.unwrap_or(0),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let tokens = self.node.list_local(&keys::TOKENS.all()).map_err(Status::from)?;
        Ok(Response::new(pb::ListTokensResponse { tokens: tokens.into_iter().map(token_info).collect() }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        self.node.revoke_token(&req.into_inner().id).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        // The token is the credential here; it is checked by the leader.
        let r = req.into_inner();
        let token = JoinToken::parse(&r.token).map_err(|e| Status::unauthenticated(format!("join token: {e}")))?;
        if token.ca_hash != self.node.ca_fingerprint() {
            return Err(Status::permission_denied("the token was made for another cluster (its CA hash differs)"));
        }
        let ticket = JoinTicket {
            token: r.token,
            csr_pem: r.csr_pem,
            name: r.name,
            address: r.address,
            api_address: r.api_address,
            agent_only: r.agent_only,
        };
        let g: JoinGrant = self.node.leader_call(PeerRequest::Join(ticket)).await?;
        Ok(Response::new(pb::JoinResponse {
            node_id: g.id,
            cert_pem: g.cert_pem,
            ca_pem: g.ca_pem,
            cluster_name: g.cluster_name,
            servers: g.servers.into_iter().map(|(id, addr)| format!("{id}={addr}")).collect(),
        }))
    }

    type AddMemberStream = ProgressStream;

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<Self::AddMemberStream>, Status> {
        let id = match principal(&self.node, &req)? {
            Principal::Node(id) => id,
            other => return Err(Status::permission_denied(format!("only a node can add itself, not {other:?}"))),
        };
        let r = req.into_inner();
        let role = match pb::Role::try_from(r.role) {
            Ok(pb::Role::Auto) => RoleWish::Auto,
            Ok(pb::Role::Voter) => RoleWish::Voter,
            Ok(pb::Role::Learner) => RoleWish::Learner,
            Ok(pb::Role::Agent) => {
                return Err(Status::invalid_argument("role: an agent-only node is never added to Raft"))
            }
            Err(_) => return Err(Status::invalid_argument(format!("role: unknown value {}", r.role))),
        };
        let target_voters = if r.target_voters == 0 { 3 } else { r.target_voters };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let step = |s: &str| pb::AddMemberProgress { step: s.into(), ..Default::default() };
            let _ = tx.send(Ok(step(&format!("asking the leader to add node {id} ({role:?})")))).await;
            let call = node.leader_call::<String>(PeerRequest::AddMember { id, role, target_voters });
            tokio::pin!(call);
            let period = Duration::from_millis(500);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = tick.tick() => {
                        let p = pb::AddMemberProgress {
                            step: "catching up".into(),
                            matched_index: 0,
                            leader_commit: node.store().status().last_log_index,
                            role: String::new(),
                        };
                        if tx.send(Ok(p)).await.is_err() { return; }
                    }
                }
            };
            let msg = match result {
                Ok(role) => Ok(pb::AddMemberProgress { step: format!("added as {role}"), role, ..Default::default() }),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
