//! Tests of the leader's membership decisions: which joins are admitted and how, and where the
//! voter autopilot puts a node; a property test that any sequence of automatic joins fills the
//! voters up to the target and never past it.

use hsu_model::cluster::TokenRecord;
use hsu_model::keys;
use hsu_store::{CompareTarget, Op};
use proptest::prelude::*;

use super::*;

fn ticket(name: &str, agent_only: bool) -> JoinTicket {
    JoinTicket {
        token: String::new(),
        csr_pem: String::new(),
        name: name.into(),
        address: "10.0.0.9:7000".into(),
        api_address: "10.0.0.9:7001".into(),
        agent_only,
    }
}

fn node(id: NodeId, name: &str, removed: bool, agent_only: bool) -> NodeRecord {
    NodeRecord {
        id,
        name: name.into(),
        address: String::new(),
        api_address: String::new(),
        joined_ms: 0,
        version: String::new(),
        removed,
        agent_only,
        cert_sha256: [0; 32],
    }
}

/// A join token and its record: `kind`, at most `uses` uses, `ttl_ms` from time 1000.
fn token(kind: TokenKind, uses: Option<u32>, ttl_ms: Option<u64>) -> (JoinToken, TokenEntry) {
    let t = JoinToken::generate([7; 32]).unwrap();
    let record = t.record(1_000, ttl_ms, uses, String::new());
    (t, TokenEntry { kind, role: ApiRole::Admin, record })
}

/// The answer to a join of `name` with the token, as text.
fn check_join(name: &str, agent_only: bool, token: &JoinToken, entry: Option<&TokenEntry>, now_ms: u64) -> String {
    let nodes = [node(1, "n1", false, false), node(2, "old", true, false)];
    let t = ticket(name, agent_only);
    let view = JoinView { ticket: &t, token, entry, nodes: &nodes, next_id: 3, now_ms };
    match admit(&view) {
        Ok(a) => format!("admitted as {}", a.identity),
        Err(e) => format!("refused: {e}"),
    }
}

/// A join: the name, agent-only, the token presented, its record, the time, what is expected.
type JoinCase<'a> = (&'a str, bool, &'a JoinToken, Option<&'a TokenEntry>, u64, &'a str);

#[test]
fn joins_are_admitted_or_refused_for_the_right_reason() {
    let (join, entry) = token(TokenKind::Join, Some(1), Some(60_000));
    let (api, api_entry) = token(TokenKind::Api, None, None);
    let (other, _) = token(TokenKind::Join, None, None);
    let used = TokenEntry { record: entry.record.used(), ..entry.clone() };
    let revoked = TokenEntry { record: TokenRecord { revoked: true, ..entry.record.clone() }, ..entry.clone() };
    let cases: &[JoinCase] = &[
        ("n3", false, &join, Some(&entry), 2_000, "admitted as node 3"),
        ("n3", true, &join, Some(&entry), 2_000, "admitted as agent-only node 3"),
        // A removed node's name is free again.
        ("old", false, &join, Some(&entry), 2_000, "admitted as node 3"),
        ("n1", false, &join, Some(&entry), 2_000, "a node named \"n1\" is already in the cluster"),
        ("n3", false, &join, None, 2_000, "unknown token"),
        ("n3", false, &api, Some(&api_entry), 2_000, "an API token cannot be used to join"),
        ("n3", false, &other, Some(&entry), 2_000, "join token"),
        ("n3", false, &join, Some(&entry), 62_000, "join token"),
        ("n3", false, &join, Some(&used), 2_000, "join token"),
        ("n3", false, &join, Some(&revoked), 2_000, "join token"),
    ];
    for (name, agent_only, token, entry, now, expected) in cases {
        let got = check_join(name, *agent_only, token, *entry, *now);
        assert!(got.contains(expected), "{name} at {now}: expected {expected:?}, got {got:?}");
        assert_eq!(got.starts_with("admitted"), expected.starts_with("admitted"), "{name} at {now}: {got}");
    }
}

#[test]
fn enrollment_uses_the_token_once_and_moves_the_counter() {
    let (_, entry) = token(TokenKind::Join, Some(2), None);
    let record = node(3, "n3", false, false);
    let key = keys::TOKENS.key(&entry.record.id);
    let txn = enrollment(&key, 11, &entry, 12, &record).unwrap();
    let compared: Vec<(String, CompareTarget)> =
        txn.compare.iter().map(|c| (String::from_utf8_lossy(&c.key).into_owned(), c.target.clone())).collect();
    assert_eq!(
        compared,
        vec![
            (key.to_string(), CompareTarget::ModRevision(11)),
            (keys::NEXT_NODE_ID.prefix().to_string(), CompareTarget::ModRevision(12))
        ]
    );
    let puts: Vec<(String, Vec<u8>)> = txn
        .success
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => (String::from_utf8_lossy(key).into_owned(), value.clone()),
            other => panic!("enrollment writes only puts: {other:?}"),
        })
        .collect();
    let used: TokenEntry = records::decode(puts[0].0.as_bytes(), &puts[0].1).unwrap();
    assert_eq!(used.record.uses_left, Some(1));
    let next: NodeId = records::decode(puts[1].0.as_bytes(), &puts[1].1).unwrap();
    assert_eq!((puts[1].0.as_str(), next), (keys::NEXT_NODE_ID.prefix(), 4));
    let stored: NodeRecord = records::decode(puts[2].0.as_bytes(), &puts[2].1).unwrap();
    assert_eq!((puts[2].0.clone(), stored), (keys::NODES.key(3).to_string(), record));
}

