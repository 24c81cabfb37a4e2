//! Routing: what only the leader can do (writes, linearizable reads, lease keep-alives, joins,
//! membership changes) goes to the leader over QUIC, retried while leadership moves; what a
//! node asks of this one is handled here when it leads; the store's records read and written
//! through the leader.

use hsu_model::keys::{At, Within};

use super::*;

impl Node {
    // ----- forwarding to the leader -----

    /// Runs `req` on the leader and returns its reply as the request's own reply type `R`
    /// (`PeerReply` itself to pass it on as it came).
    pub async fn leader_call<R: FromReply>(&self, req: PeerRequest) -> Result<R, PeerError> {
        R::from_reply(Box::pin(self.leader_reply(req)).await?)
    }

    /// Runs `req` on the leader: here when this node leads, else over QUIC. Retries while there
    /// is no leader or the leader moved, until the request timeout.
    async fn leader_reply(&self, mut req: PeerRequest) -> Result<PeerReply, PeerError> {
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
    pub(super) async fn leader_replaced(&self, old: NodeId) {
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
        self.store().is_leader()
    }

    pub(super) fn must_lead(&self) -> Result<(), PeerError> {
        if self.store().is_leader() {
            return Ok(());
        }
        Err(Error::NotLeader { leader: self.store().status().leader_member() }.into())
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
        self.leader_call(PeerRequest::Propose { req, id: Some(id) }).await
    }

    pub async fn range(&self, range: KeyRange, limit: u64, consistency: Consistency) -> Result<RangeResult, PeerError> {
        match consistency {
            Consistency::Local => Ok(self.store().range_local(&range, limit)),
            Consistency::Linearizable => self.leader_call(PeerRequest::Range { range, limit }).await,
        }
    }

    pub async fn keep_alive(&self, id: LeaseId) -> Result<u64, PeerError> {
        self.leader_call(PeerRequest::KeepAlive(id)).await
    }

    /// The record at `at`, read linearizably.
    pub(super) async fn get_record<V: DeserializeOwned>(&self, at: &At<V>) -> Result<Option<V>, PeerError> {
        let kv = self.store().get(at.as_str(), Consistency::Linearizable).await?;
        kv.map(|kv| records::decode(&kv.key, &kv.value)).transpose().map_err(PeerError::from)
    }

    pub(super) async fn put_record<V: serde::Serialize>(&self, at: &At<V>, value: &V) -> Result<u64, PeerError> {
        Ok(self.store().put(at.as_str(), records::encode(value)?, 0).await?.0)
    }

    /// The records in `within`, from this node's state machine; one that does not decode is an
    /// error naming its key.
    pub fn list_local<V: DeserializeOwned>(&self, within: &Within<V>) -> Result<Vec<V>, crate::records::RecordError> {
        let r = self.store().range_local(&KeyRange::from(within), 0);
        r.kvs.iter().map(|kv| records::decode(&kv.key, &kv.value)).collect()
    }
}
