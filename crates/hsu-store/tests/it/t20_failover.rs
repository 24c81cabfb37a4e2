//! A new leader is elected when the leader goes, and writes go on.

use hsu_store::Consistency;
use openraft::ServerState;

use crate::cluster::{poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        c.put(&format!("a/{i}"), "before").await;
        acked.push(format!("a/{i}"));
    }
    let old = c.wait_leader().await;
    c.crash(old).await;

    let new = c.wait_leader().await;
    assert_ne!(new, old);
    for key in &acked {
        let kv = c.store(new).get(key.clone(), Consistency::Linearizable).await.unwrap();
        assert_eq!(kv.map(|kv| kv.value), Some(b"before".to_vec()), "{key} was acknowledged and then lost");
    }
    // Writes continue on the two survivors.
    for i in 0..10 {
        c.put(&format!("b/{i}"), "after").await;
    }
    let (_, kvs) = c.converged().await;
    assert_eq!(kvs.len(), 40);
    c.shutdown().await;
}

/// Two survivors that campaign at the same moment split the vote. openraft 0.9 would have them
/// campaign together again every round when their fixed timeouts round to the same tick; here
/// they never campaign on their own at all (elections off), so only the store's own retry at a
/// random moment can end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_that_split_the_vote_still_elect_a_leader() {
    let mut c = Cluster::start(3).await;
    c.put("before", "split").await;
    let old = c.wait_leader().await;
    for id in 1..=3 {
        c.store(id).raft().runtime_config().elect(false);
    }
    c.crash(old).await;
    let [a, b] = <[u64; 2]>::try_from(c.running()).unwrap();

    // Each votes for itself in the same term while they cannot hear each other.
    c.router.block(a, b);
    c.router.block(b, a);
    for id in [a, b] {
        c.store(id).raft().trigger().elect().await.unwrap();
    }
    let term = poll("both survivors candidates of one term", || async {
        let (ma, mb) = (c.store(a).raft().metrics().borrow().clone(), c.store(b).raft().metrics().borrow().clone());
        let split = ma.state == ServerState::Candidate && mb.state == ServerState::Candidate;
        (split && ma.current_term == mb.current_term).then_some(ma.current_term)
    })
    .await;
    c.router.unblock(a, b);
    c.router.unblock(b, a);

    let new = c.wait_leader().await;
    assert!(new == a || new == b, "{new} leads");
    assert!(c.store(new).raft().metrics().borrow().current_term > term, "the leader's term is that of the split");
    c.put("after", "split").await;
    let kv = c.store(new).get("before".to_string(), Consistency::Linearizable).await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"split".to_vec()));
    c.shutdown().await;
}
