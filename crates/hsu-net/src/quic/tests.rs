//! Tests of the QUIC transport: mutual TLS, calls, streams, limits and revocation.

use super::*;

use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::sync::oneshot;

const ECHO: u16 = 1;
const FAIL: u16 = 2;
const SLOW: u16 = 3;
const BIG: u16 = 4;
const COUNT: u16 = 10;
const REFUSE: u16 = 11;

/// Upper bound for anything a test waits on, so a broken build fails instead of hanging.
const LONG: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throw-away certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

/// An end-entity certificate and its key.
struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        Self { issuer: Issuer::new(params, key), roots: Arc::new(roots) }
    }

    /// A certificate for `dns_name`, usable both as a server and as a client certificate (a
    /// node is both).
    fn issue(&self, dns_name: &str) -> Identity {
        let mut params = CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity { cert: cert.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()).into() }
    }
}

/// Server TLS presenting `id` and requiring client certificates issued by `client_ca`.
fn server_tls(client_ca: &Ca, id: &Identity) -> rustls::ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(client_ca.roots.clone(), provider()).build().unwrap();
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .unwrap()
}

/// Client TLS trusting `server_ca`, presenting `id` if given.
fn client_tls(server_ca: &Ca, id: Option<&Identity>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(server_ca.roots.clone());
    match id {
        Some(id) => builder.with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// The cluster: one CA, node-1 serves, node-2 calls.
struct Net {
    ca: Ca,
    node1: Identity,
    node2: Identity,
}

impl Net {
    fn new() -> Self {
        let ca = Ca::new("hsu test cluster");
        let node1 = ca.issue("node-1.hsu");
        let node2 = ca.issue("node-2.hsu");
        Self { ca, node1, node2 }
    }

    /// node-1 serving on `addr`.
    fn serve_at<H: Handler>(
        &self,
        addr: SocketAddr,
        handler: Arc<H>,
        cfg: EndpointConfig,
    ) -> Result<Endpoint, NetError> {
        Endpoint::bind(addr, server_tls(&self.ca, &self.node1), client_tls(&self.ca, Some(&self.node1)), handler, cfg)
    }

    fn serve<H: Handler>(&self, handler: Arc<H>, cfg: EndpointConfig) -> Endpoint {
        self.serve_at(localhost(), handler, cfg).unwrap()
    }

    /// node-2 as a client-only endpoint.
    fn client(&self, cfg: EndpointConfig) -> Endpoint {
        Endpoint::client_on(localhost(), client_tls(&self.ca, Some(&self.node2)), cfg).unwrap()
    }
}

/// Sends `()` when dropped: tells a test that a handler future was cancelled.
struct FireOnDrop(Option<oneshot::Sender<()>>);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Default)]
struct TestHandler {
    calls: AtomicUsize,
    peers: Mutex<Vec<Peer>>,
    /// Fired when a SLOW call is dropped.
    slow_cancelled: Mutex<Option<oneshot::Sender<()>>>,
    /// Fired with the item count when a COUNT producer finds its consumer gone.
    producer_stopped: Mutex<Option<oneshot::Sender<u32>>>,
}

impl TestHandler {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn be_u32(body: &[u8]) -> Result<u32, String> {
    let word: [u8; 4] = body.try_into().map_err(|_| format!("expected a 4-byte body, got {} bytes", body.len()))?;
    Ok(u32::from_be_bytes(word))
}

impl Handler for TestHandler {
    async fn call(&self, peer: Peer, method: u16, body: Vec<u8>) -> Result<Vec<u8>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.peers.lock().unwrap().push(peer);
        match method {
            ECHO => Ok(body),
            FAIL => Err(format!("no such job: {}", String::from_utf8_lossy(&body))),
            SLOW => {
                let tx = self.slow_cancelled.lock().unwrap().take();
                let _cancelled = FireOnDrop(tx);
                std::future::pending().await
            }
            BIG => Ok(vec![7; be_u32(&body)? as usize]),
            other => Err(format!("unknown method {other}")),
        }
    }

