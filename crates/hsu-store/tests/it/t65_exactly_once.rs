//! Writes applied exactly once, on the path where a naive retry applies a write twice: with five
//! voters, a write whose entry was truncated on the leader that proposed it (so openraft answers
//! "forward to leader") can still be committed by a later leader that has the entry. A caller
//! that takes the refusal for "not done" and sends the write again gets it applied twice.
//!
//! The scenario, driven with elections triggered by hand (no member campaigns by itself) and the
//! router:
//! 1. Leader L proposes a counter increment E; only F receives it.
//! 2. L and F are cut off. N is elected by A and B (its vote requests are slowed so that the
//!    test can cut N off from A and B before its first entry reaches them), and N's entry at
//!    E's index reaches L only: L truncates E and answers the caller `NotLeader`.
//! 3. N is cut off; F (which has E) is elected by A and B and commits E.
//! 4. The caller retries at F with the same request id, as `leader_call` does.
//!
//! With the id, the retry is answered with E's own result and the counter is 1. The same
//! scenario without an id answers the caller "leader changed" (the outcome is unknown), not
//! "not leader": no caller is told a write that may commit did not happen.

use std::time::Duration;

use hsu_store::{Compare, CompareOp, CompareTarget, Error, NodeId, Op, Request, RequestId, Response, StoreConfig, Txn};

use crate::cluster::{poll, Cluster};

/// Votes may take up to `election_timeout_min` (openraft's vote timeout), appends one heartbeat:
/// a delay between the two lets N's votes through and none of its entries.
fn patient(cfg: &mut StoreConfig) {
    cfg.election_timeout_min = Duration::from_millis(2000);
    cfg.election_timeout_max = Duration::from_millis(2500);
    cfg.request_timeout = Duration::from_secs(30);
    cfg.break_split_votes = false;
}

/// Sets the counter from `from` to `from + 1`, if it still is `from`.
fn increment(from: u64) -> Request {
    let compare = match from {
        0 => Compare { key: b"counter".to_vec(), target: CompareTarget::Version(0), op: CompareOp::Equal },
        n => Compare {
            key: b"counter".to_vec(),
            target: CompareTarget::Value(n.to_string().into()),
            op: CompareOp::Equal,
        },
    };
    Request::Txn(Txn {
        compare: vec![compare],
        success: vec![Op::Put { key: b"counter".to_vec(), value: (from + 1).to_string().into(), lease: 0 }],
        failure: vec![],
    })
}

/// Makes `id` campaign until it leads. Voters refuse while their leader's lease lasts, so a
/// campaign may have to be repeated; each gets time for its (possibly delayed) votes to arrive.
async fn elect(c: &Cluster, id: NodeId) {
    let raft = c.store(id).raft().clone();
    poll(&format!("node {id} to lead"), || async {
        raft.trigger().elect().await.expect("an election starts");
        let mut metrics = raft.metrics();
        let led = tokio::time::timeout(Duration::from_millis(3000), async {
            metrics.wait_for(|m| m.state == openraft::ServerState::Leader).await.is_ok()
        });
        led.await.unwrap_or(false).then_some(())
    })
    .await;
}

