//! Authentication is not authorization. A learner's and an agent-only node's certificates are
//! valid, not revoked, and the very ones the cluster enrolled, yet every privileged
//! node-to-node request they send is refused, with their role and the request named, and the
//! whole key space is byte-identical afterwards. The same requests work from the voter's
//! certificate, so the refusals are the authorization table's doing. Neither node holds the CA
//! key on disk or is ever sent it.

use std::path::Path;

use hsu::peer::{JoinTicket, PeerError, PeerReply, PeerRequest, RoleWish};
use hsu_model::state::NodeReport;
use hsu_net::frame::DEFAULT_MAX_FRAME;
use hsu_net::pki::{generate_csr, CertifiedKey};
use hsu_net::quic::{Endpoint, NetError};
use hsu_proto::v1 as pb;
use hsu_store::{forge, KeyRange, Member};

use crate::cluster::{peer_call, put_request, quic_client, TestCluster, DEADLINE};

const METHOD_APPEND: u16 = 1;
const METHOD_VOTE: u16 = 2;
const METHOD_LOGS: u16 = 11;
const METHOD_WATCH: u16 = 12;

/// Every request a node may send to another that needs more than a learner's or an agent's
/// role, as node `me` would send it.
fn privileged(me: u64, join_token: &str) -> Vec<(&'static str, PeerRequest)> {
    let (csr_pem, _) = generate_csr().expect("a csr");
    let ticket = JoinTicket {
        token: join_token.to_string(),
        csr_pem,
        name: "n-smuggled".into(),
        address: "127.0.0.1:1".into(),
        api_address: "127.0.0.1:2".into(),
        agent_only: false,
    };
    vec![
        (
            "a range of the CA record",
            PeerRequest::Range { range: KeyRange::Key(hsu_model::keys::CA.prefix().into()), limit: 0 },
        ),
        (
            "a range of the tokens",
            PeerRequest::Range { range: KeyRange::Prefix(hsu_model::keys::TOKENS.prefix().into()), limit: 0 },
        ),
        ("a range of every key", PeerRequest::Range { range: KeyRange::Prefix(Vec::new()), limit: 0 }),
        ("a write", put_request(b"/t60/forged", b"forged".to_vec())),
        ("a write revoking node 1", put_request(hsu_model::keys::REVOKED.key(1).as_bytes(), b"0".to_vec())),
        ("a lease keep-alive", PeerRequest::KeepAlive(1)),
        ("an enrollment with a valid token", PeerRequest::Join(ticket)),
        ("its own promotion to voter", PeerRequest::AddMember { id: me, role: RoleWish::Voter, target_voters: 3 }),
        ("adding another node", PeerRequest::AddMember { id: 99, role: RoleWish::Voter, target_voters: 3 }),
        ("removing node 1", PeerRequest::RemoveMember { id: 1, revoke: true }),
        ("revoking itself", PeerRequest::RemoveMember { id: me, revoke: true }),
        ("moving node 1", PeerRequest::UpdateAddress { id: 1, member: Member::new("n1", "127.0.0.1:1") }),
        ("the CA key", PeerRequest::FetchCaKey),
        ("a report for node 1", PeerRequest::Report(Box::new(NodeReport { node: 1, ..Default::default() }))),
    ]
}

