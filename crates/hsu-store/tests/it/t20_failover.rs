//! A new leader is elected when the leader goes, and writes go on.

use hsu_store::Consistency;

use crate::cluster::Cluster;

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
