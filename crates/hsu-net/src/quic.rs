//! Node-to-node transport over QUIC with mutual TLS.
//!
//! This module owns the UDP socket of a node, the QUIC connections to and from its peers, and
//! the small request protocol carried on them: framed unary calls and server-streaming calls.
//! It does **not** own TLS policy: callers hand in ready [`rustls::ServerConfig`] and
//! [`rustls::ClientConfig`] values (built elsewhere, with client-certificate verification
//! against the cluster CA) and this module only adapts them for QUIC. Mapping a peer's
//! certificate to a cluster identity is also the caller's job: handlers get the DER in
//! [`Peer::cert_der`].
//!
//! # Wire protocol
//!
//! Every request uses its own bidirectional stream on a connection that is cached per
//! `(address, server name)`. All frames are [`crate::frame`] frames (`u32` big-endian length,
//! then bytes), bounded by [`EndpointConfig::max_frame`] on both sides.
//!
//! * Request frame: `[u8 kind][u16 method, big-endian][body]`, kind `0` = unary, `1` = server
//!   streaming. The client finishes its send side after the request.
//! * Reply frame: `[u8 status][payload]`:
//!   * `0` ok: payload is the reply (unary), the stream header (streaming, empty) or one item;
//!   * `1` remote error: payload is the handler's UTF-8 message ([`NetError::Remote`]);
//!   * `2` too large: payload is `[u64 declared][u64 max]`, both big-endian
//!     ([`NetError::FrameTooLarge`]);
//!   * `3` protocol error: payload is a UTF-8 message ([`NetError::Protocol`]);
//!   * `4` reply too large: the handler ran, but its answer is over the limit; payload as for
//!     `2` ([`NetError::ReplyTooLarge`]).
//! * Unary: exactly one reply frame, then the server finishes the stream.
//! * Streaming: a header reply frame (status `0` when the handler accepted the call, otherwise
//!   one error frame), then zero or more item frames; the server finishing the stream ends it.
//!
//! # TLS and ALPN
//!
//! QUIC needs TLS 1.3 and ALPN. [`Endpoint::bind`] and [`Endpoint::client`] set the ALPN list of
//! the given configs to [`ALPN`] when it is empty and refuse configs that list anything else, so
//! an `hsu/1` endpoint can never be talked into serving another protocol. Configs without TLS
//! 1.3 are refused up front with [`NetError::Tls`] instead of failing on the first handshake.
//! Mutual TLS is mandatory: the server closes any connection whose peer presented no
//! certificate, even if its TLS config would let such a peer through.
//!
//! # Retries
//!
//! A unary call or stream set-up that finds its cached connection dead re-dials once and
//! re-sends the request, but only if the server had not acknowledged all request bytes when
//! the connection died: in practice, when the connection was already dead (e.g. the peer
//! restarted) or died while the request was in flight. Once the server acknowledged the
//! request, the caller gets the error instead ([`NetError::ConnectionLost`]: the server may have
//! acted). One narrow window remains: a server that acted on a request and died before its
//! acknowledgement left gets the request again, so requests with side effects use
//! [`Endpoint::call_once`], which re-sends only what certainly never left.
//!
//! # Restarts
//!
//! A peer that restarts loses its connection state. Unless it can send a *stateless reset*
//! that the other side recognises, the other side only notices when the idle timeout expires.
//! Set [`EndpointConfig::stateless_reset_key`] to a secret that is stable across restarts of
//! the same node to make such breaks visible (and transparently re-dialled) at once.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use rustls::crypto::tls13::{Hkdf, OkmBlock};
use rustls::crypto::{CryptoProvider, SecureRandom};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, debug_span, info_span, warn, Instrument};

use crate::frame::{read_frame, write_frame_parts, FrameError, DEFAULT_MAX_FRAME};

/// The ALPN protocol id of this transport.
pub const ALPN: &[u8] = b"hsu/1";

/// Capacity of the channels that carry streamed items, on both sides. Bounded so that a slow
/// consumer pushes back on the producer (through QUIC flow control) instead of buffering.
pub const STREAM_CHANNEL_CAPACITY: usize = 64;

/// Smallest accepted [`EndpointConfig::max_frame`]: room for any reply header and a short
/// error message.
pub const MIN_MAX_FRAME: usize = 64;

const KIND_UNARY: u8 = 0;
const KIND_STREAM: u8 = 1;
const REQUEST_HEAD_LEN: usize = 3;

const STATUS_OK: u8 = 0;
const STATUS_REMOTE: u8 = 1;
const STATUS_TOO_LARGE: u8 = 2;
const STATUS_PROTOCOL: u8 = 3;
const STATUS_REPLY_TOO_LARGE: u8 = 4;

/// Application close codes for connections.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_NO_PEER_CERT: u32 = 1;
/// The server no longer admits the peer's certificate (revoked after the connection opened).
const CLOSE_REVOKED: u32 = 2;

/// Application error codes for streams (`STOP_SENDING` / `RESET_STREAM`).
const STREAM_CANCELLED: u32 = 1;
const STREAM_TOO_LARGE: u32 = 2;
const STREAM_TIMEOUT: u32 = 3;

/// How long shutdown waits for tasks, and then for close notifications to go out, before
/// giving up. Connections abandoned mid-handshake linger in quinn for three probe timeouts
/// (about 3 s without an RTT sample), so shutdown does not wait for those in full.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The verified peer: the DER of the end-entity certificate the peer presented (the caller
/// maps it to an identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert_der: Vec<u8>,
}

