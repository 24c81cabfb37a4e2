//! `RemoveNode` revokes the node's certificate: afterwards it opens no QUIC or gRPC connection to
//! the cluster, and connections it opened while it was a member stop serving it too, since a
//! removed node that is still running keeps those open. The other nodes' certificates keep
//! working, and nothing the removed certificate tried reached the store.

use hsu::peer::{PeerReply, PeerRequest};
use hsu_net::frame::DEFAULT_MAX_FRAME;
use hsu_net::quic::NetError;
use hsu_proto::v1 as pb;
use hsu_sdk::client;

use crate::cluster::{peer_call, put_request, quic_client, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_certificate_is_refused() {
    let mut c = TestCluster::start().await;
    let token = c.join_token.clone();
    let gone = c.join("n-gone", &token).await.expect("n-gone joins");
    let gone_pki = c.pki_of("n-gone");
    let first_pki = c.pki_of("n1");
    let key = b"/t30/after-removal";

    // Connections opened while n-gone is a member, and proof that its certificate works on both.
    let quic_before = quic_client(&gone_pki.ca_pem, Some(&gone_pki.node), DEFAULT_MAX_FRAME);
    let health = peer_call(&quic_before, &c.first, &PeerRequest::Health).await;
    assert!(matches!(health, Ok(Ok(PeerReply::Health(_)))), "a member's QUIC call failed: {health:?}");
    let (mut grpc_before, _) =
        client::connect(&c.cert_conf(&gone_pki.node), None).await.expect("a member's certificate connects");
    grpc_before.status(pb::StatusRequest {}).await.expect("a member's certificate may read the status");

    let (mut admin, _) = c.admin().await;
    admin.remove_node(pb::RemoveNodeRequest { id: gone.id() }).await.expect("the admin removes n-gone");
    let before = c.observe().await;
    assert_eq!(before.role_of(gone.id()), "removed");

    // (a) A new QUIC connection with the removed certificate fails at the handshake, so the
    // request never reaches a handler.
    let quic_after = quic_client(&gone_pki.ca_pem, Some(&gone_pki.node), DEFAULT_MAX_FRAME);
    let reply = peer_call(&quic_after, &c.first, &put_request(key, b"forged".to_vec())).await;
    assert!(
        matches!(reply, Err(NetError::Revoked { .. })),
        "a new QUIC connection with a removed certificate got an answer: {reply:?}"
    );
    quic_after.shutdown().await;

    // The QUIC connection opened before the removal is still up (keep-alives hold it open), but
    // carries no more requests: the node closes it as revoked on the next one.
    let reply = peer_call(&quic_before, &c.first, &put_request(key, b"forged".to_vec())).await;
    assert!(
        matches!(&reply, Err(NetError::Revoked { .. })),
        "a connection of a removed node still carries requests: {reply:?}"
    );
    quic_before.shutdown().await;

    // (b) A new gRPC connection with the removed certificate is refused at the TLS handshake;
    // with TLS 1.3 the client may only learn of it on its first call.
    let fresh = match client::connect(&c.cert_conf(&gone_pki.node), None).await {
        Err(e) => Err(e.to_string()),
        Ok((mut cluster, _)) => cluster.status(pb::StatusRequest {}).await.map_err(|s| format!("{s:?}")),
    };
    assert!(fresh.is_err(), "a removed certificate opened a new API connection: {fresh:?}");

    // The gRPC connection opened before the removal no longer serves the removed node either.
    let old = grpc_before.status(pb::StatusRequest {}).await;
    assert!(
        matches!(&old, Err(s) if s.code() == tonic::Code::Unauthenticated),
        "a removed node's open API connection still reads the status: {old:?}"
    );

    // The certificate of a node that was not removed still works on both endpoints.
    let (mut member, _) = client::connect(&c.cert_conf(&first_pki.node), None).await.expect("node 1's cert connects");
    let status = member.status(pb::StatusRequest {}).await.expect("node 1's certificate may read the status");
    assert_eq!(status.into_inner().leader_id, c.first.id());
    let member_quic = quic_client(&first_pki.ca_pem, Some(&first_pki.node), DEFAULT_MAX_FRAME);
    let health = peer_call(&member_quic, &c.first, &PeerRequest::Health).await;
    assert!(matches!(health, Ok(Ok(PeerReply::Health(_)))), "node 1's QUIC call failed: {health:?}");
    member_quic.shutdown().await;

    assert_eq!(c.value(key).await, None);
    assert_eq!(c.observe().await, before, "the removed node's attempts changed the cluster");
    c.shutdown().await;
}

/// A voter holds the CA key, so a removed voter that kept a copy can mint certificates: for an
/// id nobody has, for its own id, or for another node's id. None of them is the certificate the
/// cluster enrolled for that id, so none gets a request through, on either endpoint. (The
/// copy here is node 1's, the only voter: what a voter that was removed would still have.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_minted_with_the_ca_key_are_refused() {
    let mut c = TestCluster::start().await;
    let token = c.join_token.clone();
    let gone = c.join("n-minter", &token).await.expect("n-minter joins");
    let gone_pki = c.pki_of("n-minter");
    assert!(gone_pki.ca_key_pem.is_none(), "a learner was given the CA key");
    let ca_key = c.pki_of("n1").ca_key_pem.clone().expect("the first voter holds the CA key");
    let ca = hsu_net::pki::ClusterCa::from_pem(&gone_pki.ca_pem, &ca_key).expect("the CA loads");
    let (mut admin, _) = c.admin().await;
    admin.remove_node(pb::RemoveNodeRequest { id: gone.id() }).await.expect("the admin removes n-minter");
    let before = c.observe().await;
    let key = b"/t30/minted";

    for id in [99, gone.id(), c.first.id()] {
        let minted = ca.issue_node(id, 1).expect("the CA key mints a certificate");
        let quic = quic_client(&gone_pki.ca_pem, Some(&minted), DEFAULT_MAX_FRAME);
        let reply = peer_call(&quic, &c.first, &put_request(key, b"forged".to_vec())).await;
        assert!(!matches!(reply, Ok(Ok(_))), "a certificate minted for node {id} wrote: {reply:?}");
        quic.shutdown().await;
        let api = client::connect(&c.cert_conf(&minted), None).await;
        if let Ok((mut cluster, _)) = api {
            let status = cluster.status(pb::StatusRequest {}).await;
            assert!(status.is_err(), "a certificate minted for node {id} read the status");
        }
    }
    assert_eq!(c.value(key).await, None);
    assert_eq!(c.observe().await, before, "the minted certificates changed the cluster");
    c.shutdown().await;
}
