//! Joining takes a valid join token of this cluster. A wrong secret, an unknown id, an expired,
//! revoked or used-up token is refused with a message that says which, and the refused attempt
//! enrolls nobody, uses up nothing and leaves no data directory behind. A token that pins another
//! CA makes the joining node stop at the TLS handshake, before its token leaves the machine.

use std::sync::Arc;
use std::time::Duration;

use hsu::bootstrap;
use hsu::NodeError;
use hsu_model::cluster::{ApiRole, TokenKind};
use hsu_net::pki::{server_config, ClusterCa};
use hsu_net::token::JoinToken;
use hsu_proto::v1 as pb;
use tokio::io::AsyncReadExt;

use crate::cluster::{free_tcp_addr, free_udp_addr, poll, tuning, TestCluster, DEADLINE};

/// Milliseconds since the Unix epoch, as token expiry times are kept.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970");
    u64::try_from(since.as_millis()).expect("a time before the year 584 million")
}

/// Runs a join that must be refused because of `reason`, and checks that it changed nothing.
async fn refused_join(c: &TestCluster, name: &str, token: &str, reason: &str) {
    let before = c.observe().await;
    let opts = c.join_options(name, token);
    let dir = opts.data_dir.clone();
    let err = match bootstrap::join(opts, |_| {}).await {
        Ok(node) => {
            node.shutdown().await;
            panic!("a join with a token that is {reason} was accepted");
        }
        Err(e) => e,
    };
    assert!(matches!(err, NodeError::Join(_)), "expected a refused join ({reason}), got {err:?}");
    assert!(err.to_string().contains(reason), "the error does not say {reason:?}: {err}");
    assert!(!dir.exists(), "the refused join left a data directory at {}", dir.display());
    assert_eq!(c.observe().await, before, "the refused join ({reason}) changed the cluster");
}