/// A line of the CA key's PEM body: present in any copy of the key, in a file or a frame.
fn ca_key_marker(c: &TestCluster) -> Vec<u8> {
    let key = c.pki_of("n1").ca_key_pem.expect("the first voter holds the CA key");
    let line = key.lines().find(|l| l.len() >= 40 && !l.starts_with("-----")).expect("a base64 line");
    line.as_bytes().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files under `dir` that contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("a readable directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Sends every privileged request with `cert` and checks each is refused by name.
async fn each_is_refused(c: &TestCluster, who: &str, me: u64, cert: &CertifiedKey, role: &str) {
    let quic = quic_client(&c.admin_conf.ca, Some(cert), DEFAULT_MAX_FRAME);
    for (what, req) in privileged(me, &c.join_token) {
        let reply = peer_call(&quic, &c.first, &req).await;
        match &reply {
            Ok(Err(PeerError::Denied(msg))) => {
                assert!(msg.contains(role) && msg.contains(req.name()), "{who}, {what}: refusal {msg:?}");
            }
            other => panic!("{who} sent {what} and got {other:?}"),
        }
    }
    // Raft: a vote and an append naming node 1 (the leader) as their sender, and a vote in the
    // caller's own name. Each, if taken, would make node 1 step down to a higher term.
    let term = c.first.store().status().term;
    let raft = [
        ("a vote in node 1's name", METHOD_VOTE, forge::vote(term + 10, 1)),
        ("a vote in its own name", METHOD_VOTE, forge::vote(term + 10, me)),
        ("an append in node 1's name", METHOD_APPEND, forge::append(term + 10, 1)),
    ];
    for (what, method, body) in raft {
        let reply = quic.call(c.first.state().listen, "node-1.hsu", method, &body, DEADLINE).await;
        assert!(matches!(&reply, Err(NetError::Remote(_))), "{who} sent {what} and got {reply:?}");
    }
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_and_agent_only_nodes_are_refused_every_privileged_request() {
    let mut c = TestCluster::start().await;
    let token = c.join_token.clone();
    let learner = c.join("n-learner", &token).await.expect("a learner joins");
    let agent = c.join_agent("n-agent", &token).await.expect("an agent-only node joins");
    let learner_cert = c.pki_of("n-learner").node;
    let agent_cert = c.pki_of("n-agent").node;
    let before = c.observe().await;
    assert_eq!(before.role_of(learner.id()), "learner");
    assert_eq!(before.role_of(agent.id()), "agent");
    let term = c.first.store().status().term;

    each_is_refused(&c, "the learner", learner.id(), &learner_cert, "is a learner").await;
    each_is_refused(&c, "the agent-only node", agent.id(), &agent_cert, "is an agent-only node").await;

    // Raft messages say why: the forged sender, the learner's role, the agent's certificate.
    let vote = forge::vote(term + 10, 1);
    for (cert, expected) in [
        (&learner_cert, "says it is from node 1".to_string()),
        (&agent_cert, format!("node {} is an agent-only node and may not send raft messages", agent.id())),
    ] {
        let quic = quic_client(&c.admin_conf.ca, Some(cert), DEFAULT_MAX_FRAME);
        let reply = quic.call(c.first.state().listen, "node-1.hsu", METHOD_VOTE, &vote, DEADLINE).await;
        assert!(matches!(&reply, Err(NetError::Remote(m)) if m.contains(&expected)), "{reply:?}");
        quic.shutdown().await;
    }
    let own = forge::vote(term + 10, learner.id());
    let quic = quic_client(&c.admin_conf.ca, Some(&learner_cert), DEFAULT_MAX_FRAME);
    let reply = quic.call(c.first.state().listen, "node-1.hsu", METHOD_VOTE, &own, DEADLINE).await;
    assert!(matches!(&reply, Err(NetError::Remote(m)) if m.contains("is a learner")), "{reply:?}");

    // Streams: a learner may not follow an agent's instance stream; an agent may not ask a
    // server for logs.
    let learner_watch = open_stream(&quic, &c, METHOD_WATCH, &[]).await;
    assert!(learner_watch.is_err_and(|e| e.contains("is a learner")), "a learner opened an instance stream");
    quic.shutdown().await;
    let agent_quic = quic_client(&c.admin_conf.ca, Some(&agent_cert), DEFAULT_MAX_FRAME);
    let ask = hsu::peer::LogAsk { unit: "x".into(), tail: 10, follow: false, stderr: false };
    let logs = open_stream(&agent_quic, &c, METHOD_LOGS, &hsu_model::encode_record(&ask).unwrap()).await;
    assert!(logs.is_err_and(|e| e.contains("agent-only node")), "an agent-only node asked for logs");

    // What the agent-only node is served from memory (its instance stream) never carries the
    // CA key, and neither node has the key on disk, the learner's replica of the store included.
    let marker = ca_key_marker(&c);
    let frames = open_stream(&agent_quic, &c, METHOD_WATCH, &[]).await.expect("an agent follows its instances");
    assert!(!frames.iter().any(|f| contains(f, &marker)), "the agent's instance stream carried the CA key");
    agent_quic.shutdown().await;
    for name in ["n-learner", "n-agent"] {
        assert_eq!(files_containing(&c.data_dir(name), &marker), Vec::<String>::new(), "{name} has the CA key");
    }
    assert!(!files_containing(&c.data_dir("n1"), &marker).is_empty(), "the check would find the key");

    // Nor does the learner promote itself through a voter's API: the voter forwards the
    // request in the learner's name, and the leader adds only nodes that are not members yet.
    let (mut api, _) = hsu_sdk::client::connect(&c.cert_conf(&learner_cert), None).await.expect("the learner connects");
    let asked = api.add_member(pb::AddMemberRequest { role: pb::Role::Voter as i32, target_voters: 3 }).await;
    let mut refused = None;
    if let Ok(stream) = asked {
        let mut stream = stream.into_inner();
        while let Some(item) = stream.message().await.transpose() {
            match item {
                Ok(p) => assert!(p.role.is_empty(), "the learner was added as {}", p.role),
                Err(s) => refused = Some(s),
            }
        }
    }
    let refused = refused.expect("the self-promotion ends with an error");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("already a learner"), "{refused:?}");

    // An agent-only node's certificate reads nothing through the API either.
    let (mut api, _) = hsu_sdk::client::connect(&c.cert_conf(&agent_cert), None).await.expect("a TLS connection");
    let status = api.status(pb::StatusRequest {}).await;
    assert!(matches!(&status, Err(s) if s.code() == tonic::Code::PermissionDenied), "{status:?}");
    let mut registry =
        hsu_sdk::client::connect_registry(&c.cert_conf(&agent_cert), None).await.expect("a TLS connection");
    let services = registry.list_services(pb::ListServicesRequest::default()).await;
    assert!(matches!(&services, Err(s) if s.code() == tonic::Code::PermissionDenied), "{services:?}");

    // Nothing changed: every key byte for byte, the term, the leader, the membership.
    assert_eq!(c.observe().await, before, "a refused request changed the cluster");
    let s = c.first.store().status();
    assert_eq!((s.term, s.leader), (term, Some(1)), "a refused raft message moved the term");

    // The voter's own certificate gets the same requests served: the table refused them, not
    // some other failure. Its range of the CA record holds the certificate and no key.
    let voter = quic_client(&c.admin_conf.ca, Some(&c.pki_of("n1").node), DEFAULT_MAX_FRAME);
    let range = PeerRequest::Range { range: KeyRange::Key(hsu_model::keys::CA.prefix().into()), limit: 0 };
    let reply = peer_call(&voter, &c.first, &range).await;
    let Ok(Ok(PeerReply::Range(r))) = reply else { panic!("the voter's range failed: {reply:?}") };
    assert_eq!(r.kvs.len(), 1, "the CA record is there");
    assert!(!contains(&r.kvs[0].value, &marker), "the CA record holds the CA key");
    let write = peer_call(&voter, &c.first, &put_request(b"/t60/voter", b"v".to_vec())).await;
    assert!(matches!(write, Ok(Ok(PeerReply::Response(_)))), "the voter's write failed: {write:?}");
    voter.shutdown().await;
    c.shutdown().await;
}

/// Opens a server stream to node 1 and reads its first frames: `Err` with the refusal, or the
/// frames received within a moment.
async fn open_stream(quic: &Endpoint, c: &TestCluster, method: u16, body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut rx = quic.stream(c.first.state().listen, "node-1.hsu", method, body).await.map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(Ok(frame))) => frames.push(frame),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) => return Err("the stream ended without a frame".into()),
        Err(_) => return Err("no frame within the deadline".into()),
    }
    Ok(frames)
}