/// Request handler on the server side. `method` is a small number chosen by the caller's
/// protocol.
///
/// Handler futures are dropped (cancelled) when the caller abandons the request (it timed out or
/// went away) and when the endpoint shuts down, so they must be cancel-safe.
pub trait Handler: Send + Sync + 'static {
    /// Unary: one request frame in, one reply frame out. `Err(message)` is sent back as an
    /// error reply ([`NetError::Remote`] at the caller).
    fn call(&self, peer: Peer, method: u16, body: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, String>> + Send;

    /// Server streaming: returns a receiver of frames; the stream ends when the sender is
    /// dropped. Sending blocks (the channel is drained only as fast as the caller reads) and
    /// fails once the caller has gone away, which is the producer's cue to stop. Default: an
    /// error saying streaming is not supported.
    fn stream(
        &self,
        peer: Peer,
        method: u16,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<mpsc::Receiver<Vec<u8>>, String>> + Send {
        let _ = (peer, body);
        async move { Err(format!("streaming is not supported for method {method}")) }
    }

    /// Whether `peer` may still be served, asked before every request on a connection: a
    /// connection outlives the handshake that checked its certificate, so a certificate revoked
    /// since must be refused here. `Err(reason)` closes the connection as revoked, which the
    /// caller sees as [`NetError::Revoked`] (and every later handshake fails the same way).
    /// Default: every peer the handshake admitted.
    fn admitted(&self, peer: &Peer) -> Result<(), String> {
        let _ = peer;
        Ok(())
    }
}

/// Tunables of an [`Endpoint`].
#[derive(Clone)]
pub struct EndpointConfig {
    /// Largest frame this endpoint sends or accepts, header bytes included (default 16 MiB).
    pub max_frame: usize,
    /// Interval of QUIC keep-alive pings; zero disables them (default 1 s).
    pub keep_alive: Duration,
    /// A connection silent for this long is dead; also bounds how long a server waits for a
    /// complete request on a stream (default 10 s).
    pub idle_timeout: Duration,
    /// Bound on a QUIC handshake, outgoing and incoming (default 3 s).
    pub connect_timeout: Duration,
    /// Streams a peer may have open at once on one incoming connection (default 256).
    pub max_concurrent_streams: u32,
    /// Bound on [`Endpoint::stream`] set-up: dialling, sending the request and the handler
    /// accepting or refusing it (default 10 s).
    pub stream_open_timeout: Duration,
    /// Secret for QUIC stateless-reset tokens. `None` (default) uses a random key per endpoint,
    /// so peers of a restarted node only notice their dead connections by idle timeout. Set it
    /// to a value that is secret and stable across restarts of this node (e.g. derived from the
    /// node's private key with a KDF and a label) so that the new incarnation resets them at
    /// once. Must differ between nodes.
    pub stateless_reset_key: Option<[u8; 32]>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_concurrent_streams: 256,
            stream_open_timeout: Duration::from_secs(10),
            stateless_reset_key: None,
        }
    }
}

// Hand-written so the reset key never ends up in logs.
impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("max_frame", &self.max_frame)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("stream_open_timeout", &self.stream_open_timeout)
            .field("stateless_reset_key", &self.stateless_reset_key.map(|_| "<redacted>"))
            .finish()
    }
}

/// Counters of an [`Endpoint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Outgoing connections whose handshake completed.
    pub dialled: u64,
    /// Incoming connections accepted (handshake done, client certificate present).
    pub accepted: u64,
}

/// Transport errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// The peer could not be reached, or the connection to it was lost.
    #[error("cannot reach {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    /// The connection died after the request was sent and before the reply came: the peer may
    /// have acted on the request (unlike [`NetError::Connect`], where it certainly did not).
    #[error("connection to {addr} lost after the request was sent: {detail}")]
    ConnectionLost { addr: SocketAddr, detail: String },
    /// The call did not complete within the time it was given.
    #[error("no reply from {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The remote handler returned an error.
    #[error("remote handler failed: {0}")]
    Remote(String),
    /// The request frame is over a side's `max_frame`: it was not handled.
    #[error("frame of {declared} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { declared: usize, max: usize },
    /// The peer handled the request, but its reply is over a side's `max_frame`: whatever the
    /// request did, it did (unlike [`NetError::FrameTooLarge`]).
    #[error("the reply of {declared} bytes exceeds the maximum of {max} bytes (the request was handled)")]
    ReplyTooLarge { declared: usize, max: usize },
    /// The peer did not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// This endpoint is shut down.
    #[error("endpoint is shut down")]
    Closed,
    /// A TLS handshake failed or a TLS config cannot be used.
    #[error("tls failure: {0}")]
    Tls(String),
    /// The peer refused this endpoint's certificate as revoked (TLS alert `certificate_revoked`):
    /// the cluster removed this node.
    #[error("{addr} refused this node's certificate: it was revoked")]
    Revoked { addr: SocketAddr },
    /// The UDP socket could not be bound.
    #[error("cannot bind udp socket on {addr}: {detail}")]
    Bind { addr: SocketAddr, detail: String },
    /// An [`EndpointConfig`] value is out of range, or no tokio runtime is running.
    #[error("invalid configuration: {0}")]
    Config(String),
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A QUIC endpoint that serves (if given a server config) and calls peers. Cheap to clone;
/// dropping the last clone shuts it down abruptly (prefer [`Endpoint::shutdown`]).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    local_addr: SocketAddr,
    cfg: EndpointConfig,
    /// `None` once shut down. Taken out (not just closed) on shutdown so that the socket is
    /// released even while clones of this `Endpoint` are still around.
    quic: Mutex<Option<quinn::Endpoint>>,
    client_config: quinn::ClientConfig,
    /// One slot per `(addr, server name)`. The async mutex serialises dialling, so concurrent
    /// first calls to a peer share one connection instead of racing to open several.
    peers: Mutex<HashMap<(SocketAddr, String), Slot>>,
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    dialled: AtomicU64,
    accepted: Arc<AtomicU64>,
    /// Requests in a row that peers refused because they revoked this endpoint's certificate.
    revoked: watch::Sender<u32>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        let quic = self.quic.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(quic) = quic {
            quic.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"endpoint dropped");
        }
    }
}

/// Everything the server-side tasks need; they deliberately hold no `Arc<Inner>` so that
/// dropping the last `Endpoint` can shut them down.
struct ServeCtx<H> {
    handler: Arc<H>,
    max_frame: usize,
    request_timeout: Duration,
    handshake_timeout: Duration,
    accepted: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
    refusals: RefusalLog,
}

/// Rate-limited warnings about refused handshakes: a removed node that keeps retrying, or a
/// scanner, must not fill the log. The first refusal from an IP address is logged, then at most
/// one line per [`RefusalLog::PERIOD`] with the count of those not logged. Bounded in memory.
#[derive(Default)]
struct RefusalLog {
    by_ip: Mutex<HashMap<std::net::IpAddr, (tokio::time::Instant, u64)>>,
}

impl RefusalLog {
    const PERIOD: Duration = Duration::from_secs(60);
    const MAX_ADDRESSES: usize = 4096;

    /// Returns `Some(suppressed)` when this refusal (at `now`) should be logged, with how many
    /// were not logged since the last line for `ip`.
    fn note(&self, ip: std::net::IpAddr, now: tokio::time::Instant) -> Option<u64> {
        let mut map = lock(&self.by_ip);
        if map.len() >= Self::MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| now.duration_since(*since) < Self::PERIOD);
            if map.len() >= Self::MAX_ADDRESSES {
                map.clear();
            }
        }
        match map.get_mut(&ip) {
            Some((since, suppressed)) if now.duration_since(*since) < Self::PERIOD => {
                *suppressed += 1;
                None
            }
            Some((since, suppressed)) => {
                let n = *suppressed;
                *since = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                map.insert(ip, (now, 0));
                Some(0)
            }
        }
    }
}