fn members(voters: &[NodeId], learners: &[NodeId]) -> hsu_store::Members {
    let m = |ids: &[NodeId]| ids.iter().map(|id| (*id, Member::new(format!("n{id}"), "a:1"))).collect();
    hsu_store::Members::new(m(voters), m(learners))
}

#[test]
fn the_autopilot_places_each_node_by_its_wish_and_the_target() {
    let enrolled = node(5, "n5", false, false);
    let removed = node(5, "n5", true, false);
    let agent = node(5, "n5", false, true);
    let use_placement = |record: Option<&NodeRecord>, m: &hsu_store::Members, wish, target| match place_member(
        5, record, m, wish, target,
    ) {
        Ok(p) => format!("{p:?}"),
        Err(e) => format!("refused: {e}"),
    };
    let three = members(&[1, 2, 3], &[]);
    let one = members(&[1], &[]);
    let cases: &[(Option<&NodeRecord>, &hsu_store::Members, RoleWish, u32, &str)] = &[
        (Some(&enrolled), &one, RoleWish::Auto, 3, "AddVoter"),
        (Some(&enrolled), &three, RoleWish::Auto, 3, "AddLearner"),
        (Some(&enrolled), &three, RoleWish::Auto, 5, "AddVoter"),
        // A target of 0 still means at least one voter.
        (Some(&enrolled), &members(&[], &[]), RoleWish::Auto, 0, "AddVoter"),
        (Some(&enrolled), &one, RoleWish::Auto, 0, "AddLearner"),
        (Some(&enrolled), &three, RoleWish::Voter, 3, "AddVoter"),
        (Some(&enrolled), &one, RoleWish::Learner, 3, "AddLearner"),
        (Some(&enrolled), &members(&[1, 5], &[]), RoleWish::Learner, 3, "AlreadyVoter"),
        (Some(&enrolled), &members(&[1], &[5]), RoleWish::Voter, 3, "a learner is not promoted by asking"),
        (None, &one, RoleWish::Auto, 3, "node 5 has not enrolled"),
        (Some(&removed), &one, RoleWish::Auto, 3, "node 5 was removed"),
        (Some(&agent), &one, RoleWish::Voter, 3, "never added to raft"),
    ];
    for (record, m, wish, target, expected) in cases {
        let got = use_placement(*record, m, *wish, *target);
        assert!(got.contains(expected), "{wish:?} with target {target}: expected {expected:?}, got {got:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Nodes that join one after another, each with a wish (mostly `Auto`): an `Auto` join makes
    /// a voter only while there are fewer than the target, so the automatic ones fill the voters
    /// up to the target and never past it.
    #[test]
    fn automatic_joins_fill_the_voters_to_the_target_and_no_further(
        target in 0u32..7,
        wishes in prop::collection::vec(prop::sample::select(vec![RoleWish::Auto, RoleWish::Auto, RoleWish::Auto, RoleWish::Voter, RoleWish::Learner]), 0..12),
    ) {
        let (mut voters, mut learners) = (vec![1u64], Vec::new());
        for (i, wish) in wishes.iter().enumerate() {
            let id = i as NodeId + 2;
            let record = node(id, &format!("n{id}"), false, false);
            let before = voters.len() as u32;
            match place_member(id, Some(&record), &members(&voters, &learners), *wish, target).unwrap() {
                Placement::AddVoter => {
                    prop_assert!(*wish == RoleWish::Voter || before < target.max(1), "auto made voter {} of target {}", before + 1, target);
                    voters.push(id);
                }
                Placement::AddLearner => {
                    prop_assert!(*wish == RoleWish::Learner || (*wish == RoleWish::Auto && before >= target.max(1)));
                    learners.push(id);
                }
                Placement::AlreadyVoter => prop_assert!(false, "node {} is new", id),
            }
            // Asking again changes nothing.
            let again = place_member(id, Some(&record), &members(&voters, &learners), *wish, target);
            prop_assert!(matches!(again, Ok(Placement::AlreadyVoter)) || again.is_err());
        }
        let autos = wishes.iter().filter(|w| **w == RoleWish::Auto).count() as u32;
        let asked = wishes.iter().filter(|w| **w == RoleWish::Voter).count() as u32;
        let voters_now = voters.len() as u32;
        // Every `Auto` join made a voter while there were fewer than the target; those who asked
        // to be voters are voters whatever the target.
        prop_assert!(voters_now >= (1 + asked).max(target.max(1).min(1 + asked + autos)));
        prop_assert!(voters_now <= target.max(1) + asked);
    }
}
