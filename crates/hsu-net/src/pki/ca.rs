//! The cluster CA: creating it, loading it from PEM, and issuing node, agent and administrator
//! certificates (from a CSR for joining nodes: the CA decides the identity, the CSR gives only its
//! key); serial numbers, validity and names checked here.

use super::*;

/// The cluster certificate authority: its certificate and the key that signs every cluster
/// certificate.
pub struct ClusterCa {
    pub(super) cert_pem: String,
    pub(super) cert_der: Vec<u8>,
    pub(super) issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    // Only public facts are printed; the signing key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("fingerprint", &hex(&self.fingerprint())).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new self-signed cluster CA, valid for ten years, with a fresh P-256 key.
    ///
    /// `cluster_name` becomes the CA's organization name; it is informational and helps an
    /// operator tell the CAs of different clusters apart.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        if cluster_name.is_empty()
            || cluster_name.chars().count() > MAX_CLUSTER_NAME_LEN
            || cluster_name.chars().any(char::is_control)
        {
            return Err(PkiError::InvalidClusterName(cluster_name.to_owned()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "hsu cluster ca");
        dn.push(DnType::OrganizationName, cluster_name);
        params.distinguished_name = dn;
        // A path length of zero lets the CA sign leaves but no intermediate CAs: even a
        // certificate mistakenly issued with CA powers could not vouch for further certificates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, CA_VALIDITY_DAYS)?;
        params.serial_number = Some(random_serial()?);

        let key =
            KeyPair::generate().map_err(|source| PkiError::Generation { action: "generate the ca key", source })?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generation { action: "self-sign the ca certificate", source })?;
        Ok(Self { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), issuer: Issuer::new(params, key) })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    ///
    /// The certificate must be a CA certificate and the key must be its key; both are checked
    /// here so that a mix-up shows up at load time rather than as failing handshakes later.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let certs = certs_from_pem(cert_pem)?;
        let [cert] = certs.as_slice() else {
            return Err(PkiError::InvalidPem {
                expected: "exactly one ca certificate",
                found: format!("{} certificates", certs.len()),
            });
        };
        let cert_der = cert.as_ref().to_vec();
        let parsed = parse_certificate(&cert_der)?;
        let is_ca = parsed
            .basic_constraints()
            .map_err(|e| PkiError::InvalidCa(format!("unreadable basic constraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCa(
                "expected basic constraints with ca=true, found a certificate that is not a ca".to_owned(),
            ));
        }

        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::InvalidPem { expected: "a pkcs#8 private key", found: e.to_string() })?;
        if key.subject_public_key_info().as_slice() != parsed.public_key().raw {
            return Err(PkiError::InvalidCa(
                "expected the private key of the ca certificate, found a different key".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(cert, key)
            .map_err(|source| PkiError::Generation { action: "load the ca as an issuer", source })?;
        Ok(Self {
            // The PEM is re-encoded from the DER so that nothing else that happened to be in the
            // input (comments, or worse, a private key) is carried into certificate chains.
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key as PKCS#8 PEM. Store it only with [`write_private`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// sha256 of the CA certificate's DER, the value pinned by join tokens.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// Issues a certificate for a node with a fresh key: SAN DNS "node-<id>.hsu" and URI
    /// "hsu://node/<id>"; usable as both TLS server and client (EKU serverAuth+clientAuth);
    /// validity `days`. `cert_pem` of the result is the chain leaf + CA.
    pub fn issue_node(&self, node_id: u64, days: u32) -> Result<CertifiedKey, PkiError> {
        self.issue_with_fresh_key(&Identity::Node(node_id), days)
    }

    /// "hsu://agent/<id>": an agent-only node's certificate (serves node-to-node requests as
    /// "node-<id>.hsu", but not the public API).
    pub fn issue_agent(&self, node_id: u64, days: u32) -> Result<CertifiedKey, PkiError> {
        self.issue_with_fresh_key(&Identity::Agent(node_id), days)
    }

    /// Signs a CSR for `identity` (a server or an agent-only node). The CA decides the identity:
    /// whatever subject/SANs the CSR asks for are ignored and replaced by `identity`. Returns the
    /// certificate PEM as the chain leaf + CA. The CSR's signature must verify, which proves the
    /// requester holds the private key of the public key being certified.
    pub fn sign_node_csr(&self, csr_pem: &str, identity: &Identity, days: u32) -> Result<String, PkiError> {
        if identity.node_id().is_none() {
            return Err(PkiError::WrongIdentityKind {
                expected: "a node identity for a node CSR",
                found: identity.clone(),
            });
        }
        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| PkiError::InvalidPem { expected: "a CERTIFICATE REQUEST block", found: e.to_string() })?;
        let (rest, csr) = X509CertificationRequest::from_der(csr_der.as_ref())
            .map_err(|e| PkiError::InvalidCsr(format!("unparseable request: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCsr(format!(
                "expected nothing after the request, found {} trailing bytes",
                rest.len()
            )));
        }
        csr.verify_signature().map_err(|_| PkiError::CsrSignatureInvalid)?;

        // Only the public key is taken from the request. Its subject, requested SANs and any
        // other requested extensions are deliberately never read, so a node cannot talk the CA
        // into another node's or an administrator's identity.
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| {
                PkiError::InvalidCsr(format!("expected a supported public key (ecdsa, ed25519 or rsa), found: {e}"))
            })?;
        let params = leaf_params(identity, days)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| PkiError::Generation { action: "sign the node certificate", source })?;
        Ok(self.chain_pem(&cert.pem()))
    }

    /// Client-only certificate (EKU clientAuth) for an administrator: SAN DNS "admin-<name>.hsu",
    /// URI "hsu://admin/<name>". Name must be [a-z0-9-]{1,63}. `cert_pem` of the result is the
    /// chain leaf + CA.
    pub fn issue_admin(&self, name: &str, days: u32) -> Result<CertifiedKey, PkiError> {
        validate_admin_name(name)?;
        self.issue_with_fresh_key(&Identity::Admin(name.to_owned()), days)
    }

    pub(super) fn issue_with_fresh_key(&self, identity: &Identity, days: u32) -> Result<CertifiedKey, PkiError> {
        let params = leaf_params(identity, days)?;
        let key =
            KeyPair::generate().map_err(|source| PkiError::Generation { action: "generate a leaf key", source })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generation { action: "sign the leaf certificate", source })?;
        Ok(CertifiedKey { cert_pem: self.chain_pem(&cert.pem()), key_pem: key.serialize_pem() })
    }

    pub(super) fn chain_pem(&self, leaf_pem: &str) -> String {
        let mut chain = String::with_capacity(leaf_pem.len() + self.cert_pem.len() + 1);
        chain.push_str(leaf_pem);
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.cert_pem);
        chain
    }
}