impl Endpoint {
    /// Binds `addr`, serves incoming connections with `handler` and calls peers with `client`.
    /// Spawns the accept loop, so it must be called within a tokio runtime.
    pub fn bind<H: Handler>(
        addr: SocketAddr,
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        handler: Arc<H>,
        cfg: EndpointConfig,
    ) -> Result<Endpoint, NetError> {
        validate(&cfg)?;
        let server = quic_server_config(server, &cfg)?;
        let endpoint = Self::build(addr, Some(server), client, cfg)?;
        let quic = endpoint.inner.quic()?;
        let cfg = &endpoint.inner.cfg;
        let ctx = Arc::new(ServeCtx {
            handler,
            max_frame: cfg.max_frame,
            request_timeout: cfg.idle_timeout,
            handshake_timeout: cfg.connect_timeout,
            accepted: endpoint.inner.accepted.clone(),
            shutdown: endpoint.inner.shutdown.subscribe(),
            refusals: RefusalLog::default(),
        });
        let span = info_span!("hsu_quic_accept", local = %endpoint.inner.local_addr);
        let task = tokio::spawn(accept_loop(quic, ctx).instrument(span));
        *lock(&endpoint.inner.accept_task) = Some(task);
        Ok(endpoint)
    }

    /// Client-only endpoint (e.g. a joining node or a CLI) bound to an ephemeral IPv4 port on
    /// all interfaces. It refuses incoming connections.
    pub fn client(client: rustls::ClientConfig, cfg: EndpointConfig) -> Result<Endpoint, NetError> {
        Self::client_on((Ipv4Addr::UNSPECIFIED, 0).into(), client, cfg)
    }

    /// Client-only endpoint bound to `addr` (a specific interface, an IPv6 address, or a fixed
    /// port). It refuses incoming connections.
    pub fn client_on(
        addr: SocketAddr,
        client: rustls::ClientConfig,
        cfg: EndpointConfig,
    ) -> Result<Endpoint, NetError> {
        validate(&cfg)?;
        Self::build(addr, None, client, cfg)
    }

