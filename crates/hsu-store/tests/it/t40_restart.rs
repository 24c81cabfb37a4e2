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

/// What a power cut can leave behind: every member's log holds an entry that was committed and
/// acknowledged (appends are flushed before they are acknowledged), while the saved commit index
/// and the state machine are from before it (they are written without a flush of their own).
/// The leader then restarts from its own vote. It must not answer a linearizable read from that
/// older state: it learns what was committed by winning a new term and committing an entry of
/// that term first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restored_from_its_vote_reads_every_acknowledged_write() {
    use hsu_store::{Consistency, Op, Proposal, Request, Txn, TypeConfig};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let mut c = Cluster::start(3).await;
    c.put("k", "before").await;
    c.converged().await;
    let leader = c.wait_leader().await;
    let term = c.store(leader).status().term;
    for id in 1..=3 {
        c.crash(id).await;
    }

    // The acknowledged write, appended by hand to every member's log, in the leader's term.
    let put = Request::Txn(Txn {
        success: vec![Op::Put { key: b"k".to_vec(), value: b"acknowledged".to_vec(), lease: 0 }],
        ..Txn::default()
    });
    for id in 1..=3 {
        let db = crate::t90_corruption::raw(&c.data_dir(id)).await;
        let log = db.open_tree("log").unwrap();
        let (_, last) = log.last().unwrap().expect("a log");
        let last: Entry<TypeConfig> = hsu_model::decode_record(&last).unwrap();
        assert_eq!(last.log_id.leader_id, CommittedLeaderId::new(term, leader), "node {id}'s last entry");
        let index = last.log_id.index + 1;
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Normal(Proposal { req: put.clone(), id: None, at_ms: 0 }),
        };
        log.insert(index.to_be_bytes(), hsu_model::encode_record(&entry).unwrap()).unwrap();
        db.flush().unwrap();
    }

    for id in [leader].into_iter().chain((1..=3).filter(|id| *id != leader)) {
        c.launch(id).await;
    }
    let value =
        c.on_leader(|s| async move { s.get("k", Consistency::Linearizable).await }).await.expect("the key exists");
    assert_eq!(value.value, b"acknowledged", "a linearizable read returned a value older than an acknowledged write");
    let now = c.store(c.wait_leader().await).status().term;
    assert!(now > term, "the leader of term {term} went on leading it after a restart (term now {now})");
    c.shutdown().await;
}
