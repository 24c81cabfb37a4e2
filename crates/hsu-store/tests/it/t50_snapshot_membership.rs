//! Snapshots, members added from a snapshot, and membership changes.

use crate::cluster::{member, poll, small_snapshots, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_purge_is_brought_up_by_snapshot() {
    let mut c = Cluster::start_with(3, small_snapshots).await;
    for i in 0..150 {
        c.put(&format!("k/{i:03}"), &format!("{i}")).await;
    }
    let leader = c.wait_leader().await;
    // The leader's log no longer reaches back to the start.
    let purged = poll("the leader to purge its log", || async {
        let m = c.store(leader).raft().metrics().borrow().clone();
        m.purged.filter(|p| p.index >= 40).map(|p| p.index)
    })
    .await;

    let new = c.launch(4).await;
    c.store(leader).add_learner(4, member(4)).await.unwrap();
    // Only a snapshot can have brought it past the purged part of the log.
    let snap = poll("the new member to install a snapshot", || async {
        new.raft().metrics().borrow().snapshot.filter(|s| s.index >= purged)
    })
    .await;
    assert!(snap.index >= purged);
    let (_, kvs) = c.converged().await;
    assert_eq!(kvs.len(), 150);
    assert_eq!(c.dump(4).await.1, kvs);

    // Promote it, then remove another voter: the cluster keeps committing with {1..4} \ {victim}.
    let leader = c.wait_leader().await;
    c.store(leader).add_voter(4, member(4)).await.unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    c.store(leader).remove_member(victim).await.unwrap();
    let voters: Vec<u64> =
        c.store(leader).raft().metrics().borrow().membership_config.membership().voter_ids().collect();
    assert!(voters.contains(&4) && !voters.contains(&victim) && voters.len() == 3, "{voters:?}");
    let all: Vec<u64> =
        c.store(leader).raft().metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
    assert!(!all.contains(&victim), "{all:?}");
    c.crash(victim).await;
    c.put("after-remove", "x").await;
    assert_eq!(c.converged().await.1.len(), 151);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_steps_down_and_a_new_term_begins() {
    let mut c = Cluster::start(3).await;
    c.put("k", "1").await;
    let old = c.wait_leader().await;
    let old_term = c.store(old).raft().metrics().borrow().current_term;
    c.store(old).remove_member(old).await.unwrap();
    let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = c.wait_leader_among(&rest).await;
    let new_term = c.store(new).raft().metrics().borrow().current_term;
    assert!(new_term > old_term, "leader {new} in term {new_term} after leader {old} in term {old_term}");
    c.crash(old).await;
    c.put("k", "2").await;
    assert_eq!(c.converged().await.1.len(), 1);
    c.shutdown().await;
}