    fn build(
        addr: SocketAddr,
        server: Option<quinn::ServerConfig>,
        client: rustls::ClientConfig,
        cfg: EndpointConfig,
    ) -> Result<Endpoint, NetError> {
        // quinn spawns its driver on the current runtime and would panic without one.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetError::Config("an endpoint must be created within a tokio runtime".into()));
        }
        let (client_config, provider) = quic_client_config(client, &cfg)?;
        let endpoint_config = quic_endpoint_config(&cfg, &provider)?;
        let bind_err = |e: std::io::Error| NetError::Bind { addr, detail: e.to_string() };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        let quic =
            quinn::Endpoint::new(endpoint_config, server, socket, Arc::new(quinn::TokioRuntime)).map_err(bind_err)?;
        let local_addr = quic.local_addr().map_err(bind_err)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Endpoint {
            inner: Arc::new(Inner {
                local_addr,
                cfg,
                quic: Mutex::new(Some(quic)),
                client_config,
                peers: Mutex::new(HashMap::new()),
                shutdown,
                accept_task: Mutex::new(None),
                dialled: AtomicU64::new(0),
                accepted: Arc::new(AtomicU64::new(0)),
                revoked: watch::channel(0).0,
            }),
        })
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Connection counters.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            dialled: self.inner.dialled.load(Ordering::Relaxed),
            accepted: self.inner.accepted.load(Ordering::Relaxed),
        }
    }

    /// How many requests in a row peers refused because they revoked this endpoint's certificate
    /// ([`NetError::Revoked`]); a request that gets through resets it. A node watches it to
    /// learn that the cluster removed it even when no peer will talk to it any more.
    pub fn revocations(&self) -> watch::Receiver<u32> {
        self.inner.revoked.subscribe()
    }

    /// Unary call. `server_name` is the TLS name the peer's certificate must carry (e.g.
    /// "node-3.hsu"). The connection to `(addr, server_name)` is cached and reused (one
    /// connection per peer, one stream per request); a dead cached connection is dropped and
    /// re-dialled (see the module docs for when the request is re-sent). Gives up after
    /// `timeout` with [`NetError::Timeout`], whatever stage the call is in.
    pub async fn call(
        &self,
        addr: SocketAddr,
        server_name: &str,
        method: u16,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        self.unary(addr, server_name, method, body, timeout, true).await
    }

    /// Like [`Endpoint::call`], for a request that must not run twice (a write): it is sent
    /// again on a fresh connection only when it certainly never left (the cached connection was
    /// known dead, or the frame was not fully written). When the connection dies after the
    /// request was written, the call fails with [`NetError::ConnectionLost`], also if the peer
    /// had not acknowledged the request yet: a peer that acted on it and died before its
    /// acknowledgement left must not get it again.
    pub async fn call_once(
        &self,
        addr: SocketAddr,
        server_name: &str,
        method: u16,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        self.unary(addr, server_name, method, body, timeout, false).await
    }

    async fn unary(
        &self,
        addr: SocketAddr,
        server_name: &str,
        method: u16,
        body: &[u8],
        timeout: Duration,
        resend_unacked: bool,
    ) -> Result<Vec<u8>, NetError> {
        self.check_request_size(body.len())?;
        let attempt = async {
            let (frame, _, _) = self.request(addr, server_name, KIND_UNARY, method, body, resend_unacked).await?;
            decode_reply(frame)
        };
        let span = debug_span!("hsu_quic_call", %addr, server_name, method);
        match tokio::time::timeout(timeout, attempt.instrument(span)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout { addr, after: timeout }),
        }
    }

    /// Server-streaming call: returns a receiver of items; it yields `None` when the server
    /// finishes the stream. An error item is always the last one. Set-up (dial, request, the
    /// handler accepting or refusing) is bounded by [`EndpointConfig::stream_open_timeout`]; a
    /// handler refusal is returned here as [`NetError::Remote`]. Dropping the receiver cancels
    /// the stream on the server.
    pub async fn stream(
        &self,
        addr: SocketAddr,
        server_name: &str,
        method: u16,
        body: &[u8],
    ) -> Result<mpsc::Receiver<Result<Vec<u8>, NetError>>, NetError> {
        self.check_request_size(body.len())?;
        let after = self.inner.cfg.stream_open_timeout;
        let span = debug_span!("hsu_quic_stream_open", %addr, server_name, method);
        let open = self.request(addr, server_name, KIND_STREAM, method, body, true).instrument(span);
        let (header, recv, conn) = match tokio::time::timeout(after, open).await {
            Ok(result) => result?,
            Err(_) => return Err(NetError::Timeout { addr, after }),
        };
        // The header is an empty ok frame, or the reason the handler refused.
        decode_reply(header)?;
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        let reader = StreamReader {
            addr,
            conn,
            recv,
            tx,
            max_frame: self.inner.cfg.max_frame,
            shutdown: self.inner.shutdown.subscribe(),
        };
        let span = info_span!("hsu_quic_stream_reader", %addr, server_name, method);
        tokio::spawn(reader.run().instrument(span));
        Ok(rx)
    }

    /// Forgets the cached connections to `addr` (e.g. when a peer's address changed). Calls in
    /// flight on them finish normally; the connections close once those are done.
    pub fn forget(&self, addr: SocketAddr) {
        lock(&self.inner.peers).retain(|(a, _), _| *a != addr);
    }

    /// Stops accepting, closes all connections and waits briefly for the accept loop and the
    /// close notifications. Later calls fail with [`NetError::Closed`]. The UDP port is
    /// released shortly after this returns (quinn's socket driver ends asynchronously).
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let quic = lock(&self.inner.quic).take();
        lock(&self.inner.peers).clear();
        if let Some(quic) = &quic {
            quic.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"endpoint shutting down");
        }
        let task = lock(&self.inner.accept_task).take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                warn!("accept loop did not end within {SHUTDOWN_GRACE:?}; aborting it");
                abort.abort();
            }
        }
        if let Some(quic) = quic {
            // Lets the close frames go out so peers learn at once instead of timing out.
            if tokio::time::timeout(SHUTDOWN_GRACE, quic.wait_idle()).await.is_err() {
                debug!("connections did not drain within {SHUTDOWN_GRACE:?}");
            }
        }
    }

    fn check_request_size(&self, body_len: usize) -> Result<(), NetError> {
        let max = self.inner.cfg.max_frame;
        let declared = body_len.saturating_add(REQUEST_HEAD_LEN);
        if declared > max {
            return Err(NetError::FrameTooLarge { declared, max });
        }
        Ok(())
    }

    /// Sends one request and reads the first reply frame, re-dialling once if the cached
    /// connection turns out dead before the request was delivered (`resend_unacked`: also when
    /// it was written but not acknowledged, see the module docs).
    async fn request(
        &self,
        addr: SocketAddr,
        server_name: &str,
        kind: u8,
        method: u16,
        body: &[u8],
        resend_unacked: bool,
    ) -> Result<(Vec<u8>, RecvStream, Connection), NetError> {
        let result = self.request_once_or_twice(addr, server_name, kind, method, body, resend_unacked).await;
        match &result {
            Ok(_) => {
                self.inner.revoked.send_if_modified(|n| std::mem::take(n) != 0);
            }
            Err(NetError::Revoked { .. }) => self.inner.revoked.send_modify(|n| *n = n.saturating_add(1)),
            Err(_) => {}
        }
        result
    }

    async fn request_once_or_twice(
        &self,
        addr: SocketAddr,
        server_name: &str,
        kind: u8,
        method: u16,
        body: &[u8],
        resend_unacked: bool,
    ) -> Result<(Vec<u8>, RecvStream, Connection), NetError> {
        #[cfg(feature = "failpoints")]
        send_failpoint().await;
        let max = self.inner.cfg.max_frame;
        let (conn, fresh) = self.connection(addr, server_name).await?;
        match exchange(&conn, addr, kind, method, body, max).await {
            Ok((frame, recv)) => Ok((frame, recv, conn)),
            Err(failure) if !fresh && (failure.sent == Sent::No || resend_unacked && failure.sent == Sent::Unacked) => {
                debug!(error = %failure.err, "cached connection is dead and the request was not delivered; re-dialling once");
                self.evict(addr, server_name, &conn).await;
                let (conn, _) = self.connection(addr, server_name).await?;
                let (frame, recv) = exchange(&conn, addr, kind, method, body, max).await.map_err(|f| f.err)?;
                Ok((frame, recv, conn))
            }
            Err(failure) => Err(failure.err),
        }
    }

    /// The cached live connection to `(addr, server_name)`, or a freshly dialled one (`true`).
    async fn connection(&self, addr: SocketAddr, server_name: &str) -> Result<(Connection, bool), NetError> {
        let slot = self.slot(addr, server_name);
        let mut cached = slot.lock().await;
        if let Some(conn) = cached.as_ref() {
            match conn.close_reason() {
                None => return Ok((conn.clone(), false)),
                Some(reason) => debug!(%addr, %reason, "cached connection is closed; re-dialling"),
            }
            *cached = None;
        }
        let quic = self.inner.quic()?;
        let conn = self.dial(&quic, addr, server_name).await?;
        *cached = Some(conn.clone());
        Ok((conn, true))
    }

    fn slot(&self, addr: SocketAddr, server_name: &str) -> Slot {
        let mut peers = lock(&self.inner.peers);
        peers.entry((addr, server_name.to_owned())).or_default().clone()
    }

    /// Drops `conn` from the cache unless another call already replaced it.
    async fn evict(&self, addr: SocketAddr, server_name: &str, conn: &Connection) {
        let slot = self.slot(addr, server_name);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *cached = None;
        }
    }

    async fn dial(&self, quic: &quinn::Endpoint, addr: SocketAddr, server_name: &str) -> Result<Connection, NetError> {
        let connecting =
            quic.connect_with(self.inner.client_config.clone(), addr, server_name).map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => NetError::Closed,
                quinn::ConnectError::InvalidServerName(name) => {
                    NetError::Tls(format!("invalid server name {name:?}: expected a dns name or an ip address"))
                }
                other => NetError::Connect { addr, detail: other.to_string() },
            })?;
        let after = self.inner.cfg.connect_timeout;
        let conn = match tokio::time::timeout(after, connecting).await {
            Err(_) => {
                return Err(NetError::Connect { addr, detail: format!("no completed handshake within {after:?}") })
            }
            Ok(Err(e)) => return Err(connection_error(addr, &e)),
            Ok(Ok(conn)) => conn,
        };
        self.inner.dialled.fetch_add(1, Ordering::Relaxed);
        debug!(%addr, server_name, "connected");
        Ok(conn)
    }
}

