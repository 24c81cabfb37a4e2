//! The public API serves only authenticated callers, each within its role. A caller without
//! credentials, with a token the cluster never issued, or with a join token as its bearer token,
//! is `Unauthenticated` (the registry's calls too); a read-only API token reads (services too) but
//! every write is `PermissionDenied`; and
//! none of the refused calls changes the store.

use hsu_net::token::JoinToken;
use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig};
use tonic::Code;

use crate::cluster::TestCluster;

fn put(key: &[u8], value: &[u8]) -> pb::PutRequest {
    pb::PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() }
}

fn get(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest { key: key.to_vec(), ..Default::default() }
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("the call succeeded: {v:?}"),
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_valid_credentials_are_unauthenticated() {
    let c = TestCluster::start().await;
    let key = b"/t40/anonymous";
    let before = c.observe().await;

    let anonymous = c.anonymous_conf();
    let never_issued = JoinToken::generate(c.first.ca_fingerprint()).expect("a token").to_string();
    let callers = [
        ("no credentials", anonymous.clone()),
        ("a token the cluster never issued", ClientConfig { token: Some(never_issued), ..anonymous.clone() }),
        ("a join token as bearer", ClientConfig { token: Some(c.join_token.clone()), ..anonymous.clone() }),
    ];
    for (who, conf) in callers {
        // TLS without a client certificate is allowed (bearer tokens travel over it), so the
        // connection opens and each call is refused by the service.
        let (mut cluster, mut kv) = client::connect(&conf, None).await.expect("the API accepts TLS without a cert");
        let refusal = cluster.status(pb::StatusRequest {}).await.expect_err("status without credentials");
        assert_eq!(refusal.code(), Code::Unauthenticated, "status with {who}");
        if conf.token.is_some() {
            // A bearer credential is an API token; the error says so (it used to say "join token").
            let msg = refusal.message();
            assert!(msg.starts_with("API token refused: "), "{who}: {msg}");
            assert!(!msg.contains("malformed join token") && !msg.contains("unknown join token"), "{who}: {msg}");
        }
        assert_eq!(
            code(kv.range(get(hsu_model::keys::CA.prefix().as_bytes())).await),
            Code::Unauthenticated,
            "range with {who}"
        );
        assert_eq!(code(kv.put(put(key, b"forged")).await), Code::Unauthenticated, "put with {who}");
        let token = pb::CreateTokenRequest { kind: pb::TokenKind::Api as i32, ..Default::default() };
        assert_eq!(code(cluster.create_token(token).await), Code::Unauthenticated, "create a token with {who}");
        let mut registry = client::connect_registry(&conf, None).await.expect("a TLS connection");
        let list = registry.list_services(pb::ListServicesRequest::default()).await;
        assert_eq!(code(list), Code::Unauthenticated, "list services with {who}");
        let web = pb::ServiceRequest { namespace: String::new(), name: "web".into() };
        assert_eq!(code(registry.resolve(web.clone()).await), Code::Unauthenticated, "resolve with {who}");
        assert_eq!(code(registry.watch(web).await), Code::Unauthenticated, "watch with {who}");
    }

    assert_eq!(c.api_value(key).await, None);
    assert_eq!(c.observe().await, before, "the refused calls changed the cluster");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token_reads_but_cannot_write() {
    let c = TestCluster::start().await;
    let key = b"/t40/read-only";
    let (mut admin, mut admin_kv) = c.admin().await;
    admin_kv.put(put(key, b"original")).await.expect("the admin writes");
    let read_only = admin
        .create_token(pb::CreateTokenRequest {
            kind: pb::TokenKind::Api as i32,
            role: pb::ApiRole::ReadOnly as i32,
            description: "t40 read-only".into(),
            ..Default::default()
        })
        .await
        .expect("the admin creates a read-only API token")
        .into_inner();
    let conf = ClientConfig { token: Some(read_only.token.clone()), ..c.anonymous_conf() };
    let (mut cluster, mut kv) = client::connect(&conf, None).await.expect("a token client connects");

    let got = kv.range(get(key)).await.expect("a read-only token may range").into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"original");
    cluster.status(pb::StatusRequest {}).await.expect("a read-only token may read the status");
    let mut registry = client::connect_registry(&conf, None).await.expect("a token client connects");
    registry.list_services(pb::ListServicesRequest::default()).await.expect("a read-only token may list services");
    let missing = registry.resolve(pb::ServiceRequest { namespace: String::new(), name: "web".into() }).await;
    assert_eq!(code(missing), Code::NotFound, "a service nobody provides");

    let before = c.observe().await;
    assert_eq!(code(kv.put(put(key, b"changed")).await), Code::PermissionDenied, "put");
    let delete = pb::DeleteRequest { key: key.to_vec(), ..Default::default() };
    assert_eq!(code(kv.delete(delete).await), Code::PermissionDenied, "delete");
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp { request: Some(pb::request_op::Request::Put(put(key, b"changed"))) }],
        ..Default::default()
    };
    assert_eq!(code(kv.txn(txn).await), Code::PermissionDenied, "a transaction that writes");
    let token = pb::CreateTokenRequest { kind: pb::TokenKind::Join as i32, ..Default::default() };
    assert_eq!(code(cluster.create_token(token).await), Code::PermissionDenied, "create a join token");
    assert_eq!(code(cluster.list_tokens(pb::ListTokensRequest {}).await), Code::PermissionDenied, "list tokens");
    let remove = pb::RemoveNodeRequest { id: c.first.id() };
    assert_eq!(code(cluster.remove_node(remove).await), Code::PermissionDenied, "remove a node");
    assert_eq!(c.api_value(key).await.as_deref(), Some(&b"original"[..]));
    assert_eq!(c.observe().await, before, "the refused writes changed the cluster");

    // Revoking the token ends its reads at once, on the connection it already has.
    admin.revoke_token(pb::RevokeTokenRequest { id: read_only.id }).await.expect("the admin revokes the token");
    assert_eq!(code(kv.range(get(key)).await), Code::Unauthenticated, "range with a revoked token");
    c.shutdown().await;
}
