//! The server side: accepting connections (mutual TLS required, revoked peers closed), one task
//! per stream, the handler's replies and streams, and the rate-limited log of refused handshakes.

use super::*;

/// Everything the server-side tasks need; they deliberately hold no `Arc<Inner>` so that
/// dropping the last `Endpoint` can shut them down.
pub(super) struct ServeCtx<H> {
    pub(super) handler: Arc<H>,
    pub(super) max_frame: usize,
    pub(super) request_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) accepted: Arc<AtomicU64>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) refusals: RefusalLog,
}

/// Rate-limited warnings about refused handshakes: a removed node that keeps retrying, or a
/// scanner, must not fill the log. The first refusal from an IP address is logged, then at most
/// one line per [`RefusalLog::PERIOD`] with the count of those not logged. Bounded in memory.
#[derive(Default)]
pub(super) struct RefusalLog {
    pub(super) by_ip: Mutex<HashMap<std::net::IpAddr, (tokio::time::Instant, u64)>>,
}

impl RefusalLog {
    pub(super) const PERIOD: Duration = Duration::from_secs(60);
    pub(super) const MAX_ADDRESSES: usize = 4096;

    /// Returns `Some(suppressed)` when this refusal (at `now`) should be logged, with how many
    /// were not logged since the last line for `ip`.
    pub(super) fn note(&self, ip: std::net::IpAddr, now: tokio::time::Instant) -> Option<u64> {
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

pub(super) async fn accept_loop<H: Handler>(quic: quinn::Endpoint, ctx: Arc<ServeCtx<H>>) {
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

pub(super) async fn serve_connection<H: Handler>(incoming: quinn::Incoming, ctx: Arc<ServeCtx<H>>) {
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
pub(super) fn peer_certificate(conn: &Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| cert.as_ref().to_vec())
}

pub(super) async fn serve_stream<H: Handler>(
    ctx: Arc<ServeCtx<H>>,
    peer: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
) {
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
pub(super) async fn until_abandoned<F: Future>(
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

pub(super) async fn reply_ok<H>(ctx: &ServeCtx<H>, send: &mut SendStream, payload: &[u8]) {
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

pub(super) async fn reply_remote<H>(ctx: &ServeCtx<H>, send: &mut SendStream, msg: &str) {
    let msg = truncate_utf8(msg, ctx.max_frame - 1);
    reply(ctx, send, &[&[STATUS_REMOTE], msg.as_bytes()]).await;
}

/// Writes the final reply frame and finishes the stream. Bounded by the request timeout so a
/// caller that never reads cannot pin the task.
pub(super) async fn reply<H>(ctx: &ServeCtx<H>, send: &mut SendStream, parts: &[&[u8]]) {
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