/// Nodes that join as voters are not handed the CA key at enrollment; each fetches it from
/// another voter once it is one. When the first node (the only one that had the key from the
/// start) is gone, the new leader signs the next node's certificate with the key it fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_voters_fetch_the_ca_key_and_sign_joins_with_it() {
    let c = TestCluster::start().await;
    let token = c.join_token.clone();
    let mut voters = Vec::new();
    for name in ["n-v2", "n-v3"] {
        let opts = hsu::bootstrap::JoinOptions { role: pb::Role::Voter, ..c.join_options(name, &token) };
        voters.push(hsu::bootstrap::join(opts, |_| {}).await.expect("a voter joins"));
        let key = c.pki_of(name).ca_key_pem.expect("a new voter keeps the CA key in pki/ca.key");
        assert_eq!(Some(key), c.pki_of("n1").ca_key_pem, "the key is the cluster CA's");
    }

    // Node 1 goes; one of the new voters leads and enrolls the next node itself.
    c.first.shutdown().await;
    let leader = crate::cluster::poll("a new leader", || async {
        voters.iter().find(|v| v.store().status().leader == Some(v.id())).cloned()
    })
    .await;
    let opts =
        hsu::bootstrap::JoinOptions { server: leader.api_addr().to_string(), ..c.join_options("n-third", &token) };
    let third = hsu::bootstrap::join(opts, |_| {}).await.expect("a node joins through the new leader");
    assert!(c.pki_of("n-third").ca_key_pem.is_none(), "a learner got the CA key");
    third.shutdown().await;
    for v in voters {
        v.shutdown().await;
    }
    c.shutdown().await;
}
