//! The public API's limits and its answers to bad input, in gRPC's own terms: a message over the
//! size limit is RESOURCE_EXHAUSTED, one that does not decode INVALID_ARGUMENT, a key over 4 KiB
//! INVALID_ARGUMENT and a write over etcd's 1.5 MiB RESOURCE_EXHAUSTED; none changes anything.
//! A watch whose client went away is dropped by the node at once, not at the next change.

use hsu_proto::v1 as pb;
use tonic::Code;

use crate::cluster::{poll, TestCluster};

/// Field 1 of `PutRequest` is `bytes key`; sent as a varint it cannot decode.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAPut {
    #[prost(uint64, tag = "1")]
    key: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_grpc_codes_and_change_nothing() {
    let c = TestCluster::start().await;
    let (_, kv) = c.admin().await;
    let mut kv = kv.max_encoding_message_size(4 * hsu::limits::MAX_MESSAGE);
    let before = c.observe().await;

    let put = |key: Vec<u8>, value: Vec<u8>| pb::PutRequest { key, value, ..Default::default() };
    let long_key = kv.put(put(vec![b'k'; hsu::limits::MAX_KEY_BYTES + 1], b"v".to_vec())).await.unwrap_err();
    assert_eq!(long_key.code(), Code::InvalidArgument, "{long_key:?}");
    assert!(long_key.message().contains("key: 4097 bytes, at most 4096"), "{long_key:?}");
    let big = kv.put(put(b"/t55/big".to_vec(), vec![b'x'; hsu::limits::MAX_REQUEST_BYTES])).await.unwrap_err();
    assert_eq!(big.code(), Code::ResourceExhausted, "{big:?}");
    let huge = kv.put(put(b"/t55/huge".to_vec(), vec![b'x'; hsu::limits::MAX_MESSAGE + 1024])).await.unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "a message over the gRPC limit: {huge:?}");

    // A message of another shape on the Put method does not decode.
    let (channel, _) = hsu_sdk::client::connect_channel(&c.admin_conf, None).await.expect("a channel");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/hsu.v1.KV/Put");
    let codec = tonic_prost::ProstCodec::<NotAPut, pb::PutResponse>::default();
    let undecodable = grpc.unary(tonic::Request::new(NotAPut { key: 7 }), path, codec).await.unwrap_err();
    assert_eq!(undecodable.code(), Code::InvalidArgument, "{undecodable:?}");

    assert_eq!(c.observe().await, before, "a refused request changed the cluster");
    // Within the limits, both work.
    kv.put(put(vec![b'k'; hsu::limits::MAX_KEY_BYTES], b"v".to_vec())).await.expect("a 4 KiB key");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_client_went_away_is_dropped() {
    let c = TestCluster::start().await;
    let baseline = c.first.store().watchers();
    let (_, mut kv) = c.admin().await;
    let watch = pb::WatchRequest { key: b"/t55/quiet".to_vec(), ..Default::default() };
    let stream = kv.watch(watch).await.expect("a watch").into_inner();
    poll("the watch to be open on the node", || async { (c.first.store().watchers() > baseline).then_some(()) }).await;
    // The client goes; nothing is ever written under the key.
    drop(stream);
    drop(kv);
    poll("the node to drop the watch", || async { (c.first.store().watchers() <= baseline).then_some(()) }).await;
    c.shutdown().await;
}

/// A client that numbers its writes (`hsu-request-id`) may send one again after a timeout: the
/// second attempt gets the first one's answer, and the key is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_retry_with_its_request_id_is_answered_not_applied_again() {
    let c = TestCluster::start().await;
    let (_, mut kv) = c.admin().await;
    let attempt = |n: u32, value: &[u8]| {
        let mut req = tonic::Request::new(pb::PutRequest {
            key: b"/t55/once".to_vec(),
            value: value.to_vec(),
            ..Default::default()
        });
        req.metadata_mut().insert(hsu::limits::REQUEST_ID_KEY, "4242.1".parse().unwrap());
        req.metadata_mut().insert(hsu::limits::ATTEMPT_KEY, n.to_string().parse().unwrap());
        req
    };
    let first = kv.put(attempt(1, b"first")).await.expect("the first attempt").into_inner();
    // The "retry" carries another value: had it been applied, the key would hold it.
    let again = kv.put(attempt(2, b"second")).await.expect("the retry").into_inner();
    assert_eq!(again.header.map(|h| h.revision), first.header.map(|h| h.revision), "the first answer again");
    assert_eq!(c.api_value(b"/t55/once").await.as_deref(), Some(&b"first"[..]), "applied once");

    // A malformed id is refused before anything happens.
    let mut bad = tonic::Request::new(pb::PutRequest { key: b"/t55/bad".to_vec(), ..Default::default() });
    bad.metadata_mut().insert(hsu::limits::REQUEST_ID_KEY, "0.x".parse().unwrap());
    let refused = kv.put(bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(c.api_value(b"/t55/bad").await, None);
    c.shutdown().await;
}
