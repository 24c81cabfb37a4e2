//! What a node keeps up by itself: the CA key on voters (fetched from another voter once this
//! node is one), and noticing that it left or was removed (then it stops and marks its data
//! directory).

use super::*;
use hsu_model::keys;

impl Node {
    // ----- the CA key, on voters -----

    pub(crate) fn ca_key_local(&self) -> Option<String> {
        self.inner.ca_key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cluster CA with its key, to sign a joining node's certificate: this voter's own key,
    /// or one fetched from another voter when this node became a voter moments ago.
    pub(super) async fn cluster_ca(&self) -> Result<ClusterCa, PeerError> {
        let key = match self.ca_key_local() {
            Some(key) => key,
            None => self.fetch_ca_key().await?,
        };
        ClusterCa::from_pem(&self.inner.pki.ca_pem, &key).map_err(|e| PeerError::Internal(e.to_string()))
    }

    /// Asks the other voters for the CA key (only voters are given it), checks that it is the
    /// key of this cluster's CA certificate, and keeps it in `pki/ca.key` (0600).
    pub async fn fetch_ca_key(&self) -> Result<String, PeerError> {
        if let Some(key) = self.ca_key_local() {
            return Ok(key);
        }
        let voters = self.store().members().other_voters(self.id());
        let mut last = format!("node {} knows no other voter to ask", self.id());
        for (id, member) in voters {
            let timeout = self.inner.tuning.request_timeout;
            match call_peer(&self.inner.endpoint, id, &member.addr, &PeerRequest::FetchCaKey, timeout).await {
                Ok(PeerReply::CaKey(CaKey(key))) => {
                    ClusterCa::from_pem(&self.inner.pki.ca_pem, &key)
                        .map_err(|e| PeerError::Invalid(format!("node {id} sent a CA key that does not fit: {e}")))?;
                    let path = crate::datadir::DataDir::new(&self.inner.dir).ca_key_file();
                    hsu_net::pki::write_private(&path, key.as_bytes())
                        .map_err(|e| PeerError::Internal(format!("{}: {e}", path.display())))?;
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
    pub(super) async fn keep_ca_key(self) {
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
    pub(super) fn voter_hint(&self) -> String {
        let voters: Vec<NodeId> = self.store().members().voter_ids().collect();
        let nodes = self.list_local(&keys::NODES.all()).unwrap_or_default();
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
    pub(super) async fn notice_removal(self) {
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
    pub(super) fn departed_in_store(&self) -> Option<Departure> {
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
}