impl Inner {
    fn quic(&self) -> Result<quinn::Endpoint, NetError> {
        lock(&self.quic).clone().ok_or(NetError::Closed)
    }
}

/// The `quic-send` failpoint, on every request this endpoint sends (built only with the
/// `failpoints` feature). `return(MS)` delays the request by MS milliseconds without blocking a
/// runtime thread, which is how cluster tests add latency to every peer message
/// (`FAILPOINTS=quic-send=return(50)`); the fail crate's other actions (`sleep(MS)`, which
/// blocks the thread, `panic`, `pause`, ...) behave as that crate defines them.
#[cfg(feature = "failpoints")]
async fn send_failpoint() {
    let delay = fail::eval("quic-send", |arg| arg.and_then(|a| a.trim().parse::<u64>().ok()));
    if let Some(Some(ms)) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A failed request attempt, and how far the request got.
struct Failure {
    err: NetError,
    sent: Sent,
}

/// How far a request got before its connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// It never left: sending it again cannot duplicate it.
    No,
    /// Written, but the peer had not acknowledged all of it: it most likely did not arrive (a
    /// stale connection to a restarted peer), but a peer that acted and died before its
    /// acknowledgement left did see it.
    Unacked,
    /// The peer acknowledged it (or answered part of it).
    Delivered,
}

/// Resets the send side if dropped while the request is still being written (the call was
/// abandoned), so the server sees a cancelled stream rather than a truncated frame.
struct ResetOnDrop {
    send: SendStream,
    armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.send.reset(VarInt::from_u32(STREAM_CANCELLED));
        }
    }
}

/// Opens a stream on `conn`, sends the request and reads the first reply frame.
async fn exchange(
    conn: &Connection,
    addr: SocketAddr,
    kind: u8,
    method: u16,
    body: &[u8],
    max_frame: usize,
) -> Result<(Vec<u8>, RecvStream), Failure> {
    let lost = |e: &ConnectionError, sent| {
        let err = match (sent, connection_error(addr, e)) {
            // After the request was written, a lost connection says nothing about whether the
            // peer acted: not a `Connect` error, which callers may take as "not sent".
            (Sent::Unacked | Sent::Delivered, NetError::Connect { addr, detail }) => {
                NetError::ConnectionLost { addr, detail }
            }
            (_, err) => err,
        };
        Failure { err, sent }
    };
    // Opening a stream is local bookkeeping: failing here means the connection is closed
    // and nothing was sent.
    let (send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e, Sent::No))?;
    let mut send = ResetOnDrop { send, armed: true };
    let [hi, lo] = method.to_be_bytes();
    let head = [kind, hi, lo];
    // `delivered`: the server certainly saw the request, so it must not be sent again.
    let mut delivered = false;
    match write_frame_parts(&mut send.send, &[&head, body], max_frame).await {
        Ok(()) => {
            let _ = send.send.finish();
        }
        Err(e) => {
            if let Some(reason) = conn.close_reason() {
                // The frame was not fully written, so the server cannot have acted on it.
                return Err(lost(&reason, Sent::No));
            }
            // The server stopped reading (e.g. the request is over its limit). It still
            // replies with the reason, so read that.
            debug!(error = %e, "server stopped reading the request");
            delivered = true;
        }
    }
    send.armed = false;

    let result = {
        // Watch for the server acknowledging every request byte while waiting for the reply:
        // if the connection then dies, the request may have been processed.
        let acked = send.send.stopped();
        tokio::pin!(acked);
        let read = read_frame(&mut recv, max_frame);
        tokio::pin!(read);
        let mut ack_pending = !delivered;
        loop {
            tokio::select! {
                reply = &mut read => break reply,
                ack = &mut acked, if ack_pending => {
                    ack_pending = false;
                    delivered = ack.is_ok();
                }
            }
        }
    };
    match result {
        Ok(Some(frame)) => Ok((frame, recv)),
        Ok(None) => Err(Failure {
            err: NetError::Protocol("server finished the stream without a reply".into()),
            sent: Sent::Delivered,
        }),
        Err(FrameError::TooLarge { declared, max }) => {
            let _ = recv.stop(VarInt::from_u32(STREAM_TOO_LARGE));
            Err(Failure { err: NetError::ReplyTooLarge { declared, max }, sent: Sent::Delivered })
        }
        Err(e) => match conn.close_reason() {
            Some(reason) => Err(lost(&reason, if delivered { Sent::Delivered } else { Sent::Unacked })),
            None => Err(Failure {
                err: NetError::Protocol(format!("reading the reply failed: {e}")),
                sent: Sent::Delivered,
            }),
        },
    }
}

/// Client side of a server stream: forwards items from the QUIC stream into the caller's
/// channel until the server finishes, the caller drops the receiver or the endpoint shuts
/// down.
struct StreamReader {
    addr: SocketAddr,
    conn: Connection,
    recv: RecvStream,
    tx: mpsc::Sender<Result<Vec<u8>, NetError>>,
    max_frame: usize,
    shutdown: watch::Receiver<bool>,
}

impl StreamReader {
    async fn run(mut self) {
        loop {
            let next = tokio::select! {
                biased;
                _ = signalled(&mut self.shutdown) => {
                    let _ = self.tx.try_send(Err(NetError::Closed));
                    return;
                }
                _ = self.tx.closed() => {
                    debug!("receiver dropped; cancelling the stream");
                    let _ = self.recv.stop(VarInt::from_u32(STREAM_CANCELLED));
                    return;
                }
                next = read_frame(&mut self.recv, self.max_frame) => next,
            };
            let item = match next {
                // The server finished: dropping `tx` ends the caller's receiver with `None`.
                Ok(None) => return,
                Ok(Some(frame)) => decode_reply(frame),
                Err(FrameError::TooLarge { declared, max }) => Err(NetError::FrameTooLarge { declared, max }),
                Err(e) => Err(match self.conn.close_reason() {
                    Some(reason) => connection_error(self.addr, &reason),
                    None => NetError::Protocol(format!("reading a stream item failed: {e}")),
                }),
            };
            let last = item.is_err();
            let delivered = tokio::select! {
                biased;
                _ = signalled(&mut self.shutdown) => false,
                sent = self.tx.send(item) => sent.is_ok(),
            };
            if last || !delivered {
                let _ = self.recv.stop(VarInt::from_u32(STREAM_CANCELLED));
                return;
            }
        }
    }
}