/// The parameters shared by every leaf certificate; only the identity and its EKUs differ.
pub(super) fn leaf_params(identity: &Identity, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.dns_name());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(ia5(identity.dns_name())?), SanType::URI(ia5(identity.uri())?)];
    if let Identity::Node(_) = identity {
        // Every node serves the public API under one shared name, so a client can reach any
        // node without knowing its id; node-to-node traffic still checks "node-<id>.hsu".
        params.subject_alt_names.push(SanType::DnsName(ia5(API_SERVER_NAME.to_string())?));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        // Nodes both serve and dial each other, so they need both purposes.
        Identity::Node(_) | Identity::Agent(_) => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
        // An administrator only ever dials in; without serverAuth its certificate cannot be used
        // to impersonate a node.
        Identity::Admin(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days)?;
    // rcgen would otherwise derive the serial from the public key, which gives two certificates
    // for the same key (a renewal from the same CSR) the same serial; RFC 5280 wants them unique.
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

pub(super) fn ia5(s: String) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|source| PkiError::Generation { action: "encode a subject alternative name", source })
}

pub(super) fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_LEAF_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity { max: MAX_LEAF_VALIDITY_DAYS, found: days });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| PkiError::Clock(e.to_string()))?;
    let now_secs = i64::try_from(now.as_secs()).map_err(|e| PkiError::Clock(e.to_string()))?;
    let not_before = time::OffsetDateTime::from_unix_timestamp(now_secs - CLOCK_SKEW_ALLOWANCE_SECS)
        .map_err(|e| PkiError::Clock(e.to_string()))?;
    let not_after = time::OffsetDateTime::from_unix_timestamp(now_secs)
        .ok()
        .and_then(|now| now.checked_add(time::Duration::days(i64::from(days))))
        .ok_or_else(|| PkiError::Clock(format!("now + {days} days overflows")))?;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(())
}

/// A random, positive 128-bit serial number.
pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // Clearing the top bit keeps the DER INTEGER positive; setting the next one keeps it exactly
    // 16 bytes long, so no serial is accidentally shorter than the others.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(super) fn validate_admin_name(name: &str) -> Result<(), PkiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_ADMIN_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(PkiError::InvalidAdminName(name.to_owned()))
    }
}

/// A fresh key pair and a CSR for it (what a joining node sends). Returns (csr_pem, key_pem).
///
/// The CSR carries no meaningful subject or SANs because the CA assigns the identity anyway.
pub fn generate_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|source| PkiError::Generation { action: "generate a node key", source })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "hsu node join request");
    params.distinguished_name = dn;
    let csr =
        params.serialize_request(&key).map_err(|source| PkiError::Generation { action: "create the csr", source })?;
    let csr_pem = csr.pem().map_err(|source| PkiError::Generation { action: "encode the csr as pem", source })?;
    Ok((csr_pem, key.serialize_pem()))
}
