//! Input over a node's size limits is refused without harming the node: a gRPC message over
//! `MAX_MESSAGE`, and a QUIC request frame over the endpoint's maximum sent by a genuine member
//! of the cluster. Neither reaches the store, and the node serves normal requests afterwards.

use hsu::peer::PeerReply;
use hsu_net::frame::DEFAULT_MAX_FRAME;
use hsu_net::quic::NetError;
use hsu_proto::v1 as pb;
use tonic::Code;

use crate::cluster::{peer_call, put_request, quic_client, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_message_over_the_limit_is_refused_and_the_node_keeps_serving() {
    let c = TestCluster::start().await;
    let (mut cluster, kv) = c.admin().await;
    // The client's own limit is lifted so that the message really reaches the node, which must
    // then enforce its limit itself.
    let mut kv = kv.max_encoding_message_size(4 * hsu::limits::MAX_MESSAGE);
    let before = c.observe().await;

    let big = pb::PutRequest {
        key: b"/t50/big".to_vec(),
        value: vec![b'x'; hsu::limits::MAX_MESSAGE + 1024],
        ..Default::default()
    };
    let refused = kv.put(big).await;
    assert!(
        matches!(&refused, Err(s) if s.code() == Code::ResourceExhausted),
        "a {} byte message was not refused for its size: {refused:?}",
        hsu::limits::MAX_MESSAGE + 1024
    );
    assert_eq!(c.api_value(b"/t50/big").await, None);
    assert_eq!(c.observe().await, before, "the refused message changed the cluster");

    cluster.status(pb::StatusRequest {}).await.expect("the node still answers Status");
    let small = pb::PutRequest { key: b"/t50/small".to_vec(), value: b"fine".to_vec(), ..Default::default() };
    kv.put(small).await.expect("the node still takes a normal put");
    assert_eq!(c.api_value(b"/t50/small").await.as_deref(), Some(&b"fine"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_frame_over_the_limit_is_refused_and_the_node_keeps_serving() {
    let c = TestCluster::start().await;
    // A genuine member's certificate, so that the size limit is the only thing that can refuse
    // the request.
    let pki = c.pki_of("n1");
    let member = pki.node.clone();
    // The client's own limit is twice the node's, so the frame leaves the client and the refusal
    // has to come from the node.
    let endpoint = quic_client(&pki.ca_pem, Some(&member), 2 * DEFAULT_MAX_FRAME);
    let before = c.observe().await;

    // The oversized request is a valid write, so only the limit stands between it and the store.
    let huge = put_request(b"/t50/huge", vec![b'x'; DEFAULT_MAX_FRAME + (1 << 20)]);
    let body_len = hsu_model::encode_record(&huge).expect("it encodes").len();
    let refused = peer_call(&endpoint, &c.first, &huge).await;
    match refused {
        Err(NetError::FrameTooLarge { declared, max }) => {
            assert_eq!(max, DEFAULT_MAX_FRAME, "the limit reported is not the node's");
            // The request frame is the body behind a three-byte head (kind and method).
            assert_eq!(declared, body_len + 3);
        }
        other => panic!("an oversized frame was not refused for its size: {other:?}"),
    }
    assert_eq!(c.value(b"/t50/huge").await, None);
    assert_eq!(c.observe().await, before, "the refused frame changed the cluster");

    // The same endpoint, connection and node go on serving normal requests.
    let reply = peer_call(&endpoint, &c.first, &put_request(b"/t50/after", b"fine".to_vec())).await;
    assert!(matches!(reply, Ok(Ok(PeerReply::Response(_)))), "a normal request after the refusal failed: {reply:?}");
    assert_eq!(c.value(b"/t50/after").await.as_deref(), Some(&b"fine"[..]));
    let (mut cluster, _) = c.admin().await;
    cluster.status(pb::StatusRequest {}).await.expect("the node still answers Status");
    endpoint.shutdown().await;
    c.shutdown().await;
}
