//! Tests of the versioned key-value state: counters, transactions, leases, events, compaction and client sessions.

use super::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into(), lease: 0 }
}

fn txn(ops: Vec<Op>) -> Request {
    Request::Txn(Txn { compare: vec![], success: ops, failure: vec![] })
}

fn cmp(key: &str, target: CompareTarget, op: CompareOp) -> Compare {
    Compare { key: key.into(), target, op }
}

/// Applies `reqs` at consecutive indexes starting at 1 and returns the responses.
fn run(state: &mut KvState, reqs: &[Request]) -> Vec<Response> {
    let start = state.revision.max(state.compacted) + 1;
    let mut changes = Changes::default();
    reqs.iter().zip(start..).map(|(r, i)| state.apply(i, r, 0, &mut changes)).collect()
}

#[test]
fn put_keeps_counters_like_etcd() {
    let mut s = KvState::default();
    run(&mut s, &[txn(vec![put("a", "1")]), txn(vec![put("b", "x")]), txn(vec![put("a", "2")])]);
    let a = s.get(b"a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (1, 3, 2, &b"2"[..]));
    assert_eq!(s.revision, 3);

    // A delete and a new put starts the key's life again.
    run(&mut s, &[txn(vec![Op::Delete { range: KeyRange::Key("a".into()) }]), txn(vec![put("a", "3")])]);
    let a = s.get(b"a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[test]
fn compares_on_every_target() {
    let mut s = KvState::default();
    run(&mut s, &[txn(vec![put("k", "v")]), txn(vec![put("k", "w")])]);
    let cases = [
        (cmp("k", CompareTarget::Value("w".into()), CompareOp::Equal), true),
        (cmp("k", CompareTarget::Value("v".into()), CompareOp::Equal), false),
        (cmp("k", CompareTarget::Value("v".into()), CompareOp::Greater), true),
        (cmp("k", CompareTarget::Version(2), CompareOp::Equal), true),
        (cmp("k", CompareTarget::Version(2), CompareOp::Less), false),
        (cmp("k", CompareTarget::CreateRevision(1), CompareOp::Equal), true),
        (cmp("k", CompareTarget::ModRevision(2), CompareOp::Equal), true),
        (cmp("k", CompareTarget::ModRevision(1), CompareOp::NotEqual), true),
        (cmp("k", CompareTarget::ModRevision(3), CompareOp::Less), true),
        // A missing key has version 0 and revisions 0: "create if absent".
        (cmp("missing", CompareTarget::Version(0), CompareOp::Equal), true),
        (cmp("missing", CompareTarget::ModRevision(0), CompareOp::Equal), true),
        // A compare on the value of a missing key fails whatever the operand, as in etcd: an
        // empty value and no value are not the same.
        (cmp("missing", CompareTarget::Value(vec![]), CompareOp::Equal), false),
        (cmp("missing", CompareTarget::Value(vec![]), CompareOp::NotEqual), false),
        (cmp("missing", CompareTarget::Value("x".into()), CompareOp::Less), false),
    ];
    for (c, want) in cases {
        assert_eq!(s.compare_holds(&c), want, "{c:?}");
    }
}

#[test]
fn txn_runs_one_branch_atomically() {
    let mut s = KvState::default();
    run(&mut s, &[txn(vec![put("n", "0")])]);
    let cas = |expect: &str, new: &str| {
        Request::Txn(Txn {
            compare: vec![cmp("n", CompareTarget::Value(expect.into()), CompareOp::Equal)],
            success: vec![put("n", new)],
            failure: vec![Op::Range { range: KeyRange::Key("n".into()), limit: 0 }],
        })
    };
    let out = run(&mut s, &[cas("0", "1"), cas("0", "2")]);
    let Response::Txn(ok) = &out[0] else { panic!("{out:?}") };
    assert!(ok.succeeded);
    let Response::Txn(failed) = &out[1] else { panic!("{out:?}") };
    assert!(!failed.succeeded);
    let OpResponse::Range { kvs, .. } = &failed.responses[0] else { panic!("{failed:?}") };
    assert_eq!(kvs[0].value, b"1");
    assert_eq!(s.get(b"n").unwrap().value, b"1");
    // The failed transaction wrote nothing, so the revision did not move.
    assert_eq!(failed.revision, 2);
}

#[test]
fn rejected_txn_changes_nothing() {
    let mut s = KvState::default();
    run(&mut s, &[txn(vec![put("a", "1")])]);
    let before = s.clone();
    let bad = txn(vec![put("a", "2"), Op::Put { key: "b".into(), value: "x".into(), lease: 42 }]);
    let mut changes = Changes::default();
    let out = s.apply(2, &bad, 0, &mut changes);
    assert_eq!(out, Response::Rejected(Rejection::LeaseNotFound(42)));
    assert_eq!(s, before);
    assert!(changes.keys.is_empty() && changes.events.is_empty());
}

#[test]
fn lease_revoke_deletes_attached_keys_only() {
    let mut s = KvState::default();
    let out = run(
        &mut s,
        &[
            Request::LeaseGrant { id: 7, ttl_ms: 1000 },
            txn(vec![Op::Put { key: "l/1".into(), value: "x".into(), lease: 7 }]),
            txn(vec![Op::Put { key: "l/2".into(), value: "x".into(), lease: 7 }]),
            // Re-putting a key without the lease detaches it.
            txn(vec![put("l/2", "y")]),
            txn(vec![put("other", "z")]),
            Request::LeaseRevoke { id: 7 },
            Request::LeaseRevoke { id: 7 },
        ],
    );
    assert_eq!(out[5], Response::LeaseRevoked { found: true, deleted: 1 });
    assert_eq!(out[6], Response::LeaseRevoked { found: false, deleted: 0 });
    assert!(s.get(b"l/1").is_none());
    assert_eq!(s.get(b"l/2").unwrap().value, b"y");
    assert!(s.get(b"other").is_some());
    assert!(s.leases.is_empty());
}

#[test]
fn events_are_emitted_in_apply_order() {
    let mut s = KvState::default();
    let mut changes = Changes::default();
    s.apply(1, &txn(vec![put("p/a", "1"), put("p/b", "2")]), 0, &mut changes);
    s.apply(2, &txn(vec![Op::Delete { range: KeyRange::Prefix("p/".into()) }]), 0, &mut changes);
    let got: Vec<(EventKind, &[u8], u64)> =
        changes.events.iter().map(|e| (e.kind, e.kv.key.as_slice(), e.kv.mod_revision)).collect();
    assert_eq!(
        got,
        vec![
            (EventKind::Put, &b"p/a"[..], 1),
            (EventKind::Put, &b"p/b"[..], 1),
            (EventKind::Delete, &b"p/a"[..], 2),
            (EventKind::Delete, &b"p/b"[..], 2),
        ]
    );
}

#[test]
fn range_by_prefix_with_limit() {
    let mut s = KvState::default();
    run(&mut s, &[txn(vec![put("a/1", ""), put("a/2", ""), put("a/3", ""), put("b/1", "")])]);
    let (kvs, more) = s.range(&KeyRange::Prefix("a/".into()), 2);
    assert_eq!(kvs.iter().map(|k| k.key.as_slice()).collect::<Vec<_>>(), vec![&b"a/1"[..], b"a/2"]);
    assert!(more);
    let (kvs, more) = s.range(&KeyRange::Prefix("a/".into()), 0);
    assert_eq!((kvs.len(), more), (3, false));
}

#[test]
fn history_is_compacted_deterministically() {
    let mut s = KvState::default();
    let mut changes = Changes::default();
    for i in 1..=100 {
        s.apply(i, &txn(vec![put("k", "v")]), 10, &mut changes);
    }
    // Compaction happens in steps: never more than retain + retain/8 revisions are kept.
    assert!(s.compacted >= 100 - 11 && s.compacted <= 90, "compacted at {}", s.compacted);
    let out = s.apply(101, &Request::Compact { revision: 500 }, 10, &mut changes);
    assert_eq!(out, Response::Rejected(Rejection::FutureRevision { requested: 500, current: 100 }));
}

#[test]
fn lease_index_is_derived_on_load() {
    let mut s = KvState::default();
    run(
        &mut s,
        &[
            Request::LeaseGrant { id: 3, ttl_ms: 500 },
            txn(vec![Op::Put { key: "x".into(), value: "1".into(), lease: 3 }]),
        ],
    );
    let leases = s.leases.iter().map(|(id, l)| (*id, StoredLease { ttl_ms: l.ttl_ms })).collect();
    let loaded = KvState::from_parts(s.kv.clone(), leases, s.sessions.clone(), s.revision, s.compacted, s.clock_ms);
    assert_eq!(loaded, s);
}

// ---------------------------------------------------------------------------------------------
// Sessions: writes applied exactly once

/// A counter increment by compare-and-swap: what a duplicate would break (the first copy
/// succeeds, a second copy fails its compare, and a client told "failed" increments again).
fn increment(from: u64) -> Request {
    let value = |n: u64| n.to_string().into_bytes();
    Request::Txn(Txn {
        compare: vec![match from {
            0 => cmp("counter", CompareTarget::Version(0), CompareOp::Equal),
            n => cmp("counter", CompareTarget::Value(value(n)), CompareOp::Equal),
        }],
        success: vec![Op::Put { key: "counter".into(), value: value(from + 1), lease: 0 }],
        failure: vec![],
    })
}

fn id(client: u64, seq: u64, oldest_pending: u64, retry: bool) -> Option<RequestId> {
    Some(RequestId { client, seq, oldest_pending, retry })
}

/// Applies proposals at consecutive indexes (each at clock `at_ms`) and returns the answers.
fn propose(state: &mut KvState, at_ms: u64, items: &[(Request, Option<RequestId>)]) -> Vec<Response> {
    let start = state.revision.max(state.compacted) + 1;
    let mut changes = Changes::default();
    items
        .iter()
        .zip(start..)
        .map(|((req, id), i)| state.apply_proposal(i, &Proposal { req: req.clone(), id: *id, at_ms }, 0, &mut changes))
        .collect()
}

fn succeeded(r: &Response) -> bool {
    matches!(r, Response::Txn(t) if t.succeeded)
}

#[test]
fn a_request_seen_before_gets_its_first_answer_and_changes_nothing() {
    let mut s = KvState::default();
    let out = propose(&mut s, 1_000, &[(increment(0), id(7, 1, 1, false)), (increment(0), id(7, 1, 1, true))]);
    assert!(succeeded(&out[0]));
    assert_eq!(out[1], out[0], "the copy is answered with the first result");
    assert_eq!(s.get(b"counter").unwrap().value, b"1", "applied once");
    let revision = s.revision;
    // Even a copy that says it is a first attempt (a frame sent twice by the network).
    let again = propose(&mut s, 1_000, &[(increment(0), id(7, 1, 1, false))]);
    assert_eq!(again[0], out[0]);
    assert_eq!(s.revision, revision, "nothing was applied");
    // Without an id the same request is applied again, and its compare fails.
    let plain = propose(&mut s, 1_000, &[(increment(0), None)]);
    assert!(!succeeded(&plain[0]));
}

#[test]
fn answers_are_kept_until_the_client_stops_waiting_for_them() {
    let mut s = KvState::default();
    // Requests 1 and 2 in flight at once; 3 is sent once the client has 1's answer.
    propose(
        &mut s,
        1_000,
        &[(increment(0), id(7, 1, 1, false)), (increment(1), id(7, 2, 1, false)), (increment(2), id(7, 3, 2, false))],
    );
    let session = &s.sessions[&7];
    assert_eq!(session.answers.keys().copied().collect::<Vec<_>>(), [2, 3], "1's answer was collected");
    // A retry of 2 is still answered; one of 1 cannot be vouched for any more.
    let out = propose(&mut s, 1_000, &[(increment(1), id(7, 2, 2, true)), (increment(0), id(7, 1, 2, true))]);
    assert!(succeeded(&out[0]));
    assert_eq!(out[1], Response::Rejected(Rejection::SessionExpired { client: 7, seq: 1 }));
    assert_eq!(s.get(b"counter").unwrap().value, b"3");
}

#[test]
fn a_retry_after_the_session_expired_is_refused_not_applied() {
    let mut s = KvState::default();
    propose(&mut s, 1_000, &[(increment(0), id(7, 1, 1, false))]);
    // Other clients' writes move the log's clock past the TTL; expiry runs every 64 entries.
    let later = 1_000 + SESSION_TTL_MS + 1;
    let filler: Vec<(Request, Option<RequestId>)> =
        (0..64).map(|i| (txn(vec![put(&format!("f{i}"), "x")]), None)).collect();
    propose(&mut s, later, &filler);
    assert!(!s.sessions.contains_key(&7), "the idle session expired");
    let out = propose(&mut s, later, &[(increment(0), id(7, 1, 1, true))]);
    assert_eq!(out[0], Response::Rejected(Rejection::SessionExpired { client: 7, seq: 1 }));
    assert_eq!(s.get(b"counter").unwrap().value, b"1", "the retry was not applied");
    // A first attempt of a new number starts a new session; a retry below it is refused.
    let out = propose(&mut s, later, &[(increment(1), id(7, 5, 5, false)), (increment(2), id(7, 4, 4, true))]);
    assert!(succeeded(&out[0]));
    assert_eq!(out[1], Response::Rejected(Rejection::SessionExpired { client: 7, seq: 4 }));
    // A first attempt below it (sent concurrently, arrived late) is applied.
    let out = propose(&mut s, later, &[(increment(2), id(7, 4, 4, false))]);
    assert!(succeeded(&out[0]));
}

#[test]
fn sessions_are_bounded_and_the_clock_never_goes_back() {
    let mut s = KvState::default();
    let items: Vec<(Request, Option<RequestId>)> =
        (0..(MAX_SESSIONS as u64 + 10)).map(|c| (txn(vec![put("k", "v")]), id(c + 1, 1, 1, false))).collect();
    propose(&mut s, 5_000, &items);
    assert_eq!(s.sessions.len(), MAX_SESSIONS);
    // A leader whose clock is behind does not move the log's clock back.
    propose(&mut s, 10, &[(txn(vec![put("k", "w")]), None)]);
    assert_eq!(s.clock_ms, 5_000);
}
