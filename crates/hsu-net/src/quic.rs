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

mod client;
mod config;
mod server;
mod wire;

use config::*;
use server::*;
use wire::*;

/// The ALPN protocol id of this transport.
pub const ALPN: &[u8] = b"hsu/1";

/// Capacity of the channels that carry streamed items, on both sides. Bounded so that a slow
/// consumer pushes back on the producer (through QUIC flow control) instead of buffering.
pub const STREAM_CHANNEL_CAPACITY: usize = 64;

/// Smallest accepted [`EndpointConfig::max_frame`]: room for any reply header and a short
/// error message.
pub const MIN_MAX_FRAME: usize = 64;

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
}

impl Inner {
    fn quic(&self) -> Result<quinn::Endpoint, NetError> {
        lock(&self.quic).clone().ok_or(NetError::Closed)
    }
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

#[cfg(test)]
mod tests;