async fn accept_loop<H: Handler>(quic: quinn::Endpoint, ctx: Arc<ServeCtx<H>>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = signalled(&mut shutdown) => break,
            incoming = quic.accept() => {
                // `None` only once the endpoint is closed.
                let Some(incoming) = incoming else { break };
                let span = info_span!("hsu_quic_conn", remote = %incoming.remote_address());
                connections.spawn(serve_connection(incoming, ctx.clone()).instrument(span));
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!("connection task panicked: {e}");
                    }
                }
            }
        }
    }
    drop(quic);
    // The connections were closed with the endpoint; let their tasks notice, then abort any
    // that are still stuck.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
    debug!("accept loop ended");
}

async fn serve_connection<H: Handler>(incoming: quinn::Incoming, ctx: Arc<ServeCtx<H>>) {
    let mut shutdown = ctx.shutdown.clone();
    let remote = incoming.remote_address();
    let handshake = tokio::time::timeout(ctx.handshake_timeout, incoming);
    let conn = tokio::select! {
        biased;
        _ = signalled(&mut shutdown) => return,
        result = handshake => match result {
            Err(_) => {
                debug!("handshake did not complete within {:?}", ctx.handshake_timeout);
                return;
            }
            Ok(Err(e)) => {
                // Certificate trouble is worth an operator's attention; a peer giving up on
                // a handshake is not.
                if is_tls_failure(&e) {
                    match ctx.refusals.note(remote.ip(), tokio::time::Instant::now()) {
                        Some(0) => warn!(%remote, error = %e, "incoming tls handshake failed"),
                        Some(n) => warn!(
                            %remote, error = %e,
                            "incoming tls handshake failed ({n} more from this address in the last minute not logged)"
                        ),
                        None => debug!(%remote, error = %e, "incoming tls handshake failed"),
                    }
                } else {
                    debug!(error = %e, "incoming handshake failed");
                }
                return;
            }
            Ok(Ok(conn)) => conn,
        },
    };
    let Some(cert_der) = peer_certificate(&conn) else {
        // The TLS config should already have refused this peer; mutual TLS is not optional.
        warn!("peer presented no client certificate; closing the connection");
        conn.close(VarInt::from_u32(CLOSE_NO_PEER_CERT), b"client certificate required");
        return;
    };
    ctx.accepted.fetch_add(1, Ordering::Relaxed);
    let peer = Peer { addr: conn.remote_address(), cert_der };
    debug!("connection accepted");
    // Stream tasks live in this set, so they are aborted when the connection task ends.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = signalled(&mut shutdown) => break,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    if let Err(reason) = ctx.handler.admitted(&peer) {
                        debug!(%reason, "peer no longer admitted; closing its connection");
                        conn.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
                        break;
                    }
                    let span = debug_span!("hsu_quic_stream", stream = %send.id());
                    streams.spawn(
                        serve_stream(ctx.clone(), peer.clone(), send, recv).instrument(span),
                    );
                }
                Err(e) => {
                    debug!(reason = %e, "connection ended");
                    break;
                }
            },
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!("stream task panicked: {e}");
                    }
                }
            }
        }
    }
}

/// The end-entity certificate the peer presented, if any.
fn peer_certificate(conn: &Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| cert.as_ref().to_vec())
}

async fn serve_stream<H: Handler>(ctx: Arc<ServeCtx<H>>, peer: Peer, mut send: SendStream, mut recv: RecvStream) {
    let read = tokio::time::timeout(ctx.request_timeout, read_frame(&mut recv, ctx.max_frame));
    let request = match read.await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            debug!("stream finished before a request");
            return;
        }
        Ok(Err(FrameError::TooLarge { declared, max })) => {
            warn!(declared, max, "rejecting an oversized request frame without reading it");
            // Stop first so the caller stops sending the body; the reply tells it why.
            let _ = recv.stop(VarInt::from_u32(STREAM_TOO_LARGE));
            reply(&ctx, &mut send, &[&too_large_status(declared, max)]).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "could not read the request");
            let _ = send.reset(VarInt::from_u32(STREAM_CANCELLED));
            return;
        }
        Err(_) => {
            debug!("no complete request within {:?}; resetting the stream", ctx.request_timeout);
            let _ = recv.stop(VarInt::from_u32(STREAM_TIMEOUT));
            let _ = send.reset(VarInt::from_u32(STREAM_TIMEOUT));
            return;
        }
    };
    let (kind, method, body) = match parse_request(request) {
        Ok(parts) => parts,
        Err(msg) => {
            warn!("malformed request: {msg}");
            reply(&ctx, &mut send, &[&[STATUS_PROTOCOL], msg.as_bytes()]).await;
            return;
        }
    };
    let mut shutdown = ctx.shutdown.clone();
    if kind == KIND_UNARY {
        let call = ctx.handler.call(peer, method, body);
        let Some(result) = until_abandoned(call, &send, &mut shutdown).await else {
            debug!(method, "caller went away; handler cancelled");
            return;
        };
        match result {
            Ok(payload) => reply_ok(&ctx, &mut send, &payload).await,
            Err(msg) => reply_remote(&ctx, &mut send, &msg).await,
        }
        return;
    }

    let open = ctx.handler.stream(peer, method, body);
    let Some(result) = until_abandoned(open, &send, &mut shutdown).await else {
        debug!(method, "caller went away; stream handler cancelled");
        return;
    };
    let mut items = match result {
        Ok(items) => items,
        Err(msg) => {
            reply_remote(&ctx, &mut send, &msg).await;
            return;
        }
    };
    // Header: the handler accepted the call.
    if let Err(e) = write_frame_parts(&mut send, &[&[STATUS_OK]], ctx.max_frame).await {
        debug!(error = %e, "caller went away before the stream started");
        return;
    }
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = signalled(&mut shutdown) => return,
            _ = &mut stopped => {
                debug!(method, "caller stopped the stream");
                return;
            }
            item = items.recv() => item,
        };
        // The handler dropped its sender: a normal end.
        let Some(item) = item else { break };
        let declared = item.len().saturating_add(1);
        if declared > ctx.max_frame {
            warn!(declared, max = ctx.max_frame, method, "stream item over max_frame; ending the stream");
            let status = too_large_status(declared, ctx.max_frame);
            let _ = write_frame_parts(&mut send, &[&status], ctx.max_frame).await;
            break;
        }
        // Blocks while the caller is not reading (flow control). A caller that stops the
        // stream or a closing connection makes the write fail.
        let parts: [&[u8]; 2] = [&[STATUS_OK], &item];
        let written = tokio::select! {
            biased;
            _ = signalled(&mut shutdown) => return,
            written = write_frame_parts(&mut send, &parts, ctx.max_frame) => written,
        };
        if let Err(e) = written {
            debug!(error = %e, method, "caller went away mid-stream");
            return;
        }
    }
    let _ = send.finish();
}

