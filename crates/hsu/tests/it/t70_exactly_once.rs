//! Writes forwarded to the leader are applied exactly once when their answer is lost: the
//! `peer-reply-drop-<port>` failpoint (built with `--features failpoints`) makes the leader drop
//! the answer to a write it has applied, as a connection dying at that moment would. The
//! forwarding node sends the write again (it carries a request id); the leader answers the copy
//! with the first result. Counter increments by compare-and-swap show any duplicate: a copy
//! applied again would fail its compare, and the client, told "failed", would increment again.

use hsu_proto::v1 as pb;
use hsu_store::{Compare, CompareOp, CompareTarget, Consistency, KeyRange, Op, Request, Response, Txn};

use crate::cluster::TestCluster;

const INCREMENTS: u64 = 20;

fn increment(from: Option<u64>) -> Request {
    let compare = match from {
        None => Compare { key: b"/t70/counter".to_vec(), target: CompareTarget::Version(0), op: CompareOp::Equal },
        Some(n) => Compare {
            key: b"/t70/counter".to_vec(),
            target: CompareTarget::Value(n.to_string().into()),
            op: CompareOp::Equal,
        },
    };
    let next = from.map_or(1, |n| n + 1);
    Request::Txn(Txn {
        compare: vec![compare],
        success: vec![Op::Put { key: b"/t70/counter".to_vec(), value: next.to_string().into(), lease: 0 }],
        failure: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_sent_again_and_applied_once() {
    let c = TestCluster::start().await;
    let opts = hsu::bootstrap::JoinOptions { role: pb::Role::Voter, ..c.join_options("n-writer", &c.join_token) };
    let writer = hsu::bootstrap::join(opts, |_| {}).await.expect("a second voter joins");
    let drop_reply = format!("peer-reply-drop-{}", c.first.state().listen.port());
    let mut attempts = 0;
    for i in 0..INCREMENTS {
        // One increment: read, compare-and-swap, again until it succeeds (a bounded number of
        // times: a duplicate would make every later attempt fail).
        for attempt in 0.. {
            assert!(attempt < 3, "increment {i} failed {attempt} times: its writes were applied more than once");
            let current = writer.range(KeyRange::Key(b"/t70/counter".to_vec()), 1, Consistency::Linearizable).await;
            let current = current
                .expect("a read")
                .kvs
                .first()
                .map(|kv| String::from_utf8(kv.value.clone()).unwrap().parse::<u64>().unwrap());
            if i % 2 == 0 && attempt == 0 {
                // The leader applies this write and drops its answer, once.
                fail::cfg(&drop_reply, "1*return").unwrap();
            }
            attempts += 1;
            match writer.propose(increment(current)).await.expect("the write is answered") {
                Response::Txn(t) if t.succeeded => break,
                Response::Txn(_) => continue,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    fail::remove(&drop_reply);
    let counter = c.value(b"/t70/counter").await.expect("the counter exists");
    assert_eq!(counter, INCREMENTS.to_string().into_bytes(), "{INCREMENTS} requests, {attempts} attempts");
    assert_eq!(attempts, INCREMENTS, "no increment was told it failed after it was applied");
    writer.shutdown().await;
    c.shutdown().await;
}