/// A 16-character secret that differs from `secret` in every position.
fn other_secret(secret: &str) -> String {
    secret.chars().map(|ch| if ch == 'a' { 'b' } else { 'a' }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_tokens_are_refused_and_change_nothing() {
    let mut c = TestCluster::start().await;
    let (mut admin, _) = c.admin().await;
    let init_token = JoinToken::parse(&c.join_token).expect("init's token parses");

    let wrong_secret = JoinToken { secret: other_secret(&init_token.secret), ..init_token.clone() };
    refused_join(&c, "n-wrong", &wrong_secret.to_string(), "wrong secret").await;
    let unknown_id = JoinToken { id: "zzzzzz".into(), ..init_token.clone() };
    assert_ne!(unknown_id.id, init_token.id);
    refused_join(&c, "n-unknown", &unknown_id.to_string(), "unknown token").await;

    // Uses are given to the expired and revoked tokens so that a refused attempt which still
    // counted a use would show in `uses_left`.
    let (expired, entry) = c
        .first
        .create_token(TokenKind::Join, ApiRole::Admin, Some(Duration::from_millis(1)), Some(5), "t20 expired".into())
        .await
        .expect("create a token with a tiny TTL");
    let expires_ms = entry.record.expires_ms.expect("a TTL gives an expiry");
    poll("the token's expiry to pass", || async { (now_ms() > expires_ms).then_some(()) }).await;
    refused_join(&c, "n-expired", &expired.to_string(), "expired").await;
    assert_eq!(c.observe().await.uses_left(&expired.id), Some(5));

    let (revoked, _) = c
        .first
        .create_token(TokenKind::Join, ApiRole::Admin, None, Some(5), "t20 revoked".into())
        .await
        .expect("create a token");
    c.first.revoke_token(&revoked.id).await.expect("revoke the token");
    refused_join(&c, "n-revoked", &revoked.to_string(), "revoked").await;
    assert_eq!(c.observe().await.uses_left(&revoked.id), Some(5));

    let once = admin
        .create_token(pb::CreateTokenRequest {
            kind: pb::TokenKind::Join as i32,
            uses: 1,
            description: "t20 single use".into(),
            ..Default::default()
        })
        .await
        .expect("create a single-use token through the API")
        .into_inner();
    let first = c.join("n-once", &once.token).await.expect("the first use of a single-use token joins");
    let after_first = c.observe().await;
    assert_eq!(after_first.uses_left(&once.id), Some(0));
    assert_eq!(after_first.role_of(first.id()), "learner");
    refused_join(&c, "n-twice", &once.token, "used up").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_for_another_ca_stops_the_join_before_the_token_is_sent() {
    let c = TestCluster::start().await;
    let (mut admin, _) = c.admin().await;
    let once = admin
        .create_token(pb::CreateTokenRequest {
            kind: pb::TokenKind::Join as i32,
            uses: 1,
            description: "t20 pinned elsewhere".into(),
            ..Default::default()
        })
        .await
        .expect("create a single-use token")
        .into_inner();
    // The id and secret are valid here; only the pinned CA is another one, as when a token is
    // used against the wrong address.
    let elsewhere = ClusterCa::generate("elsewhere").expect("a second CA");
    let token = JoinToken { ca_hash: elsewhere.fingerprint(), ..JoinToken::parse(&once.token).expect("it parses") };
    let before = c.observe().await;

    let opts = c.join_options("n-mismatch", &token.to_string());
    let dir = opts.data_dir.clone();
    let err = bootstrap::join(opts, |_| {}).await.err().expect("a join against another CA fails");
    let msg = err.to_string();
    assert!(msg.contains("CA does not match the token"), "the error does not name the CA mismatch: {msg}");
    // Had the token been sent, node 1 would have refused it with its own words for this case.
    assert!(!msg.contains("another cluster"), "the token reached the server: {msg}");
    assert!(!dir.exists(), "the stopped join left a data directory at {}", dir.display());
    let after = c.observe().await;
    assert_eq!(after.uses_left(&once.id), Some(1));
    assert_eq!(after, before, "the stopped join changed the cluster");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_against_an_impostor_sends_it_nothing() {
    // The impostor holds a well-formed node certificate of its own CA, so only the pin in the
    // token can tell it apart. It records whatever the joining node sends after the handshake.
    let impostor_ca = ClusterCa::generate("impostor").expect("the impostor's CA");
    let impostor_cert = impostor_ca.issue_node(1, 1).expect("the impostor's certificate");
    let tls = server_config(&impostor_cert, rustls::server::WebPkiClientVerifier::no_client_auth(), &[b"h2"])
        .expect("a server tls config");
    let listener = tokio::net::TcpListener::bind(free_tcp_addr()).await.expect("the impostor listens");
    let server = listener.local_addr().expect("its address");
    let impostor = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("the joining node connects");
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls)).accept(tcp).await.map_err(|e| e.to_string())?;
        let mut received = Vec::new();
        let _ = tls.read_to_end(&mut received).await;
        Ok::<_, String>(received)
    });

    let real_ca = ClusterCa::generate("real").expect("the cluster the token is for");
    let token = JoinToken::generate(real_ca.fingerprint()).expect("a token");
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("n-fooled");
    let opts = bootstrap::JoinOptions {
        server: server.to_string(),
        token: token.to_string(),
        data_dir: dir.clone(),
        listen: free_udp_addr(),
        api: free_tcp_addr(),
        name: Some("n-fooled".into()),
        role: pb::Role::Learner,
        voters: 3,
        tuning: tuning(),
    };
    let err = bootstrap::join(opts, |_| {}).await.err().expect("a join against an impostor fails");
    assert!(err.to_string().contains("CA does not match the token"), "unexpected error: {err}");
    assert!(!dir.exists(), "the stopped join left a data directory at {}", dir.display());

    let outcome = tokio::time::timeout(DEADLINE, impostor).await.expect("the impostor finishes").expect("no panic");
    assert!(outcome.is_err(), "the joining node completed a TLS session with the impostor: {outcome:?}");
}
