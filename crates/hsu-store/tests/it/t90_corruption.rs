//! Damaged records are refused at open with a clear error, and nothing committed is lost.

use std::path::Path;
use std::time::Duration;

use hsu_store::{Consistency, OpenError, Router, Store};
use tokio::time::Instant;

use crate::cluster::{Cluster, DEADLINE};

/// Opens the raw sled database of a stopped member, waiting for its last handles to go.
pub async fn raw(dir: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::open(dir.join("sled")) {
            Ok(db) => return db,
            Err(e) => {
                assert!(started.elapsed() < DEADLINE, "sled stays locked: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Rewrites one record of a stopped member with `damage` applied, runs `check` on the result of
/// opening it, then restores the record.
async fn with_damaged(dir: &Path, tree: &str, key: &[u8], damage: fn(&mut Vec<u8>), check: impl FnOnce(OpenError)) {
    let original = {
        let db = raw(dir).await;
        let t = db.open_tree(tree).unwrap();
        let original = t.get(key).unwrap().unwrap_or_else(|| panic!("no record {key:?} in {tree}")).to_vec();
        let mut bad = original.clone();
        damage(&mut bad);
        t.insert(key, bad).unwrap();
        db.flush().unwrap();
        original
    };
    // The raw handle just dropped may hold sled's lock a moment longer (its flusher thread).
    let started = Instant::now();
    let err = loop {
        match Store::open(hsu_store::StoreConfig::new(1, dir), Router::new(1).transport(1)).await {
            Err(OpenError::Locked { .. }) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other.err().expect("a damaged store opened without complaint"),
        }
    };
    check(err);
    let db = raw(dir).await;
    db.open_tree(tree).unwrap().insert(key, original).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_records_are_refused_at_open_and_nothing_is_lost() {
    let mut c = Cluster::start(1).await;
    for i in 0..10 {
        c.put(&format!("k/{i}"), &format!("value {i}")).await;
    }
    let before = c.converged().await;
    let last_index = c.store(1).applied_index();
    c.crash(1).await;
    let dir = c.data_dir(1);

    let log_key = last_index.to_be_bytes();
    let sm_key = b"kk/3".to_vec();
    let flip: fn(&mut Vec<u8>) = |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x40
    };
    let truncate: fn(&mut Vec<u8>) = |b| b.truncate(b.len() / 2);
    let nothing_left: fn(&mut Vec<u8>) = |b| b.truncate(2);

    with_damaged(&dir, "log", &log_key, flip, |e| {
        assert!(matches!(e, OpenError::Corrupt { tree: "log", .. }), "{e}");
        assert_eq!(e.to_string().split(':').next().unwrap(), format!("corrupt record in log at index {last_index}"));
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    })
    .await;
    with_damaged(&dir, "log", &log_key, truncate, |e| {
        assert!(matches!(e, OpenError::Corrupt { tree: "log", .. }), "{e}");
    })
    .await;
    with_damaged(&dir, "sm.0", &sm_key, flip, |e| {
        assert!(matches!(e, OpenError::Corrupt { tree: "state machine", ref key, .. } if key == "kk/3"), "{e}");
    })
    .await;
    with_damaged(&dir, "sm.0", &sm_key, nothing_left, |e| {
        assert!(e.to_string().contains("truncated"), "{e}");
    })
    .await;
    with_damaged(&dir, "raft", b"vote", flip, |e| {
        assert!(matches!(e, OpenError::Corrupt { tree: "raft", .. }), "{e}");
    })
    .await;

    // Refusing to open changed nothing: with the records restored, every value is there.
    let store = c.launch(1).await;
    c.wait_leader().await;
    assert_eq!(c.converged().await, before);
    let v = store.get("k/3", Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(v.value, b"value 3");
    c.shutdown().await;
}
