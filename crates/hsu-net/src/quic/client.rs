//! The client side: unary calls and streams to peers over cached connections, re-sent only when
//! they certainly never arrived (see the retries in the parent module), and the stream reader.

use super::*;

impl Endpoint {
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

    pub(super) async fn unary(
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

    pub(super) fn check_request_size(&self, body_len: usize) -> Result<(), NetError> {
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
    pub(super) async fn request(
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

    pub(super) async fn request_once_or_twice(
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
    pub(super) async fn connection(&self, addr: SocketAddr, server_name: &str) -> Result<(Connection, bool), NetError> {
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

    pub(super) fn slot(&self, addr: SocketAddr, server_name: &str) -> Slot {
        let mut peers = lock(&self.inner.peers);
        peers.entry((addr, server_name.to_owned())).or_default().clone()
    }

    /// Drops `conn` from the cache unless another call already replaced it.
    pub(super) async fn evict(&self, addr: SocketAddr, server_name: &str, conn: &Connection) {
        let slot = self.slot(addr, server_name);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *cached = None;
        }
    }

    pub(super) async fn dial(
        &self,
        quic: &quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, NetError> {
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

/// The `quic-send` failpoint, on every request this endpoint sends (built only with the
/// `failpoints` feature). `return(MS)` delays the request by MS milliseconds without blocking a
/// runtime thread, which is how cluster tests add latency to every peer message
/// (`FAILPOINTS=quic-send=return(50)`); the fail crate's other actions (`sleep(MS)`, which
/// blocks the thread, `panic`, `pause`, ...) behave as that crate defines them.
#[cfg(feature = "failpoints")]
pub(super) async fn send_failpoint() {
    let delay = fail::eval("quic-send", |arg| arg.and_then(|a| a.trim().parse::<u64>().ok()));
    if let Some(Some(ms)) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A failed request attempt, and how far the request got.
pub(super) struct Failure {
    pub(super) err: NetError,
    pub(super) sent: Sent,
}

/// How far a request got before its connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
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
pub(super) struct ResetOnDrop {
    pub(super) send: SendStream,
    pub(super) armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.send.reset(VarInt::from_u32(STREAM_CANCELLED));
        }
    }
}

/// Opens a stream on `conn`, sends the request and reads the first reply frame.
pub(super) async fn exchange(
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
pub(super) struct StreamReader {
    pub(super) addr: SocketAddr,
    pub(super) conn: Connection,
    pub(super) recv: RecvStream,
    pub(super) tx: mpsc::Sender<Result<Vec<u8>, NetError>>,
    pub(super) max_frame: usize,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl StreamReader {
    pub(super) async fn run(mut self) {
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