/// Runs `fut` unless the caller abandons the stream (it stopped reading or the connection
/// closed) or the endpoint shuts down first; then `fut` is dropped and `None` returned.
async fn until_abandoned<F: Future>(
    fut: F,
    send: &SendStream,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    let stopped = send.stopped();
    tokio::select! {
        output = fut => Some(output),
        _ = stopped => None,
        _ = signalled(shutdown) => None,
    }
}

async fn reply_ok<H>(ctx: &ServeCtx<H>, send: &mut SendStream, payload: &[u8]) {
    let declared = payload.len().saturating_add(1);
    if declared > ctx.max_frame {
        warn!(declared, max = ctx.max_frame, "reply over max_frame; sending an error instead");
        let mut status = too_large_status(declared, ctx.max_frame);
        status[0] = STATUS_REPLY_TOO_LARGE;
        reply(ctx, send, &[&status]).await;
        return;
    }
    reply(ctx, send, &[&[STATUS_OK], payload]).await;
}

async fn reply_remote<H>(ctx: &ServeCtx<H>, send: &mut SendStream, msg: &str) {
    let msg = truncate_utf8(msg, ctx.max_frame - 1);
    reply(ctx, send, &[&[STATUS_REMOTE], msg.as_bytes()]).await;
}

/// Writes the final reply frame and finishes the stream. Bounded by the request timeout so a
/// caller that never reads cannot pin the task.
async fn reply<H>(ctx: &ServeCtx<H>, send: &mut SendStream, parts: &[&[u8]]) {
    let write = write_frame_parts(send, parts, ctx.max_frame);
    match tokio::time::timeout(ctx.request_timeout, write).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => debug!(error = %e, "could not send the reply"),
        Err(_) => {
            debug!("caller did not take the reply within {:?}", ctx.request_timeout);
            let _ = send.reset(VarInt::from_u32(STREAM_TIMEOUT));
        }
    }
}

fn parse_request(mut frame: Vec<u8>) -> Result<(u8, u16, Vec<u8>), String> {
    if frame.len() < REQUEST_HEAD_LEN {
        return Err(format!(
            "request frame of {} bytes is shorter than its {REQUEST_HEAD_LEN}-byte header",
            frame.len()
        ));
    }
    let kind = frame[0];
    if kind != KIND_UNARY && kind != KIND_STREAM {
        return Err(format!("unknown request kind {kind}: expected {KIND_UNARY} (unary) or {KIND_STREAM} (stream)"));
    }
    let method = u16::from_be_bytes([frame[1], frame[2]]);
    frame.drain(..REQUEST_HEAD_LEN);
    Ok((kind, method, frame))
}

fn too_large_status(declared: usize, max: usize) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = STATUS_TOO_LARGE;
    out[1..9].copy_from_slice(&(declared as u64).to_be_bytes());
    out[9..].copy_from_slice(&(max as u64).to_be_bytes());
    out
}

fn decode_reply(mut frame: Vec<u8>) -> Result<Vec<u8>, NetError> {
    let Some(&status) = frame.first() else {
        return Err(NetError::Protocol("empty reply frame: expected a status byte".into()));
    };
    let payload = &frame[1..];
    match status {
        STATUS_OK => {
            frame.remove(0);
            Ok(frame)
        }
        STATUS_REMOTE => Err(NetError::Remote(String::from_utf8_lossy(payload).into_owned())),
        STATUS_TOO_LARGE | STATUS_REPLY_TOO_LARGE => match (payload.get(..8), payload.get(8..)) {
            (Some(declared), Some(max)) if max.len() == 8 => {
                let as_usize = |b: &[u8]| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(b);
                    usize::try_from(u64::from_be_bytes(word)).unwrap_or(usize::MAX)
                };
                let (declared, max) = (as_usize(declared), as_usize(max));
                Err(if status == STATUS_TOO_LARGE {
                    NetError::FrameTooLarge { declared, max }
                } else {
                    NetError::ReplyTooLarge { declared, max }
                })
            }
            _ => Err(NetError::Protocol(format!(
                "too-large reply with a {}-byte payload: expected 16 bytes",
                payload.len()
            ))),
        },
        STATUS_PROTOCOL => {
            Err(NetError::Protocol(format!("peer rejected the request: {}", String::from_utf8_lossy(payload))))
        }
        other => Err(NetError::Protocol(format!(
            "unknown reply status {other}: expected {STATUS_OK} to {STATUS_REPLY_TOO_LARGE}"
        ))),
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// QUIC carries TLS alerts as transport error codes 0x100..0x200.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn is_tls_failure(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::TransportError(te) => is_crypto(te.code),
        ConnectionError::ConnectionClosed(close) => is_crypto(close.error_code),
        _ => false,
    }
}

/// The QUIC error code of TLS alert `certificate_revoked` (RFC 8446 alert 44, carried as
/// 0x100 + alert by RFC 9001).
const CERTIFICATE_REVOKED: u64 = 0x100 + 44;

fn connection_error(addr: SocketAddr, e: &ConnectionError) -> NetError {
    match e {
        ConnectionError::TransportError(te) if u64::from(te.code) == CERTIFICATE_REVOKED => NetError::Revoked { addr },
        ConnectionError::ConnectionClosed(close) if u64::from(close.error_code) == CERTIFICATE_REVOKED => {
            NetError::Revoked { addr }
        }
        ConnectionError::TransportError(te) if is_crypto(te.code) => {
            NetError::Tls(format!("tls handshake with {addr} failed: {te}"))
        }
        ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
            NetError::Tls(format!("{addr} rejected the tls handshake: {close}"))
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == VarInt::from_u32(CLOSE_REVOKED) => {
            NetError::Revoked { addr }
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == VarInt::from_u32(CLOSE_NO_PEER_CERT) => {
            NetError::Tls(format!("{addr} requires a client certificate: {close}"))
        }
        ConnectionError::LocallyClosed => NetError::Closed,
        other => NetError::Connect { addr, detail: format!("connection lost: {other}") },
    }
}

/// Resolves once shutdown is signalled, or the endpoint is gone.
async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked: every critical section is
    // a single insert, remove or take.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn validate(cfg: &EndpointConfig) -> Result<(), NetError> {
    let bad = |msg: String| Err(NetError::Config(msg));
    if cfg.max_frame < MIN_MAX_FRAME || cfg.max_frame > u32::MAX as usize {
        return bad(format!("max_frame must be between {MIN_MAX_FRAME} and {} bytes, got {}", u32::MAX, cfg.max_frame));
    }
    if cfg.idle_timeout.is_zero() {
        return bad("idle_timeout must be positive, got zero".into());
    }
    if !cfg.keep_alive.is_zero() && cfg.keep_alive >= cfg.idle_timeout {
        return bad(format!(
            "keep_alive must be shorter than idle_timeout, got {:?} >= {:?}",
            cfg.keep_alive, cfg.idle_timeout
        ));
    }
    for (name, value) in [("connect_timeout", cfg.connect_timeout), ("stream_open_timeout", cfg.stream_open_timeout)] {
        if value.is_zero() {
            return bad(format!("{name} must be positive, got zero"));
        }
    }
    if cfg.max_concurrent_streams == 0 {
        return bad("max_concurrent_streams must be positive, got zero".into());
    }
    Ok(())
}

