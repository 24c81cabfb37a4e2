//! Building quinn's configurations from the endpoint's: limits checked, ALPN enforced, TLS 1.3
//! required, random connection ids, and the stateless reset key.

use super::*;

pub(super) fn validate(cfg: &EndpointConfig) -> Result<(), NetError> {
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
pub(super) fn transport_config(
    cfg: &EndpointConfig,
    peer_streams: u32,
) -> Result<Arc<quinn::TransportConfig>, NetError> {
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
pub(super) fn require_alpn(protocols: &mut Vec<Vec<u8>>, side: &str) -> Result<(), NetError> {
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

pub(super) fn quic_server_config(
    mut tls: rustls::ServerConfig,
    cfg: &EndpointConfig,
) -> Result<quinn::ServerConfig, NetError> {
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
pub(super) fn quic_client_config(
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
pub(super) fn quic_endpoint_config(
    cfg: &EndpointConfig,
    provider: &CryptoProvider,
) -> Result<quinn::EndpointConfig, NetError> {
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
pub(super) const CID_LEN: usize = 8;

/// Random connection ids, accepted as valid by any incarnation of this node.
pub(super) struct RandomCids {
    pub(super) random: &'static dyn SecureRandom,
    /// Only used if the system's random source fails, to keep ids distinct.
    pub(super) fallback: u64,
}

impl RandomCids {
    pub(super) fn new(random: &'static dyn SecureRandom) -> Self {
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
pub(super) struct ResetKey {
    pub(super) key: OkmBlock,
    pub(super) hkdf: &'static dyn Hkdf,
    pub(super) len: usize,
}

impl ResetKey {
    pub(super) fn new(secret: &[u8; 32], hkdf: &'static dyn Hkdf) -> Self {
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
