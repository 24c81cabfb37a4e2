//! Compare-and-swap transactions through the replicated store.

use hsu_store::{Compare, CompareOp, CompareTarget, Consistency, Error, Op, Txn};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_count_exactly() {
    let c = Cluster::start(3).await;
    c.put("counter", "0").await;
    let leader = c.store(c.wait_leader().await);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let store = leader.clone();
        clients.push(tokio::spawn(async move {
            let mut successes = 0u64;
            for _ in 0..25 {
                let cur = store.get("counter", Consistency::Linearizable).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                let txn = Txn {
                    compare: vec![Compare {
                        key: b"counter".to_vec(),
                        target: CompareTarget::ModRevision(cur.mod_revision),
                        op: CompareOp::Equal,
                    }],
                    success: vec![Op::Put { key: b"counter".to_vec(), value: (n + 1).to_string().into(), lease: 0 }],
                    failure: vec![],
                };
                match store.txn(txn).await {
                    Ok(r) if r.succeeded => successes += 1,
                    Ok(_) => {}
                    Err(e @ Error::Timeout(_)) => panic!("no fault was injected, yet: {e}"),
                    Err(e) => panic!("{e}"),
                }
            }
            successes
        }));
    }
    let mut total = 0;
    for cl in clients {
        total += cl.await.unwrap();
    }
    // Every success counted once, however many attempts contention made fail.
    assert!(total > 0, "no increment succeeded");
    let fin = leader.get("counter", Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&fin.value).unwrap(), total.to_string());
    assert_eq!(fin.version, total + 1);
    c.shutdown().await;
}