/// QUIC transport parameters. `peer_streams` is how many bidirectional streams the peer may
/// open: our protocol only lets the dialling side open streams, so outgoing connections allow
/// none.
fn transport_config(cfg: &EndpointConfig, peer_streams: u32) -> Result<Arc<quinn::TransportConfig>, NetError> {
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| NetError::Config(format!("idle_timeout {:?} is too large for quic", cfg.idle_timeout)))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval((!cfg.keep_alive.is_zero()).then_some(cfg.keep_alive))
        // Datagrams are unused; don't buffer any a peer sends.
        .datagram_receive_buffer_size(None);
    Ok(Arc::new(transport))
}

/// Puts [`ALPN`] into an empty list and refuses a list that names anything else.
fn require_alpn(protocols: &mut Vec<Vec<u8>>, side: &str) -> Result<(), NetError> {
    if protocols.is_empty() {
        protocols.push(ALPN.to_vec());
    }
    if protocols.len() == 1 && protocols[0] == ALPN {
        return Ok(());
    }
    let found: Vec<String> = protocols.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    Err(NetError::Tls(format!(
        "{side} tls config must offer only the alpn protocol \"hsu/1\" (or none), found {found:?}"
    )))
}

fn quic_server_config(mut tls: rustls::ServerConfig, cfg: &EndpointConfig) -> Result<quinn::ServerConfig, NetError> {
    require_alpn(&mut tls.alpn_protocols, "server")?;
    let tls = Arc::new(tls);
    let unusable = |e: &dyn fmt::Display| NetError::Tls(format!("server tls config cannot be used for quic: {e}"));
    // quinn would otherwise panic on the first handshake if the config lacks TLS 1.3: probe it.
    rustls::quic::ServerConnection::new(tls.clone(), rustls::quic::Version::V1, Vec::new())
        .map_err(|e| unusable(&e))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| unusable(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config(cfg, cfg.max_concurrent_streams)?);
    Ok(server)
}

/// The quinn client config, and the config's crypto provider (reused for the endpoint's own
/// HMAC and randomness, so that no second crypto library is involved).
fn quic_client_config(
    mut tls: rustls::ClientConfig,
    cfg: &EndpointConfig,
) -> Result<(quinn::ClientConfig, Arc<CryptoProvider>), NetError> {
    require_alpn(&mut tls.alpn_protocols, "client")?;
    let unusable = |e: &dyn fmt::Display| NetError::Tls(format!("client tls config cannot be used for quic: {e}"));
    let provider = tls.crypto_provider().clone();
    let tls = Arc::new(tls);
    let probe_name = ServerName::try_from("probe.invalid").map_err(|e| unusable(&e))?;
    rustls::quic::ClientConnection::new(tls.clone(), rustls::quic::Version::V1, probe_name, Vec::new())
        .map_err(|e| unusable(&e))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| unusable(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config(cfg, 0)?);
    Ok((client, provider))
}

/// quinn's endpoint-wide settings. Only a configured stateless-reset key changes anything.
///
/// A restarted node can only reset its predecessor's connections if (1) its reset tokens are
/// computed with the same key and (2) it does not discard the stale packets first: quinn's
/// default connection-id generator tags ids with a random per-process key and drops packets
/// whose ids it did not tag, before any reset is considered. So with a stable reset key we
/// also switch to plain random ids, which every incarnation accepts as possibly its own.
/// (quinn rate-limits the resets that junk packets can then trigger.)
fn quic_endpoint_config(cfg: &EndpointConfig, provider: &CryptoProvider) -> Result<quinn::EndpointConfig, NetError> {
    let Some(secret) = cfg.stateless_reset_key else {
        return Ok(quinn::EndpointConfig::default());
    };
    // QUIC's initial packets need TLS13_AES_128_GCM_SHA256, so a usable provider has it.
    let hkdf = provider
        .cipher_suites
        .iter()
        .find_map(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(s)
                if s.common.suite == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 =>
            {
                Some(s.hkdf_provider)
            }
            _ => None,
        })
        .ok_or_else(|| NetError::Tls("crypto provider lacks TLS13_AES_128_GCM_SHA256, which quic needs".into()))?;
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(ResetKey::new(&secret, hkdf)));
    let random = provider.secure_random;
    endpoint.cid_generator(move || Box::new(RandomCids::new(random)));
    Ok(endpoint)
}

/// Length of our connection ids: quinn's default.
const CID_LEN: usize = 8;

/// Random connection ids, accepted as valid by any incarnation of this node.
struct RandomCids {
    random: &'static dyn SecureRandom,
    /// Only used if the system's random source fails, to keep ids distinct.
    fallback: u64,
}

impl RandomCids {
    fn new(random: &'static dyn SecureRandom) -> Self {
        Self { random, fallback: 0 }
    }
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CID_LEN];
        if self.random.fill(&mut id).is_err() {
            self.fallback = self.fallback.wrapping_add(1);
            id = self.fallback.to_be_bytes();
        }
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Stateless-reset key backed by the TLS crypto provider's HMAC, so that no second crypto
/// library is needed.
struct ResetKey {
    key: OkmBlock,
    hkdf: &'static dyn Hkdf,
    len: usize,
}

impl ResetKey {
    fn new(secret: &[u8; 32], hkdf: &'static dyn Hkdf) -> Self {
        let key = OkmBlock::new(secret);
        let len = hkdf.hmac_sign(&key, b"").as_ref().len();
        Self { key, hkdf, len }
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let tag = tag.as_ref();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        self.len
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let tag = tag.as_ref();
        // Constant-time comparison: don't leak how many leading bytes matched.
        let diff = tag.iter().zip(signature).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if tag.len() == signature.len() && diff == 0 {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

#[cfg(test)]
mod tests;