    async fn stream(&self, _peer: Peer, method: u16, body: Vec<u8>) -> Result<mpsc::Receiver<Vec<u8>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if method != COUNT {
            return Err(format!("stream refused: method {method}"));
        }
        let n = be_u32(&body)?;
        let stopped = self.producer_stopped.lock().unwrap().take();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for i in 0..n {
                if tx.send(i.to_be_bytes().to_vec()).await.is_err() {
                    if let Some(stopped) = stopped {
                        let _ = stopped.send(i);
                    }
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Uses the default `stream`.
struct EchoOnly;

impl Handler for EchoOnly {
    async fn call(&self, _peer: Peer, _method: u16, body: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(body)
    }
}

/// Binds with `bind` until the port is free. quinn releases a closed endpoint's socket from its
/// driver task, which has no completion event to await, so poll (bounded).
async fn bind_when_free(mut bind: impl FnMut() -> Result<Endpoint, NetError>) -> Endpoint {
    for _ in 0..200 {
        match bind() {
            Ok(endpoint) => return endpoint,
            Err(NetError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("unexpected bind error: {e}"),
        }
    }
    panic!("port not released within 2 s");
}

/// A server on its own single-threaded runtime, so it can be killed without running any of its
/// shutdown code: as with a crashed process, nothing tells its clients.
struct CrashableServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl CrashableServer {
    async fn start(net: &Net, handler: Arc<TestHandler>, cfg: EndpointConfig) -> Self {
        let server = server_tls(&net.ca, &net.node1);
        let client = client_tls(&net.ca, Some(&net.node1));
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let endpoint = rt.block_on(async { Endpoint::bind(localhost(), server, client, handler, cfg) }).unwrap();
            let _ = addr_tx.send(endpoint.local_addr());
            rt.block_on(async {
                let _ = stop_rx.await;
            });
            // A current-thread runtime runs nothing outside `block_on`: the close that dropping
            // the endpoint queues is never sent, and dropping the runtime drops every task
            // (and with them the socket) unpolled.
            drop(endpoint);
            drop(rt);
        });
        let addr = tokio::time::timeout(LONG, addr_rx).await.unwrap().unwrap();
        Self { addr, stop, thread }
    }

    async fn crash(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_sees_client_cert_and_shares_one_connection() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let addr = server.local_addr();

    let client = net.client(EndpointConfig::default());
    let reply = client.call(addr, "node-1.hsu", ECHO, b"hello", LONG).await.unwrap();
    assert_eq!(reply, b"hello");
    {
        let peers = handler.peers.lock().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].cert_der, net.node2.cert.as_ref());
        assert_eq!(peers[0].addr, client.local_addr());
    }

    // 100 concurrent first calls from a fresh endpoint race to dial; they must share one
    // connection.
    let fresh = net.client(EndpointConfig::default());
    let mut calls = JoinSet::new();
    for i in 0..100u32 {
        let fresh = fresh.clone();
        calls.spawn(async move {
            let reply = fresh.call(addr, "node-1.hsu", ECHO, &i.to_be_bytes(), LONG).await;
            (i, reply)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (i, reply) = done.unwrap();
        assert_eq!(reply.unwrap(), i.to_be_bytes(), "call {i}");
    }
    assert_eq!(handler.calls(), 101);
    assert_eq!(fresh.stats().dialled, 1);
    assert_eq!(client.stats().dialled, 1);
    assert_eq!(server.stats().accepted, 2);
    let remote_ports: std::collections::HashSet<u16> =
        handler.peers.lock().unwrap().iter().filter(|p| p.addr != client.local_addr()).map(|p| p.addr.port()).collect();
    assert_eq!(remote_ports.len(), 1);

    // Forgetting the peer makes the next call dial again.
    fresh.forget(addr);
    fresh.call(addr, "node-1.hsu", ECHO, b"again", LONG).await.unwrap();
    assert_eq!(fresh.stats().dialled, 2);

    fresh.shutdown().await;
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn handler_error_comes_back_as_remote() {
    let net = Net::new();
    let server = net.serve(Arc::new(TestHandler::default()), EndpointConfig::default());
    let client = net.client(EndpointConfig::default());
    let err = client.call(server.local_addr(), "node-1.hsu", FAIL, b"42", LONG).await.unwrap_err();
    match err {
        NetError::Remote(msg) => assert_eq!(msg, "no such job: 42"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let anonymous = Endpoint::client_on(localhost(), client_tls(&net.ca, None), EndpointConfig::default()).unwrap();
    let err = anonymous.call(server.local_addr(), "node-1.hsu", ECHO, b"hi", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Tls(_)), "{err:?}");
    assert_eq!(handler.calls(), 0);
    assert_eq!(server.stats().accepted, 0);
    anonymous.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn certificate_is_required_even_if_the_tls_config_does_not() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let lax = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![net.node1.cert.clone()], net.node1.key.clone_key())
        .unwrap();
    let server = Endpoint::bind(
        localhost(),
        lax,
        client_tls(&net.ca, Some(&net.node1)),
        handler.clone(),
        EndpointConfig::default(),
    )
    .unwrap();
    let anonymous = Endpoint::client_on(localhost(), client_tls(&net.ca, None), EndpointConfig::default()).unwrap();
    let err = anonymous.call(server.local_addr(), "node-1.hsu", ECHO, b"hi", LONG).await.unwrap_err();
    match &err {
        NetError::Tls(msg) => assert!(msg.contains("client certificate"), "{msg}"),
        other => panic!("expected a tls error, got {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    assert_eq!(server.stats().accepted, 0);
    anonymous.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let net = Net::new();
    let rogue = Ca::new("rogue").issue("node-2.hsu");
    let handler = Arc::new(TestHandler::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let client =
        Endpoint::client_on(localhost(), client_tls(&net.ca, Some(&rogue)), EndpointConfig::default()).unwrap();
    let err = client.call(server.local_addr(), "node-1.hsu", ECHO, b"hi", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Tls(_)), "{err:?}");
    assert_eq!(handler.calls(), 0);
    assert_eq!(server.stats().accepted, 0);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() {
    let net = Net::new();
    let rogue = Ca::new("rogue").issue("node-1.hsu");
    let handler = Arc::new(TestHandler::default());
    let server = Endpoint::bind(
        localhost(),
        server_tls(&net.ca, &rogue),
        client_tls(&net.ca, Some(&rogue)),
        handler.clone(),
        EndpointConfig::default(),
    )
    .unwrap();
    let client = net.client(EndpointConfig::default());
    let err = client.call(server.local_addr(), "node-1.hsu", ECHO, b"hi", LONG).await.unwrap_err();
    match &err {
        NetError::Tls(msg) => assert!(msg.contains("UnknownIssuer"), "{msg}"),
        other => panic!("expected a tls error, got {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_server_name_is_refused() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    // This server holds node-2's certificate.
    let server = Endpoint::bind(
        localhost(),
        server_tls(&net.ca, &net.node2),
        client_tls(&net.ca, Some(&net.node2)),
        handler.clone(),
        EndpointConfig::default(),
    )
    .unwrap();
    let addr = server.local_addr();
    let client =
        Endpoint::client_on(localhost(), client_tls(&net.ca, Some(&net.node1)), EndpointConfig::default()).unwrap();
    let err = client.call(addr, "node-1.hsu", ECHO, b"hi", LONG).await.unwrap_err();
    match &err {
        NetError::Tls(msg) => assert!(msg.contains("not valid for name"), "{msg}"),
        other => panic!("expected a tls error, got {other:?}"),
    }
    assert_eq!(handler.calls(), 0);
    // The right name works on the same endpoint.
    let reply = client.call(addr, "node-2.hsu", ECHO, b"hi", LONG).await.unwrap();
    assert_eq!(reply, b"hi");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_are_refused_and_the_connection_survives() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let small_cfg = EndpointConfig { max_frame: 1024, ..EndpointConfig::default() };
    let strict = net.serve(handler.clone(), small_cfg.clone());
    let addr = strict.local_addr();
    let client = net.client(EndpointConfig::default());

    // Fits the send buffer: the server rejects it after reading the header only.
    let err = client.call(addr, "node-1.hsu", ECHO, &[1u8; 4096], LONG).await.unwrap_err();
    assert!(matches!(err, NetError::FrameTooLarge { declared: 4099, max: 1024 }), "{err:?}");
    // Far beyond the flow-control window: the server's stop must unblock the writer.
    let huge = vec![2u8; 8 << 20];
    let err = client.call(addr, "node-1.hsu", ECHO, &huge, LONG).await.unwrap_err();
    assert!(matches!(err, NetError::FrameTooLarge { declared, max: 1024 } if declared == huge.len() + 3), "{err:?}");
    let reply = client.call(addr, "node-1.hsu", ECHO, b"small", LONG).await.unwrap();
    assert_eq!(reply, b"small");
    assert_eq!(handler.calls(), 1, "the handler must never see oversized requests");
    assert_eq!(client.stats().dialled, 1, "the connection must survive");

    // A reply over the server's own limit is replaced by an error that says the request ran.
    let err = client.call(addr, "node-1.hsu", BIG, &2000u32.to_be_bytes(), LONG).await.unwrap_err();
    assert!(matches!(err, NetError::ReplyTooLarge { declared: 2001, max: 1024 }), "{err:?}");

    // The caller's limits: a request over them is refused without dialling, a reply over them
    // is refused after its header.
    let lax = net.serve(handler.clone(), EndpointConfig::default());
    let small_client = net.client(small_cfg);
    let err = small_client.call(lax.local_addr(), "node-1.hsu", ECHO, &[0u8; 2000], LONG).await.unwrap_err();
    assert!(matches!(err, NetError::FrameTooLarge { declared: 2003, max: 1024 }), "{err:?}");
    assert_eq!(small_client.stats().dialled, 0);
    let err = small_client.call(lax.local_addr(), "node-1.hsu", BIG, &2000u32.to_be_bytes(), LONG).await.unwrap_err();
    assert!(matches!(err, NetError::ReplyTooLarge { declared: 2001, max: 1024 }), "{err:?}");
    let reply = small_client.call(lax.local_addr(), "node-1.hsu", ECHO, b"ok", LONG).await.unwrap();
    assert_eq!(reply, b"ok");
    assert_eq!(small_client.stats().dialled, 1);

    for endpoint in [client, small_client, strict, lax] {
        endpoint.shutdown().await;
    }
}

#[tokio::test]
async fn server_shutdown_and_restart_on_the_same_port() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let addr = server.local_addr();
    let client = net.client(EndpointConfig::default());
    client.call(addr, "node-1.hsu", ECHO, b"before", LONG).await.unwrap();

    server.shutdown().await;
    let err = server.call(addr, "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Closed), "{err:?}");
    drop(server);

    let restarted = bind_when_free(|| net.serve_at(addr, handler.clone(), EndpointConfig::default())).await;
    // The old connection was closed by the server; the call dials a new one.
    let reply = client.call(addr, "node-1.hsu", ECHO, b"after", LONG).await.unwrap();
    assert_eq!(reply, b"after");
    assert_eq!(client.stats().dialled, 2);
    assert_eq!(restarted.stats().accepted, 1);
    client.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn crashed_server_with_stable_reset_key_is_redialled_transparently() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let cfg = EndpointConfig { stateless_reset_key: Some([42; 32]), ..EndpointConfig::default() };
    let old = CrashableServer::start(&net, handler.clone(), cfg.clone()).await;
    let addr = old.addr;
    let client = net.client(EndpointConfig::default());
    client.call(addr, "node-1.hsu", ECHO, b"before", LONG).await.unwrap();

    old.crash().await;
    let restarted = bind_when_free(|| net.serve_at(addr, handler.clone(), cfg.clone())).await;

    // The request on the stale connection draws a stateless reset that the client recognises,
    // so it knows the request was not delivered and re-sends it on a fresh connection. Well
    // within the idle timeout (10 s), which is the only other way to notice.
    let started = Instant::now();
    let reply = client.call(addr, "node-1.hsu", ECHO, b"after", Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, b"after");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.stats().dialled, 2);
    assert_eq!(restarted.stats().accepted, 1);
    assert_eq!(handler.calls(), 2, "the request must run exactly once");
    client.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn call_once_does_not_resend_a_written_request() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let cfg = EndpointConfig { stateless_reset_key: Some([42; 32]), ..EndpointConfig::default() };
    let old = CrashableServer::start(&net, handler.clone(), cfg.clone()).await;
    let addr = old.addr;
    let client = net.client(EndpointConfig::default());
    client.call_once(addr, "node-1.hsu", ECHO, b"before", LONG).await.unwrap();

    old.crash().await;
    let restarted = bind_when_free(|| net.serve_at(addr, handler.clone(), cfg.clone())).await;

    // Written on the stale connection, then reset: from the client's side this cannot be told
    // apart from a server that acted and died before acknowledging, so a request that must not
    // run twice fails as "maybe delivered" instead of being sent again.
    let err = client.call_once(addr, "node-1.hsu", ECHO, b"after", Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, NetError::ConnectionLost { addr: a, .. } if a == addr), "{err:?}");
    assert_eq!(handler.calls(), 1, "the request must not be sent again");
    // The next call dials a fresh connection.
    let reply = client.call_once(addr, "node-1.hsu", ECHO, b"next", Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, b"next");
    assert_eq!(restarted.stats().accepted, 1);
    client.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn crashed_server_without_reset_key_is_redialled_after_idle_timeout() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let old = CrashableServer::start(&net, handler.clone(), EndpointConfig::default()).await;
    let addr = old.addr;
    let client = net.client(EndpointConfig {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(1),
        ..EndpointConfig::default()
    });
    client.call(addr, "node-1.hsu", ECHO, b"before", LONG).await.unwrap();

    old.crash().await;
    let restarted = bind_when_free(|| net.serve_at(addr, handler.clone(), EndpointConfig::default())).await;

    // The new server cannot produce a reset the client accepts, so the stale connection lives
    // until the client's idle timeout. Poll with a deadline until a call goes through.
    let deadline = Instant::now() + LONG;
    let mut failures = 0;
    let reply = loop {
        match client.call(addr, "node-1.hsu", ECHO, b"after", Duration::from_millis(500)).await {
            Ok(reply) => break reply,
            Err(e) => {
                failures += 1;
                assert!(Instant::now() < deadline, "no success by the deadline: {e}");
            }
        }
    };
    assert_eq!(reply, b"after");
    assert!(failures <= 10, "{failures} failed attempts");
    assert_eq!(client.stats().dialled, 2);
    client.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn streaming_delivers_all_items_in_order() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let addr = server.local_addr();
    let client = net.client(EndpointConfig::default());

    let mut items = client.stream(addr, "node-1.hsu", COUNT, &1000u32.to_be_bytes()).await.unwrap();
    for i in 0..1000u32 {
        let item = tokio::time::timeout(LONG, items.recv())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended early at {i}"))
            .unwrap();
        assert_eq!(item, i.to_be_bytes());
    }
    assert!(tokio::time::timeout(LONG, items.recv()).await.unwrap().is_none());

    // A handler refusal surfaces from `stream` itself.
    let err = client.stream(addr, "node-1.hsu", REFUSE, b"").await.unwrap_err();
    match err {
        NetError::Remote(msg) => assert_eq!(msg, "stream refused: method 11"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn streaming_is_refused_by_default() {
    let net = Net::new();
    let server = net.serve(Arc::new(EchoOnly), EndpointConfig::default());
    let client = net.client(EndpointConfig::default());
    let err = client.stream(server.local_addr(), "node-1.hsu", 7, b"").await.unwrap_err();
    match err {
        NetError::Remote(msg) => assert_eq!(msg, "streaming is not supported for method 7"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_a_stream_receiver_releases_the_server() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let (stopped_tx, stopped_rx) = oneshot::channel();
    *handler.producer_stopped.lock().unwrap() = Some(stopped_tx);
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let addr = server.local_addr();
    let client = net.client(EndpointConfig::default());

    let total = 1_000_000u32;
    let mut items = client.stream(addr, "node-1.hsu", COUNT, &total.to_be_bytes()).await.unwrap();
    for i in 0..10u32 {
        let item = tokio::time::timeout(LONG, items.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(item, i.to_be_bytes());
    }
    drop(items);

    // The cancellation travels to the server and the producer sees its consumer gone.
    let sent = tokio::time::timeout(LONG, stopped_rx).await.expect("producer still running").unwrap();
    assert!(sent < total);
    let reply = client.call(addr, "node-1.hsu", ECHO, b"still here", LONG).await.unwrap();
    assert_eq!(reply, b"still here");
    assert_eq!(client.stats().dialled, 1);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn slow_handler_times_out_and_is_cancelled() {
    let net = Net::new();
    let handler = Arc::new(TestHandler::default());
    let (cancelled_tx, cancelled_rx) = oneshot::channel();
    *handler.slow_cancelled.lock().unwrap() = Some(cancelled_tx);
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let addr = server.local_addr();
    let client = net.client(EndpointConfig::default());

    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let err = client.call(addr, "node-1.hsu", SLOW, b"", budget).await.unwrap_err();
    assert!(matches!(err, NetError::Timeout { addr: a, after } if a == addr && after == budget), "{err:?}");
    assert!(started.elapsed() < LONG);
    // The abandoned call stops the stream, and the server drops the handler future.
    tokio::time::timeout(LONG, cancelled_rx).await.expect("handler not cancelled").unwrap();
    let reply = client.call(addr, "node-1.hsu", ECHO, b"next", LONG).await.unwrap();
    assert_eq!(reply, b"next");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn unreachable_peer_fails_with_connect_error() {
    // Bound but never read: packets to it vanish, so the handshake can only time out.
    let hole = std::net::UdpSocket::bind(localhost()).unwrap();
    let addr = hole.local_addr().unwrap();
    let net = Net::new();
    let client =
        net.client(EndpointConfig { connect_timeout: Duration::from_millis(300), ..EndpointConfig::default() });
    let err = client.call(addr, "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
    assert!(matches!(&err, NetError::Connect { addr: a, .. } if *a == addr), "{err:?}");
    // A call budget shorter than the handshake bound wins.
    let err = client.call(addr, "node-1.hsu", ECHO, b"x", Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err:?}");
    client.shutdown().await;
}

#[tokio::test]
async fn shut_down_endpoints_refuse_work() {
    let net = Net::new();
    let server = net.serve(Arc::new(TestHandler::default()), EndpointConfig::default());
    let addr = server.local_addr();
    let client =
        net.client(EndpointConfig { connect_timeout: Duration::from_millis(300), ..EndpointConfig::default() });
    client.call(addr, "node-1.hsu", ECHO, b"x", LONG).await.unwrap();
    server.shutdown().await;
    server.shutdown().await; // idempotent
    let err = client.call(addr, "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Connect { .. }), "{err:?}");

    client.shutdown().await;
    let err = client.call(addr, "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Closed), "{err:?}");
    let err = client.stream(addr, "node-1.hsu", COUNT, &1u32.to_be_bytes()).await.unwrap_err();
    assert!(matches!(err, NetError::Closed), "{err:?}");
}

#[tokio::test]
async fn unusable_configs_are_refused() {
    let net = Net::new();
    let client_endpoint = |tls, cfg| Endpoint::client_on(localhost(), tls, cfg);

    let mut other_alpn = client_tls(&net.ca, Some(&net.node2));
    other_alpn.alpn_protocols = vec![b"h3".to_vec()];
    let err = client_endpoint(other_alpn, EndpointConfig::default()).err().unwrap();
    assert!(matches!(&err, NetError::Tls(m) if m.contains("alpn")), "{err:?}");

    let mut explicit_alpn = client_tls(&net.ca, Some(&net.node2));
    explicit_alpn.alpn_protocols = vec![ALPN.to_vec()];
    client_endpoint(explicit_alpn, EndpointConfig::default()).unwrap();

    let tls12_only = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(net.ca.roots.clone())
        .with_no_client_auth();
    let err = client_endpoint(tls12_only, EndpointConfig::default()).err().unwrap();
    assert!(matches!(&err, NetError::Tls(m) if m.contains("TLS 1.3")), "{err:?}");

    let tls12_server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![net.node1.cert.clone()], net.node1.key.clone_key())
        .unwrap();
    let err = Endpoint::bind(
        localhost(),
        tls12_server,
        client_tls(&net.ca, Some(&net.node1)),
        Arc::new(EchoOnly),
        EndpointConfig::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(&err, NetError::Tls(m) if m.contains("TLS 1.3")), "{err:?}");

    let bad_cfgs = [
        EndpointConfig { max_frame: 10, ..EndpointConfig::default() },
        EndpointConfig { keep_alive: Duration::from_secs(10), ..EndpointConfig::default() },
        EndpointConfig { idle_timeout: Duration::ZERO, ..EndpointConfig::default() },
        EndpointConfig { max_concurrent_streams: 0, ..EndpointConfig::default() },
    ];
    for cfg in bad_cfgs {
        let shown = format!("{cfg:?}");
        let err = client_endpoint(client_tls(&net.ca, Some(&net.node2)), cfg).err().unwrap();
        assert!(matches!(err, NetError::Config(_)), "{shown}: {err:?}");
    }

    let keyed = EndpointConfig { stateless_reset_key: Some([9; 32]), ..EndpointConfig::default() };
    assert!(format!("{keyed:?}").contains("<redacted>"));
}

#[test]
fn endpoint_needs_a_runtime() {
    let net = Net::new();
    let err = Endpoint::client_on(localhost(), client_tls(&net.ca, Some(&net.node2)), EndpointConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, NetError::Config(_)), "{err:?}");
}

#[test]
fn request_and_reply_codecs() {
    assert_eq!(parse_request(vec![KIND_STREAM, 1, 2, 9]).unwrap(), (KIND_STREAM, 0x0102, vec![9]));
    assert!(parse_request(vec![KIND_UNARY, 1]).is_err());
    assert!(parse_request(vec![7, 0, 0]).unwrap_err().contains("unknown request kind 7"));

    assert_eq!(decode_reply(vec![STATUS_OK, 1, 2]).unwrap(), vec![1, 2]);
    assert!(matches!(
        decode_reply(vec![STATUS_REMOTE, b'n', b'o']),
        Err(NetError::Remote(m)) if m == "no"
    ));
    assert!(matches!(
        decode_reply(too_large_status(5, 4).to_vec()),
        Err(NetError::FrameTooLarge { declared: 5, max: 4 })
    ));
    let mut reply_too_large = too_large_status(5, 4);
    reply_too_large[0] = STATUS_REPLY_TOO_LARGE;
    assert!(matches!(decode_reply(reply_too_large.to_vec()), Err(NetError::ReplyTooLarge { declared: 5, max: 4 })));
    assert!(matches!(decode_reply(vec![STATUS_TOO_LARGE, 1]), Err(NetError::Protocol(_))));
    assert!(matches!(decode_reply(vec![]), Err(NetError::Protocol(_))));
    assert!(matches!(decode_reply(vec![99]), Err(NetError::Protocol(_))));

    assert_eq!(truncate_utf8("héllo", 2), "h");
    assert_eq!(truncate_utf8("héllo", 3), "hé");
    assert_eq!(truncate_utf8("abc", 10), "abc");
}

#[test]
fn reset_key_signs_and_verifies() {
    use quinn::crypto::HmacKey;
    let provider = rustls::crypto::ring::default_provider();
    let hkdf = provider
        .cipher_suites
        .iter()
        .find_map(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(s) => Some(s.hkdf_provider),
            _ => None,
        })
        .unwrap();
    let a = ResetKey::new(&[1; 32], hkdf);
    let b = ResetKey::new(&[1; 32], hkdf);
    let c = ResetKey::new(&[2; 32], hkdf);
    let sign = |k: &ResetKey| {
        let mut out = vec![0; k.signature_len()];
        k.sign(b"cid", &mut out);
        out
    };
    assert!(a.signature_len() >= 16, "reset tokens take 16 bytes");
    assert_eq!(sign(&a), sign(&b), "same secret, same tokens: survives restarts");
    assert_ne!(sign(&a), sign(&c));
    assert!(a.verify(b"cid", &sign(&b)).is_ok());
    assert!(a.verify(b"cid", &sign(&c)).is_err());
    assert!(a.verify(b"cid", &sign(&a)[..16]).is_err());
}

/// Compile-time check: callers can spawn the client futures on a multi-threaded runtime.
#[allow(dead_code)]
fn client_futures_are_send(endpoint: Endpoint, addr: SocketAddr) {
    fn is_send<T: Send>(_: T) {}
    is_send(endpoint.call(addr, "node-1.hsu", ECHO, b"", LONG));
    is_send(endpoint.stream(addr, "node-1.hsu", COUNT, b""));
    is_send(endpoint.shutdown());
}

/// A client verifier that takes every certificate of the CA for revoked, as a server does for a
/// node the cluster removed.
#[derive(Debug)]
struct RevokesEveryone(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for RevokesEveryone {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)?;
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[tokio::test]
async fn a_revoked_certificate_is_told_so_and_counted() {
    let net = Net::new();
    let inner = WebPkiClientVerifier::builder_with_provider(net.ca.roots.clone(), provider()).build().unwrap();
    let server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(RevokesEveryone(inner)))
        .with_single_cert(vec![net.node1.cert.clone()], net.node1.key.clone_key())
        .unwrap();
    let handler = Arc::new(TestHandler::default());
    let server = Endpoint::bind(
        localhost(),
        server_tls,
        client_tls(&net.ca, Some(&net.node1)),
        handler.clone(),
        EndpointConfig::default(),
    )
    .unwrap();
    let client = net.client(EndpointConfig::default());
    let revocations = client.revocations();
    for n in 1..=3 {
        let err = client.call(server.local_addr(), "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
        assert!(matches!(err, NetError::Revoked { .. }), "attempt {n}: {err:?}");
        assert_eq!(*revocations.borrow(), n, "refusals counted in a row");
    }
    assert_eq!(handler.calls(), 0, "a revoked certificate reached the handler");

    // A request that gets through (to a server that does not revoke it) resets the count.
    let other = net.serve(handler.clone(), EndpointConfig::default());
    client.call(other.local_addr(), "node-1.hsu", ECHO, b"x", LONG).await.unwrap();
    assert_eq!(*revocations.borrow(), 0);
}

#[test]
fn refused_handshakes_are_logged_once_a_minute_per_address() {
    let log = RefusalLog::default();
    let a: std::net::IpAddr = [10, 0, 0, 1].into();
    let b: std::net::IpAddr = [10, 0, 0, 2].into();
    let mut now = tokio::time::Instant::now();
    assert_eq!(log.note(a, now), Some(0), "the first refusal is logged");
    for _ in 0..50 {
        now += Duration::from_millis(100);
        assert_eq!(log.note(a, now), None, "repeats within a minute are counted, not logged");
    }
    assert_eq!(log.note(b, now), Some(0), "another address has its own budget");
    now += RefusalLog::PERIOD;
    assert_eq!(log.note(a, now), Some(50), "the next line says how many were not logged");
    assert_eq!(log.note(a, now), None);
    // Bounded: many addresses do not grow the map past its limit.
    for i in 0..(RefusalLog::MAX_ADDRESSES as u32 + 10) {
        log.note(std::net::IpAddr::from(i.to_be_bytes()), now);
    }
    assert!(log.by_ip.lock().unwrap().len() <= RefusalLog::MAX_ADDRESSES);
}

/// Echoes, until told that its peers' certificates are revoked.
#[derive(Default)]
struct Revocable {
    revoked: std::sync::atomic::AtomicBool,
}

impl Handler for Revocable {
    async fn call(&self, _peer: Peer, _method: u16, body: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(body)
    }

    fn admitted(&self, _peer: &Peer) -> Result<(), String> {
        if self.revoked.load(Ordering::SeqCst) {
            Err("revoked".into())
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_connection_whose_certificate_was_revoked_since_is_closed_as_revoked() {
    let net = Net::new();
    let handler = Arc::new(Revocable::default());
    let server = net.serve(handler.clone(), EndpointConfig::default());
    let client = net.client(EndpointConfig::default());
    assert_eq!(client.call(server.local_addr(), "node-1.hsu", ECHO, b"x", LONG).await.unwrap(), b"x");
    handler.revoked.store(true, Ordering::SeqCst);
    // The open connection is closed as revoked on its next request.
    let err = client.call(server.local_addr(), "node-1.hsu", ECHO, b"x", LONG).await.unwrap_err();
    assert!(matches!(err, NetError::Revoked { .. }), "{err:?}");
    assert_eq!(*client.revocations().borrow(), 1);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        /// Request and reply frames from a peer: parsed or refused with a message, never a panic.
        #[test]
        fn any_request_or_reply_frame_is_handled(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Err(e) = parse_request(frame.clone()) {
                prop_assert!(!e.is_empty());
            }
            if let Err(e) = decode_reply(frame) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
