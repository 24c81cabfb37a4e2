//! The rustls configurations that enforce the PKI on the wire: the client-certificate verifier
//! that checks revocation on every handshake, server and client configs, and the verifier that
//! pins the CA a joining node learns from its token's fingerprint.

use super::*;

/// The only crypto provider HSU uses, passed explicitly everywhere.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Wraps a PKI error so that it can travel through rustls as a certificate error.
pub(super) fn certificate_error(err: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(TlsRejection(err)))))
}

/// A [`PkiError`] on its way through rustls.
///
/// rustls renders the errors it carries with `{:?}`, so this wrapper's `Debug` prints the
/// human-readable message; otherwise "ca fingerprint mismatch: ..." would reach the user as a
/// derived struct dump.
pub(super) struct TlsRejection(PkiError);

impl fmt::Debug for TlsRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for TlsRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for TlsRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The [`PkiError`] behind a failed handshake, if this module's verifiers caused it (for example
/// [`PkiError::FingerprintMismatch`] from [`pinned_client_config`], or
/// [`PkiError::MissingIdentity`] from [`RevocationAwareVerifier`]). Lets callers report the
/// precise reason instead of rustls's generic wrapper.
pub fn pki_error_of(err: &rustls::Error) -> Option<&PkiError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<TlsRejection>().map(|rejection| &rejection.0)
        }
        _ => None,
    }
}

/// A predicate that says whether an identity has been revoked.
pub type RevocationCheck = Arc<dyn Fn(&Identity) -> bool + Send + Sync>;

/// A rustls client-certificate verifier for servers: accepts only client certificates chaining to
/// the cluster CA (via rustls's `WebPkiClientVerifier` with the ring provider), then additionally
/// refuses any certificate whose identity `is_revoked` says is revoked, or that carries no HSU
/// identity. `is_revoked` is consulted on every handshake, so revocations take effect for new
/// connections immediately.
pub struct RevocationAwareVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) is_revoked: RevocationCheck,
}

impl fmt::Debug for RevocationAwareVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationAwareVerifier")
            .field("inner", &self.inner)
            .field("client_auth_mandatory", &self.inner.client_auth_mandatory())
            .finish_non_exhaustive()
    }
}

impl RevocationAwareVerifier {
    /// A verifier that requires every client to present a valid, non-revoked cluster certificate.
    pub fn new(ca_cert_der: Vec<u8>, is_revoked: RevocationCheck) -> Result<Arc<Self>, PkiError> {
        Self::build(ca_cert_der, is_revoked, true)
    }

    /// A verifier that lets clients without a certificate through (they must then authenticate
    /// some other way, e.g. with a bearer token), but applies the same checks as
    /// [`RevocationAwareVerifier::new`] to any certificate that is presented.
    pub fn new_optional(ca_cert_der: Vec<u8>, is_revoked: RevocationCheck) -> Result<Arc<Self>, PkiError> {
        Self::build(ca_cert_der, is_revoked, false)
    }

