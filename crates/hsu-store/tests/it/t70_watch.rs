//! Watches deliver every change once, in order, from a revision on.

use std::time::Duration;

use hsu_store::{Error, Event, EventKind, KeyRange};

use crate::cluster::Cluster;

async fn next(w: &mut hsu_store::Watcher) -> Event {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch delivered nothing").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_change_once_in_order_across_a_leader_change() {
    let mut c = Cluster::start(3).await;
    c.put("other", "x").await;
    let first_leader = c.wait_leader().await;
    let watcher_node = (1..=3).find(|id| *id != first_leader).unwrap();
    let mut w = c.store(watcher_node).watch(KeyRange::Prefix(b"w/".to_vec()), 1).unwrap();

    let mut expected = Vec::new();
    for i in 0..20 {
        let rev = c.put(&format!("w/{}", i % 4), &format!("{i}")).await;
        expected.push((EventKind::Put, format!("w/{}", i % 4), rev));
    }
    let (rev, _) = c.on_leader(|s| async move { s.delete(KeyRange::Key(b"w/0".to_vec())).await }).await;
    expected.push((EventKind::Delete, "w/0".into(), rev));

    // Half way through, the leader dies; the watcher is on a survivor.
    let mut got = Vec::new();
    for _ in 0..10 {
        let e = next(&mut w).await;
        got.push((e.kind, String::from_utf8(e.kv.key).unwrap(), e.kv.mod_revision));
    }
    c.crash(first_leader).await;
    for i in 20..30 {
        let rev = c.put(&format!("w/{}", i % 4), &format!("{i}")).await;
        expected.push((EventKind::Put, format!("w/{}", i % 4), rev));
    }
    while got.len() < expected.len() {
        let e = next(&mut w).await;
        got.push((e.kind, String::from_utf8(e.kv.key).unwrap(), e.kv.mod_revision));
    }
    assert_eq!(got, expected);
    // Nothing more than what happened.
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err());

    // A client that loses its member resumes on another from where it stopped, and gets the rest.
    let resume = w.next_revision();
    let other = c.running().into_iter().find(|id| *id != watcher_node).unwrap();
    let mut w2 = c.store(other).watch(KeyRange::Prefix(b"w/".to_vec()), resume).unwrap();
    let rev = c.put("w/x", "late").await;
    let e = next(&mut w2).await;
    assert_eq!((e.kv.key.as_slice(), e.kv.mod_revision), (&b"w/x"[..], rev));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_compacted_history_is_an_error() {
    let c = Cluster::start(3).await;
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(c.put("k", &format!("{i}")).await);
    }
    let upto = revs[5];
    let compacted = c.on_leader(|s| async move { s.compact(upto).await }).await;
    assert_eq!(compacted, upto);
    c.converged().await;
    for id in 1..=3 {
        let err = c.store(id).watch(KeyRange::Key(b"k".to_vec()), revs[2]).err().unwrap();
        assert_eq!(err, Error::Compacted { requested: revs[2], compacted: upto });
        // History after the compaction point is still there.
        let mut w = c.store(id).watch(KeyRange::Key(b"k".to_vec()), upto + 1).unwrap();
        assert_eq!(next(&mut w).await.kv.mod_revision, revs[6]);
    }
    c.shutdown().await;
}
