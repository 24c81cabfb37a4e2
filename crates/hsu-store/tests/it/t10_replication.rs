//! Writes replicate to every member and read back from each.

use hsu_store::{Consistency, KeyRange};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_a_leader_and_replicate() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    assert!((1..=3).contains(&leader));

    let mut last = 0;
    for i in 0..50 {
        last = c.put(&format!("k/{i:02}"), &format!("v{i}")).await;
    }
    let (revision, kvs) = c.converged().await;
    assert_eq!(revision, last);
    assert_eq!(kvs.len(), 50);
    assert_eq!(kvs[7].key, b"k/07");
    assert_eq!(kvs[7].value, b"v7");

    // A follower serves local reads of replicated data, and refuses linearizable ones.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let local = c.store(follower).get("k/49", Consistency::Local).await.unwrap().unwrap();
    assert_eq!(local.value, b"v49");
    let err = c.store(follower).range(KeyRange::Key(b"k/49".to_vec()), 0, Consistency::Linearizable).await;
    assert!(matches!(err, Err(hsu_store::Error::NotLeader { leader: Some((l, _)) }) if l == leader), "{err:?}");
    c.shutdown().await;
}