    pub(super) fn build(
        ca_cert_der: Vec<u8>,
        is_revoked: RevocationCheck,
        mandatory: bool,
    ) -> Result<Arc<Self>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca_cert_der))?;
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
        Ok(Arc::new(Self { inner: builder.build()?, is_revoked }))
    }
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[TlsDistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain is checked first, so the identity read below is one the CA vouched for.
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let identity = identity_of(end_entity.as_ref()).map_err(certificate_error)?;
        if (self.is_revoked)(&identity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds a rustls ServerConfig (TLS 1.3 + 1.2, ring provider) presenting `server` (leaf + CA
/// chain, which must carry a node identity) and verifying clients with `verifier`. ALPN is set
/// to `alpn`.
///
/// Session resumption is disabled in the returned config and must stay disabled: a resumed
/// session is not re-verified, so it would let a revoked client back in.
pub fn server_config(
    server: &CertifiedKey,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, PkiError> {
    let chain = certs_from_pem(&server.cert_pem)?;
    // Pinned first-contact clients find the CA only in the chain the server sends, so a chain
    // without it would make every join fail with a confusing fingerprint error.
    if chain.len() < 2 {
        return Err(PkiError::IncompleteChain { found: chain.len() });
    }
    match identity_of(chain[0].as_ref())? {
        Identity::Node(_) | Identity::Agent(_) => {}
        other => {
            return Err(PkiError::WrongIdentityKind {
                expected: "a node identity for a server certificate",
                found: other,
            })
        }
    }
    let key = key_from_pem(&server.key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // A resumed session skips client certificate verification, so a node revoked after its
    // first handshake could keep reconnecting on its old session and never meet `is_revoked`.
    // Resumption is therefore switched off entirely: no server-side session cache, no TLS 1.3
    // tickets, and (as by default) no stateless ticketer. Every connection pays for a full
    // handshake, which is cheap next to the long-lived connections HSU keeps.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Same as [`server_config`] but the client certificate is optional (for a gRPC API server that
/// also accepts bearer tokens); a presented certificate still has to chain to the CA, carry an
/// HSU identity and not be revoked.
pub fn server_config_optional_client_auth(
    server: &CertifiedKey,
    ca_cert_der: Vec<u8>,
    is_revoked: RevocationCheck,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, PkiError> {
    let verifier = RevocationAwareVerifier::new_optional(ca_cert_der, is_revoked)?;
    server_config(server, verifier, alpn)
}

/// A ClientConfig (TLS 1.3 + 1.2, ring provider) that trusts only the CA certificate(s) in
/// `ca_pem` and presents `client` (`None` = no client certificate). ALPN is set to `alpn`.
///
/// Connect with the peer's [`Identity::dns_name`] as server name, e.g. "node-7.hsu".
pub fn client_config(
    ca_pem: &str,
    client: Option<&CertifiedKey>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => {
            builder.with_client_auth_cert(certs_from_pem(&client.cert_pem)?, key_from_pem(&client.key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A ClientConfig for the first contact of a joining node, which knows the CA only by the
/// fingerprint in its join token.
///
/// The server's certificate is accepted only if the chain it presents contains a CA certificate
/// whose sha256 equals `ca_fingerprint`, the leaf verifies against that CA (chain, validity,
/// serverAuth) and the leaf carries a node identity. The server name is not checked: the joining
/// node dials an address and cannot know which node answers, and any node certified by the pinned
/// CA is a legitimate member. The returned handle holds the pinned CA's DER once the server's
/// certificate has been accepted; read it after the handshake has completed. On a fingerprint
/// mismatch the handshake fails with [`PkiError::FingerprintMismatch`] inside the rustls error,
/// before any application data is sent.
pub fn pinned_client_config(
    ca_fingerprint: [u8; 32],
    alpn: &[&[u8]],
) -> Result<(rustls::ClientConfig, PinnedCa), PkiError> {
    let provider = provider();
    let pinned_ca = Arc::new(Mutex::new(None));
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        pinned_ca: Arc::clone(&pinned_ca),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((config, pinned_ca))
}

/// Where [`pinned_client_config`] leaves the DER of the CA certificate it pinned.
pub type PinnedCa = Arc<Mutex<Option<Vec<u8>>>>;

/// The server-certificate verifier behind [`pinned_client_config`].
#[derive(Debug)]
pub(super) struct PinnedCaVerifier {
    pub(super) fingerprint: [u8; 32],
    pub(super) pinned_ca: PinnedCa,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|cert| sha256(cert.as_ref()) == self.fingerprint) else {
            let found = if intermediates.is_empty() {
                "no ca certificate at all".to_owned()
            } else {
                intermediates.iter().map(|cert| hex(&sha256(cert.as_ref()))).collect::<Vec<_>>().join(", ")
            };
            return Err(certificate_error(PkiError::FingerprintMismatch { expected: hex(&self.fingerprint), found }));
        };

        // The pinned certificate becomes the only trust anchor, and the leaf must chain to it
        // exactly as it would in a normal handshake.
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match identity_of(end_entity.as_ref()).map_err(certificate_error)? {
            Identity::Node(_) => {}
            other => {
                return Err(certificate_error(PkiError::WrongIdentityKind {
                    expected: "a node identity for a server certificate",
                    found: other,
                }))
            }
        }

        // A poisoned lock only means another thread panicked while holding it; the slot itself
        // is still a plain Option and safe to overwrite.
        *self.pinned_ca.lock().unwrap_or_else(PoisonError::into_inner) = Some(ca.as_ref().to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
