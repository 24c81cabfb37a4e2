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
        (cmp("missing", CompareTarget::Value(vec![]), CompareOp::Equal), true),
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
    let loaded = KvState::from_parts(s.kv.clone(), leases, s.revision, s.compacted);
    assert_eq!(loaded, s);
}
