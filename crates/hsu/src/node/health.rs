//! Health and status: the leader's view of its members (last contact and matched index, from
//! memory), and the cluster status any node answers.

use super::*;
use hsu_model::keys;

impl Node {
    pub(super) fn health_as_leader(&self) -> Result<HealthView, PeerError> {
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
        let health: HealthView = self.leader_call(PeerRequest::Health).await.unwrap_or_default();
        let nodes: BTreeMap<NodeId, NodeRecord> =
            self.list_local(&keys::NODES.all())?.into_iter().map(|n| (n.id, n)).collect();
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