/// Runs steps 1 to 3 with `id` on the write; returns the first answer L gives its caller, the
/// node that leads at the end, and the cluster.
async fn truncated_then_committed(id: Option<RequestId>) -> (Result<Response, Error>, NodeId, Cluster) {
    let c = Cluster::start_with(5, patient).await;
    let l = c.wait_leader().await;
    for x in 1..=5 {
        c.store(x).raft().runtime_config().elect(false);
    }
    let others: Vec<NodeId> = (1..=5).filter(|x| *x != l).collect();
    let (f, n, a, b) = (others[0], others[1], others[2], others[3]);
    let all = 1..=5;

    // 1. E reaches F only.
    for x in [n, a, b] {
        c.router.block(l, x);
    }
    let index_before = c.store(l).raft().metrics().borrow().last_log_index.unwrap_or(0);
    let store_l = c.store(l);
    let caller = tokio::spawn(async move {
        match id {
            Some(id) => store_l.propose_once(increment(0), id).await,
            None => store_l.propose(increment(0)).await,
        }
    });
    let e_index = index_before + 1;
    poll("E on F", || async { (c.store(f).raft().metrics().borrow().last_log_index >= Some(e_index)).then_some(()) })
        .await;

    // 2. L and F cut off (L may still receive); N's requests to A and B are slowed, so that N
    // is cut off from them before its first entry arrives.
    c.router.isolate(f, all.clone());
    for x in all.clone() {
        c.router.block(l, x);
    }
    c.router.set_delay(n, a, Duration::from_millis(800));
    c.router.set_delay(n, b, Duration::from_millis(800));
    elect(&c, n).await;
    c.router.block(n, a);
    c.router.block(n, b);
    let answer = tokio::time::timeout(Duration::from_secs(20), caller).await.expect("L answers its caller").unwrap();

    // 3. N cut off; F elected by A and B, commits E.
    c.router.isolate(n, all.clone());
    for x in [a, b] {
        c.router.unblock(f, x);
        c.router.unblock(x, f);
    }
    elect(&c, f).await;
    (answer, f, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_truncated_on_its_leader_and_committed_by_the_next_is_applied_once() {
    let id = RequestId { client: 0xc0ffee, seq: 1, oldest_pending: 1, retry: false };
    let (answer, f, c) = truncated_then_committed(Some(id)).await;
    assert!(matches!(answer, Err(Error::NotLeader { .. })), "L's answer: {answer:?}");

    // 4. The caller sends it again, to the new leader, as a retry.
    let retry = RequestId { retry: true, ..id };
    let resp = c.store(f).propose_once(increment(0), retry).await.expect("the retry is answered");
    assert!(matches!(&resp, Response::Txn(t) if t.succeeded), "the retry got E's own answer: {resp:?}");
    let counter = c.store(f).get("counter", hsu_store::Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(counter.value, b"1", "one request, one increment");
    assert_eq!(counter.version, 1, "written once");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_id_the_same_write_is_reported_indeterminate() {
    let (answer, f, c) = truncated_then_committed(None).await;
    assert!(
        matches!(&answer, Err(e) if e.is_indeterminate() && !matches!(e, Error::NotLeader { .. })),
        "L's answer to a write that may still commit: {answer:?}"
    );
    // And it did commit: a caller told "not leader" would have incremented again.
    let counter = poll("E committed by F", || async {
        c.store(f).get("counter", hsu_store::Consistency::Linearizable).await.ok().flatten()
    })
    .await;
    assert_eq!(counter.value, b"1");
    c.shutdown().await;
}

/// The answers a session keeps survive a restart of every member, and travel in snapshots: a
/// member that got the state by snapshot, once it leads, answers a retry instead of applying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_restarts_and_travel_in_snapshots() {
    let mut c = Cluster::start_with(3, crate::cluster::small_snapshots).await;
    let id = RequestId { client: 0xbeef, seq: 1, oldest_pending: 1, retry: false };
    let retry = RequestId { retry: true, ..id };
    let first = c.on_leader(|s| async move { s.propose_once(increment(0), id).await }).await;
    assert!(matches!(&first, Response::Txn(t) if t.succeeded), "{first:?}");
    for i in 0..100 {
        c.put(&format!("k/{i:03}"), "x").await;
    }
    for id in 1..=3 {
        c.crash(id).await;
    }
    for id in 1..=3 {
        c.launch(id).await;
    }
    let again = c.on_leader(|s| async move { s.propose_once(increment(0), retry).await }).await;
    assert_eq!(again, first, "after a restart the retry got the first answer");

    // Member 4 joins after the log was purged, so it gets everything by snapshot; then it leads.
    let leader = c.wait_leader().await;
    poll("the leader to purge its log", || async {
        c.store(leader).raft().metrics().borrow().purged.filter(|p| p.index >= 40).map(drop)
    })
    .await;
    let new = c.launch(4).await;
    c.store(leader).add_voter(4, crate::cluster::member(4)).await.unwrap();
    poll("member 4 to install a snapshot", || async { new.raft().metrics().borrow().snapshot.map(drop) }).await;
    // Voters grant votes only to a log as long as theirs: member 4 must have all of it first
    // (the membership change commits on three of the four members).
    let last = c.store(leader).raft().metrics().borrow().last_log_index;
    poll("member 4 to catch up", || async { (new.raft().metrics().borrow().last_log_index >= last).then_some(()) })
        .await;
    // Only member 4 campaigns: another member elected meanwhile would hold its leader lease and
    // keep member 4's campaigns from ever winning.
    for x in 1..=3 {
        c.store(x).raft().runtime_config().elect(false);
    }
    c.router.isolate(leader, 1..=4);
    elect(&c, 4).await;
    let from_snapshot = c.store(4).propose_once(increment(0), retry).await.unwrap();
    assert_eq!(from_snapshot, first, "the member restored from a snapshot got the first answer");
    let counter = c.store(4).get("counter", hsu_store::Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!((counter.value.as_slice(), counter.version), (&b"1"[..], 1));
    c.shutdown().await;
}
