//! Membership, on the leader: enrolling a joining node (token check, id and record in one
//! transaction, its certificate signed), adding it as a learner or voter, removing or revoking
//! a node, and a member's new address; one membership change at a time.

use super::*;
use hsu_model::keys;

impl Node {
    // ----- membership, on the leader -----

    pub(super) async fn join_as_leader(&self, ticket: JoinTicket) -> Result<JoinGrant, PeerError> {
        self.must_lead()?;
        let token = JoinToken::parse(&ticket.token).map_err(|e| PeerError::Denied(format!("join token: {e}")))?;
        if token.ca_hash != self.ca_fingerprint() {
            return Err(PeerError::Denied("the token was made for another cluster (its CA hash differs)".into()));
        }
        validate_name(&ticket.name).map_err(PeerError::Invalid)?;
        let ca = self.cluster_ca().await?;
        let cluster: records::ClusterInfo = self
            .get_record(&keys::CLUSTER.key(()))
            .await?
            .ok_or_else(|| PeerError::Internal("cluster info is missing".into()))?;
        for _attempt in 0..20 {
            let token_key = keys::TOKENS.key(&token.id);
            let tok = self.store().get(token_key.clone(), Consistency::Linearizable).await?;
            let entry: Option<TokenEntry> = tok.as_ref().map(|t| records::decode(&t.key, &t.value)).transpose()?;
            let nodes = self.list_local(&keys::NODES.all())?;
            let next = self.store().get(keys::NEXT_NODE_ID.key(()), Consistency::Linearizable).await?;
            let next = next.ok_or_else(|| PeerError::Internal("node id counter is missing".into()))?;
            let next_id: NodeId = records::decode(&next.key, &next.value)?;
            let view = admission::JoinView {
                ticket: &ticket,
                token: &token,
                entry: entry.as_ref(),
                nodes: &nodes,
                next_id,
                now_ms: records::now_ms(),
            };
            let admission::Admission { id, identity } = admission::admit(&view)?;
            let (tok, entry) = tok.zip(entry).ok_or_else(|| PeerError::Denied("unknown token".into()))?;
            let cert_pem = ca
                .sign_node_csr(&ticket.csr_pem, &identity, 365)
                .map_err(|e| PeerError::Invalid(format!("csr: {e}")))?;
            let cert_sha256 = records::leaf_fingerprint(&cert_pem)
                .ok_or_else(|| PeerError::Internal("the signed certificate does not parse".into()))?;
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
            let txn = admission::enrollment(&token_key, tok.mod_revision, &entry, next.mod_revision, &record)?;
            if self.store().txn(txn).await?.succeeded {
                tracing::info!(node = id, name = %ticket.name, agent_only = ticket.agent_only, "node enrolled");
                let servers = {
                    let members = self.store().members();
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

    pub(super) async fn add_member_as_leader(
        &self,
        id: NodeId,
        wish: RoleWish,
        target_voters: u32,
    ) -> Result<String, PeerError> {
        self.must_lead()?;
        let record: Option<NodeRecord> = self.get_record(&keys::NODES.key(id)).await?;
        let members = self.store().members();
        let voter = match admission::place_member(id, record.as_ref(), &members, wish, target_voters)? {
            admission::Placement::AlreadyVoter => return Ok("voter".into()),
            admission::Placement::AddVoter => true,
            admission::Placement::AddLearner => false,
        };
        let record = record.ok_or_else(|| PeerError::Denied(format!("node {id} has not enrolled")))?;
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

    pub(super) async fn remove_member_as_leader(&self, id: NodeId, revoke: bool) -> Result<(), PeerError> {
        self.must_lead()?;
        let in_membership = self.store().members().contains(id);
        if !in_membership && self.get_record::<NodeRecord>(&keys::NODES.key(id)).await?.is_none() {
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
            self.put_record(&keys::REVOKED.key(id), &records::now_ms()).await?;
        }
        // Recorded before the membership change, because a leader that removes itself can no
        // longer write once the change has committed.
        match self
            .update_record(&keys::NODES.key(id), &format!("node {id}"), |r: &mut NodeRecord| r.removed = true)
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
    pub(super) async fn update_address_as_leader(&self, id: NodeId, addr: String) -> Result<(), PeerError> {
        self.must_lead()?;
        let record: NodeRecord =
            self.get_record(&keys::NODES.key(id)).await?.ok_or_else(|| PeerError::NotFound(format!("node {id}")))?;
        let in_membership = self.store().members().contains(id);
        if in_membership {
            let _one_at_a_time = self.inner.membership.lock().await;
            let timeout = self.inner.tuning.request_timeout;
            // The name is the record's, not the caller's.
            let member = Member::new(record.name.clone(), addr.clone());
            tokio::time::timeout(timeout, self.store().set_member(id, member))
                .await
                .map_err(|_| Error::Timeout(timeout))??;
        }
        self.update_record(&keys::NODES.key(id), &format!("node {id}"), |r: &mut NodeRecord| r.address = addr.clone())
            .await
    }

    /// Runs a membership change, waiting out a change that is still being committed.
    /// Every attempt is bounded too: a leader that lost its leadership without hearing of it (a
    /// restarted node whose old vote made it leader again) would otherwise wait forever for a
    /// change that can never commit.
    pub(super) async fn retry_membership<F, Fut>(&self, change: F) -> Result<(), Error>
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
}
