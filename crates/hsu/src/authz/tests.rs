//! Tests of the authorization table, one row per request and role.

use super::*;
use crate::peer::{JoinTicket, RoleWish};
use hsu_store::{KeyRange, Member, Request, Txn};

/// The caller of every row is node 7; "self" rows name node 7, "other" rows node 9.
const ME: NodeId = 7;
const OTHER: NodeId = 9;

fn report(node: NodeId) -> PeerRequest {
    PeerRequest::Report(Box::new(hsu_model::state::NodeReport { node, ..Default::default() }))
}

fn requests() -> Vec<(&'static str, Ask<'static>)> {
    let leak = |r: PeerRequest| -> &'static PeerRequest { Box::leak(Box::new(r)) };
    let ticket = JoinTicket {
        token: String::new(),
        csr_pem: String::new(),
        name: "x".into(),
        address: String::new(),
        api_address: String::new(),
        agent_only: false,
    };
    vec![
        ("raft", Ask::Raft),
        ("propose", Ask::Peer(leak(PeerRequest::Propose { req: Request::Txn(Txn::default()), id: None }))),
        ("range", Ask::Peer(leak(PeerRequest::Range { range: KeyRange::Prefix(vec![]), limit: 0 }))),
        ("keepalive", Ask::Peer(leak(PeerRequest::KeepAlive(1)))),
        ("join", Ask::Peer(leak(PeerRequest::Join(ticket)))),
        ("fetch-ca-key", Ask::Peer(leak(PeerRequest::FetchCaKey))),
        ("add self", Ask::Peer(leak(PeerRequest::AddMember { id: ME, role: RoleWish::Voter, target_voters: 3 }))),
        ("add other", Ask::Peer(leak(PeerRequest::AddMember { id: OTHER, role: RoleWish::Voter, target_voters: 3 }))),
        ("leave", Ask::Peer(leak(PeerRequest::RemoveMember { id: ME, revoke: false }))),
        ("revoke self", Ask::Peer(leak(PeerRequest::RemoveMember { id: ME, revoke: true }))),
        ("remove other", Ask::Peer(leak(PeerRequest::RemoveMember { id: OTHER, revoke: false }))),
        ("move self", Ask::Peer(leak(PeerRequest::UpdateAddress { id: ME, member: Member::default() }))),
        ("move other", Ask::Peer(leak(PeerRequest::UpdateAddress { id: OTHER, member: Member::default() }))),
        ("health", Ask::Peer(leak(PeerRequest::Health))),
        ("reports", Ask::Peer(leak(PeerRequest::Reports))),
        ("report self", Ask::Peer(leak(report(ME)))),
        ("report other", Ask::Peer(leak(report(OTHER)))),
        ("logs", Ask::Logs),
        ("own instances", Ask::OwnInstances),
    ]
}

/// The whole table, one line per request: what each role may do. This is the table of the
/// module documentation (and of docs/architecture.md); a change to either must change this.
/// Raft messages from learners and joining servers pass here and are refused by the store
/// (`hsu_store::serve_rpc`: voters only), which the node tests show end to end.
#[test]
fn the_table() {
    let roles = [Role::Voter, Role::Learner, Role::Joining, Role::Agent];
    let mut got = String::from("request        voter learner joining agent\n");
    for (name, ask) in requests() {
        got.push_str(&format!("{name:<14}"));
        for role in roles {
            let mark = if allowed(Caller { id: ME, role }, &ask).is_ok() { "yes" } else { "-" };
            got.push_str(&format!(" {mark:<w$}", w = format!("{role:?}").len()));
        }
        got = got.trim_end().to_string();
        got.push('\n');
    }
    let expected = "\
request        voter learner joining agent
raft           yes   yes     yes     -
propose        yes   -       -       -
range          yes   -       -       -
keepalive      yes   -       -       -
join           yes   -       -       -
fetch-ca-key   yes   -       -       -
add self       yes   -       yes     -
add other      yes   -       -       -
leave          yes   yes     yes     yes
revoke self    yes   -       -       -
remove other   yes   -       -       -
move self      yes   yes     -       -
move other     -     -       -       -
health         yes   yes     yes     -
reports        yes   yes     yes     -
report self    yes   yes     yes     yes
report other   yes   -       -       -
logs           yes   yes     -       -
own instances  -     -       -       yes
";
    assert_eq!(got, expected, "got:\n{got}");
}

#[test]
fn a_refusal_names_the_node_its_role_and_the_request() {
    let agent = Caller { id: ME, role: Role::Agent };
    let ask = Ask::Peer(&PeerRequest::FetchCaKey);
    assert_eq!(allowed(agent, &ask).unwrap_err(), "node 7 is an agent-only node and may not send FetchCaKey");
    let learner = Caller { id: ME, role: Role::Learner };
    let req = PeerRequest::UpdateAddress { id: OTHER, member: Member::default() };
    assert_eq!(
        allowed(learner, &Ask::Peer(&req)).unwrap_err(),
        "node 7 is a learner and may not send UpdateAddress for node 9"
    );
}
