//! The node-to-node endpoint admits only nodes of its own cluster. A QUIC client without a
//! certificate, or with a certificate of another CA, gets no request through, and the cluster is
//! as it was. Each test ends by sending the same request with a certificate of the cluster, which
//! does write: the refusals are the endpoint's doing, not a request that could never work.

use hsu::peer::PeerReply;
use hsu_net::frame::DEFAULT_MAX_FRAME;
use hsu_net::pki::ClusterCa;
use hsu_net::quic::NetError;

use crate::cluster::{peer_call, put_request, quic_client, TestCluster};

/// Shows that a request refused by a client without the right certificate was a real write, by
/// sending it again with the certificate node 1 was enrolled with.
async fn same_request_as_a_member_writes(c: &TestCluster, key: &[u8]) {
    let pki = c.pki_of("n1");
    let member = quic_client(&pki.ca_pem, Some(&pki.node), DEFAULT_MAX_FRAME);
    let reply = peer_call(&member, &c.first, &put_request(key, b"written".to_vec())).await;
    assert!(matches!(reply, Ok(Ok(PeerReply::Response(_)))), "a member's write failed: {reply:?}");
    assert_eq!(c.value(key).await.as_deref(), Some(&b"written"[..]));
    member.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_client_certificate_is_refused() {
    let c = TestCluster::start().await;
    let key = b"/t10/anonymous";
    let before = c.observe().await;

    let anonymous = quic_client(&c.admin_conf.ca, None, DEFAULT_MAX_FRAME);
    let reply = peer_call(&anonymous, &c.first, &put_request(key, b"forged".to_vec())).await;
    // A `Remote` error would mean the request reached the handler: the refusal must come from
    // the connection itself.
    assert!(
        matches!(reply, Err(NetError::Connect { .. } | NetError::Tls(_))),
        "a peer without a certificate got an answer: {reply:?}"
    );
    anonymous.shutdown().await;

    assert_eq!(c.value(key).await, None);
    assert_eq!(c.observe().await, before, "the refused call changed the cluster");
    same_request_as_a_member_writes(&c, key).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_certificate_of_another_ca_is_refused() {
    let c = TestCluster::start().await;
    let key = b"/t10/foreign";
    let before = c.observe().await;

    // The foreign certificates claim node 1's own identity and an unused one: neither an
    // impersonation nor a new id gets in, because the chain does not lead to this cluster's CA.
    let rogue = ClusterCa::generate("rogue").expect("a second CA");
    for id in [1, 99] {
        let cert = rogue.issue_node(id, 1).expect("a node certificate of the rogue CA");
        let foreign = quic_client(&c.admin_conf.ca, Some(&cert), DEFAULT_MAX_FRAME);
        let reply = peer_call(&foreign, &c.first, &put_request(key, b"forged".to_vec())).await;
        assert!(
            matches!(reply, Err(NetError::Connect { .. } | NetError::Tls(_))),
            "a peer with a foreign certificate for node {id} got an answer: {reply:?}"
        );
        foreign.shutdown().await;
    }

    assert_eq!(c.value(key).await, None);
    assert_eq!(c.observe().await, before, "the refused calls changed the cluster");
    same_request_as_a_member_writes(&c, key).await;
    c.shutdown().await;
}
