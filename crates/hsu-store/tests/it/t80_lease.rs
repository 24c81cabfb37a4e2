//! Leases expire their keys by the leader's clock, and keep-alives hold them.

use std::time::Duration;

use hsu_store::{Consistency, Error, Rejection};
use tokio::time::Instant;

use crate::cluster::{poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_and_a_kept_one_does_not() {
    let c = Cluster::start(3).await;
    let ttl = Duration::from_millis(600);
    let short = c.on_leader(|s| async move { s.lease_grant(ttl).await }).await;
    let kept = c.on_leader(|s| async move { s.lease_grant(ttl).await }).await;
    c.on_leader(|s| async move { s.put("live/short", "x", short).await }).await;
    c.on_leader(|s| async move { s.put("live/kept", "x", kept).await }).await;
    let granted = Instant::now();

    // Keep one alive for several TTLs; let the other lapse.
    while granted.elapsed() < ttl * 3 {
        c.on_leader(|s| async move { s.lease_keep_alive(kept).await }).await;
        tokio::time::sleep(ttl / 4).await;
    }
    c.converged().await;
    for id in 1..=3 {
        let s = c.store(id);
        assert!(s.get("live/short", Consistency::Local).await.unwrap().is_none(), "node {id} kept an expired key");
        assert!(s.get("live/kept", Consistency::Local).await.unwrap().is_some(), "node {id} lost a kept-alive key");
    }
    let err = c.store(c.wait_leader().await).lease_keep_alive(short).await.unwrap_err();
    assert_eq!(err, Error::Rejected(Rejection::LeaseNotFound(short)));
    // Attaching a key to a lease that is gone is refused and changes nothing.
    let err = c.store(c.wait_leader().await).put("live/late", "x", short).await.unwrap_err();
    assert_eq!(err, Error::Rejected(Rejection::LeaseNotFound(short)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_after_a_leader_change() {
    let mut c = Cluster::start(3).await;
    let ttl = Duration::from_millis(800);
    let lease = c.on_leader(|s| async move { s.lease_grant(ttl).await }).await;
    c.on_leader(|s| async move { s.put("svc/a", "x", lease).await }).await;
    c.on_leader(|s| async move { s.put("plain", "x", 0).await }).await;
    c.converged().await;

    let old = c.wait_leader().await;
    c.crash(old).await;
    let new = c.wait_leader().await;
    let elected = Instant::now();
    // The new leader expires it: never before a full TTL from its election, but soon after.
    poll("the new leader to expire the lease", || async {
        let gone = c.store(new).get("svc/a", Consistency::Local).await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    assert!(elected.elapsed() >= ttl - Duration::from_millis(100), "expired {:?} after election", elected.elapsed());
    let (_, kvs) = c.converged().await;
    assert_eq!(kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), vec![&b"plain"[..]]);
    c.shutdown().await;
}
