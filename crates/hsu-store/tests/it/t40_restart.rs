//! Members that restart keep what was committed and catch up.

use crate::cluster::{poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarts_from_its_directory_and_catches_up() {
    let mut c = Cluster::start(3).await;
    for i in 0..20 {
        c.put(&format!("k/{i}"), "1").await;
    }
    let before = c.converged().await;
    let leader = c.wait_leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    c.crash(victim).await;

    // Writes go on while it is down.
    for i in 20..30 {
        c.put(&format!("k/{i}"), "2").await;
    }

    // It comes back cut off from the others: what it has is what it kept on disk.
    c.router.isolate(victim, 1..=3);
    c.launch(victim).await;
    let own = poll("the restarted member to re-apply its log", || async {
        let d = c.dump(victim).await;
        (d == before).then_some(d)
    })
    .await;
    assert_eq!(own.1.len(), 20);

    // Once it can talk again, it catches up with what it missed.
    c.router.heal();
    let (_, after) = c.converged().await;
    assert_eq!(after.len(), 30);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restarts_with_the_same_state() {
    let mut c = Cluster::start(3).await;
    for i in 0..25 {
        c.put(&format!("k/{i}"), &format!("{i}")).await;
    }
    let before = c.converged().await;
    for id in 1..=3 {
        c.crash(id).await;
    }
    for id in 1..=3 {
        c.launch(id).await;
    }
    c.wait_leader().await;
    assert_eq!(c.converged().await, before);
    c.put("k/after", "x").await;
    assert_eq!(c.converged().await.1.len(), 26);
    c.shutdown().await;
}
