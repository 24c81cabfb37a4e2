//! A partitioned minority cannot write; the majority goes on; they heal.

use hsu_store::{Consistency, Error};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_in_the_minority_cannot_commit() {
    let c = Cluster::start(3).await;
    c.put("k", "0").await;
    let old = c.wait_leader().await;
    let majority: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    c.router.isolate(old, 1..=3);

    // The isolated leader cannot commit: its write fails (no phantom success).
    let err = c.store(old).put("k", "phantom", 0).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_) | Error::NotLeader { .. }), "{err}");
    let read = c.store(old).get("k", Consistency::Linearizable).await;
    assert!(read.is_err(), "a minority leader answered a linearizable read: {read:?}");

    // The majority elects a leader of its own and commits.
    let new = c.wait_leader_among(&majority).await;
    c.store(new).put("k", "1", 0).await.unwrap();

    // After healing, the old leader follows and converges; the phantom write is gone.
    c.router.heal();
    let (_, kvs) = c.converged().await;
    let k = kvs.iter().find(|kv| kv.key == b"k").unwrap();
    assert_eq!(k.value, b"1");
    assert_ne!(c.wait_leader().await, 0);
    let local = c.store(old).get("k", Consistency::Local).await.unwrap().unwrap();
    assert_eq!(local.value, b"1");
    c.shutdown().await;
}
