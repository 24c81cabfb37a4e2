//! The cluster's public-key infrastructure.
//!
//! This module owns everything that turns "a process on some machine" into "node 7 of this
//! cluster" or "administrator alice": the cluster certificate authority (CA), the issuing of node
//! and administrator certificates, the signing of certificate signing requests (CSRs) sent by
//! joining nodes, reading the identity back out of a peer certificate, and the rustls
//! configurations that enforce all of it on the wire.
//!
//! It lives in one place because the rules have to agree with each other exactly: the issuer
//! writes the identity as a URI SAN (`hsu://node/<id>` or `hsu://admin/<name>`), and the TLS
//! verifiers read the very same URI back, so a change on one side without the other would silently
//! break authentication. Identity is always the node id and never an IP address, because nodes
//! move between addresses while their id stays the same.
//!
//! Design points worth knowing:
//!
//! * Only the `ring` crypto provider is used, and it is passed explicitly to every rustls builder
//!   so that no process-wide default provider has to be installed.
//! * Certificate PEM produced here ([`CertifiedKey::cert_pem`] and the output of
//!   [`ClusterCa::sign_node_csr`]) is always a chain: the leaf first, then the cluster CA. Servers
//!   send that chain as is, which lets a joining node that only knows the CA fingerprint (from its
//!   join token) find and pin the CA during its first handshake.
//! * The CA, not the requester, decides the identity in a certificate: a CSR contributes its
//!   public key and nothing else.
//! * Revocation is by identity and is checked on every handshake through a caller-supplied
//!   predicate, so revoking a node takes effect for its next connection without reissuing
//!   anything.

use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName as TlsDistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Suffix of every DNS-style name the cluster uses as TLS server name and DNS SAN.
const DNS_SUFFIX: &str = ".hsu";
/// Prefix of the URI SAN that carries a node identity.
const NODE_URI_PREFIX: &str = "hsu://node/";
/// Prefix of the URI SAN that carries an agent-only node identity.
const AGENT_URI_PREFIX: &str = "hsu://agent/";
/// Prefix of the URI SAN that carries an administrator identity.
const ADMIN_URI_PREFIX: &str = "hsu://admin/";
/// Scheme shared by all identity URIs; any URI SAN with it must parse as an identity.
const HSU_URI_SCHEME: &str = "hsu://";
/// Lifetime of a cluster CA: long, because replacing it means re-issuing every certificate.
const CA_VALIDITY_DAYS: u32 = 3650;
/// Longest validity accepted for a leaf certificate; a leaf cannot usefully outlive the CA.
const MAX_LEAF_VALIDITY_DAYS: u32 = CA_VALIDITY_DAYS;
/// Certificates start being valid this long before they were issued, so that a node whose clock
/// runs somewhat behind the issuer's does not reject a certificate that was just handed to it.
const CLOCK_SKEW_ALLOWANCE_SECS: i64 = 60 * 60;
/// Longest admin name: the name is one DNS label in `admin-<name>.hsu`, and labels are capped
/// at 63 octets.
const MAX_ADMIN_NAME_LEN: usize = 63;
/// Longest cluster name: it becomes the CA's organization name, whose X.520 upper bound is 64.
const MAX_CLUSTER_NAME_LEN: usize = 64;

/// The TLS server name every node's certificate carries for the public gRPC API.
pub const API_SERVER_NAME: &str = "api.hsu";

/// Who a certificate says its holder is. Identity is the node id, never an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A server node (one that may hold a replica of the store), named by its numeric node id.
    Node(u64),
    /// An agent-only node: it runs units but never holds the store, the CA key or a vote. The
    /// role is in the certificate, so any node can tell an agent from a server without asking
    /// the store (a joining server has no store yet).
    Agent(u64),
    /// An administrator, named by a short `[a-z0-9-]{1,63}` name.
    Admin(String),
}

impl Identity {
    /// The DNS-style name used as TLS server name / SAN: "node-<id>.hsu" for nodes (servers and
    /// agent-only alike, so a caller dials any node by id), "admin-<name>.hsu" for admins.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Node(id) | Identity::Agent(id) => format!("node-{id}{DNS_SUFFIX}"),
            Identity::Admin(name) => format!("admin-{name}{DNS_SUFFIX}"),
        }
    }

    /// The URI SAN that carries this identity in a certificate: "hsu://node/<id>",
    /// "hsu://agent/<id>" or "hsu://admin/<name>". This, not the DNS name, is what
    /// [`identity_of`] reads back.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{NODE_URI_PREFIX}{id}"),
            Identity::Agent(id) => format!("{AGENT_URI_PREFIX}{id}"),
            Identity::Admin(name) => format!("{ADMIN_URI_PREFIX}{name}"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Agent(id) => write!(f, "agent-only node {id}"),
            Identity::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

impl Identity {
    /// The node id of a node identity (server or agent-only), `None` for an administrator.
    pub fn node_id(&self) -> Option<u64> {
        match self {
            Identity::Node(id) | Identity::Agent(id) => Some(*id),
            Identity::Admin(_) => None,
        }
    }
}

/// A certificate chain and its private key, both PEM.
///
/// `cert_pem` holds the leaf certificate followed by the cluster CA certificate, because servers
/// must present that whole chain (see the module docs). `key_pem` is a PKCS#8 private key and must
/// only ever be written to disk with [`write_private`].
#[derive(Clone)]
pub struct CertifiedKey {
    /// The leaf certificate, then the cluster CA certificate.
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    // The private key is left out on purpose: debug output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// Errors of the PKI. Messages are lowercase and say what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Building or signing a certificate or CSR failed inside rcgen.
    #[error("could not {action}: {source}")]
    Generation {
        /// What was being done, e.g. "sign the node certificate".
        action: &'static str,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },
    /// A PEM document did not contain what was expected.
    #[error("invalid pem: expected {expected}, found {found}")]
    InvalidPem {
        /// What the PEM should have contained.
        expected: &'static str,
        /// What it contained instead, or why it could not be read.
        found: String,
    },
    /// A certificate could not be parsed or is unsuitable for its role.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The cluster CA material is inconsistent (not a CA, or key and certificate do not match).
    #[error("invalid cluster ca: {0}")]
    InvalidCa(String),
    /// A CSR could not be parsed or carries an unsupported public key.
    #[error("invalid csr: {0}")]
    InvalidCsr(String),
    /// A CSR parsed, but its self-signature does not verify.
    #[error(
        "invalid csr: expected a valid signature by the requested public key, found a signature \
         that does not verify (the request was altered or not signed by its own key)"
    )]
    CsrSignatureInvalid,
    /// A certificate carries no `hsu://` identity URI.
    #[error(
        "certificate carries no hsu identity: expected a uri san \"hsu://node/<id>\" or \
         \"hsu://admin/<name>\", found {found}"
    )]
    MissingIdentity {
        /// A description of the URI SANs that were present.
        found: String,
    },
    /// An `hsu://` URI SAN is present but does not parse.
    #[error("malformed hsu identity {uri:?}: {reason}")]
    MalformedIdentity {
        /// The offending URI.
        uri: String,
        /// What was expected instead.
        reason: String,
    },
    /// More than one `hsu://` URI SAN, so the identity is ambiguous.
    #[error("ambiguous hsu identity: expected exactly one hsu uri san, found {0:?}")]
    AmbiguousIdentity(Vec<String>),
    /// The certificate's identity is of the wrong kind for where it is used.
    #[error("wrong kind of identity: expected {expected}, found {found}")]
    WrongIdentityKind {
        /// What kind was required.
        expected: &'static str,
        /// The identity that was found.
        found: Identity,
    },
    /// An administrator name outside `[a-z0-9-]{1,63}`.
    #[error("invalid admin name {0:?}: expected 1 to 63 characters of [a-z0-9-]")]
    InvalidAdminName(String),
    /// A cluster name that cannot be put into the CA certificate.
    #[error("invalid cluster name {0:?}: expected 1 to 64 printable characters")]
    InvalidClusterName(String),
    /// A validity period outside the supported range.
    #[error("invalid validity: expected 1 to {max} days, found {found}")]
    InvalidValidity {
        /// Largest accepted number of days.
        max: u32,
        /// The requested number of days.
        found: u32,
    },
    /// A server certificate chain that does not include the CA after the leaf.
    #[error(
        "incomplete certificate chain: expected the leaf followed by the cluster ca, found \
         {found} certificate(s)"
    )]
    IncompleteChain {
        /// How many certificates the PEM held.
        found: usize,
    },
    /// A pinned first-contact handshake found no CA with the pinned fingerprint.
    #[error(
        "ca fingerprint mismatch: expected a ca certificate with sha256 {expected} in the \
         server's chain, found {found}"
    )]
    FingerprintMismatch {
        /// Hex sha256 the join token pinned.
        expected: String,
        /// Hex sha256 of each non-leaf certificate the server presented.
        found: String,
    },
    /// rustls rejected a configuration.
    #[error("tls configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls could not build a client certificate verifier.
    #[error("could not build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The operating system's random number generator failed.
    #[error("system random number generator failed: expected random bytes, found an error")]
    Random,
    /// The system clock is outside the range a certificate can express.
    #[error("system clock out of range: expected a time after the unix epoch, found {0}")]
    Clock(String),
}

/// The cluster certificate authority: its certificate and the key that signs every cluster
/// certificate.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
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

    fn issue_with_fresh_key(&self, identity: &Identity, days: u32) -> Result<CertifiedKey, PkiError> {
        let params = leaf_params(identity, days)?;
        let key =
            KeyPair::generate().map_err(|source| PkiError::Generation { action: "generate a leaf key", source })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generation { action: "sign the leaf certificate", source })?;
        Ok(CertifiedKey { cert_pem: self.chain_pem(&cert.pem()), key_pem: key.serialize_pem() })
    }

    fn chain_pem(&self, leaf_pem: &str) -> String {
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
fn leaf_params(identity: &Identity, days: u32) -> Result<CertificateParams, PkiError> {
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

fn ia5(s: String) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|source| PkiError::Generation { action: "encode a subject alternative name", source })
}

fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
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
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // Clearing the top bit keeps the DER INTEGER positive; setting the next one keeps it exactly
    // 16 bytes long, so no serial is accidentally shorter than the others.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validate_admin_name(name: &str) -> Result<(), PkiError> {
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

/// Reads the identity from a certificate (DER), from its URI SAN "hsu://node/<id>" or
/// "hsu://admin/<name>". Errors clearly if absent, malformed or ambiguous.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse_certificate(cert_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(format!("unreadable subject alt names: {e}")))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let hsu_uris: Vec<&str> = uris.iter().copied().filter(|uri| uri.starts_with(HSU_URI_SCHEME)).collect();
    match hsu_uris.as_slice() {
        [] => Err(PkiError::MissingIdentity {
            found: if uris.is_empty() { "no uri san".to_owned() } else { format!("only {uris:?}") },
        }),
        [uri] => parse_identity_uri(uri),
        many => Err(PkiError::AmbiguousIdentity(many.iter().map(|uri| (*uri).to_owned()).collect())),
    }
}

/// Only the canonical decimal form is accepted ("7", not "07" or "+7"), so that every node id
/// has exactly one spelling and identities compare reliably.
fn parse_node_id(id: &str) -> Option<u64> {
    let canonical = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && (id == "0" || !id.starts_with('0'));
    id.parse::<u64>().ok().filter(|_| canonical)
}

fn parse_identity_uri(uri: &str) -> Result<Identity, PkiError> {
    let malformed = |reason: &str| PkiError::MalformedIdentity { uri: uri.to_owned(), reason: reason.to_owned() };
    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
        parse_node_id(id)
            .map(Identity::Node)
            .ok_or_else(|| malformed("expected a decimal node id without leading zeros"))
    } else if let Some(id) = uri.strip_prefix(AGENT_URI_PREFIX) {
        parse_node_id(id)
            .map(Identity::Agent)
            .ok_or_else(|| malformed("expected a decimal node id without leading zeros"))
    } else if let Some(name) = uri.strip_prefix(ADMIN_URI_PREFIX) {
        validate_admin_name(name)
            .map(|()| Identity::Admin(name.to_owned()))
            .map_err(|_| malformed("expected an admin name of 1 to 63 characters of [a-z0-9-]"))
    } else {
        Err(malformed("expected \"hsu://node/<id>\", \"hsu://agent/<id>\" or \"hsu://admin/<name>\""))
    }
}

fn parse_certificate(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::InvalidCertificate(format!("unparseable der: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(format!(
            "expected nothing after the certificate, found {} trailing bytes",
            rest.len()
        )));
    }
    Ok(cert)
}

/// sha256 of arbitrary bytes (used for CA fingerprints and token secrets).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses every CERTIFICATE block of a PEM document into rustls types, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidPem { expected: "CERTIFICATE blocks", found: e.to_string() })?;
    if certs.is_empty() {
        return Err(PkiError::InvalidPem { expected: "at least one CERTIFICATE block", found: "none".to_owned() });
    }
    Ok(certs)
}

/// Parses the first private key block of a PEM document into a rustls type.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::InvalidPem { expected: "a PRIVATE KEY block", found: e.to_string() })
}

/// Writes a private file atomically (temp file in the same dir, fsync, rename) with mode 0600
/// from creation (never world-readable even briefly).
///
/// Readers see either the old or the new contents, never a torn write, and a crash leaves at worst
/// a stray `.<name>.tmp-*` file next to the target. Unix only, like the rest of HSU.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("expected a path to a file, found {}", path.display()))
    })?;
    // The temp file must be in the target's directory: rename is only atomic within one file
    // system.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| {
        let mut file = create_private(&tmp)?;
        // The umask can only remove bits from 0600; setting it again makes the mode exact even
        // under an unusual umask.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Syncing the directory makes the rename itself durable across a power loss.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: after a failed rename the temp file would otherwise linger. If the rename
        // succeeded the temp path no longer exists and this does nothing.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file that is private to its owner from the first instant.
///
/// The mode is given to open(2) itself, so the file never exists with wider permissions even
/// briefly; `create_new` refuses to follow a pre-planted file or symlink at the path.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// The only crypto provider HSU uses, passed explicitly everywhere.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Wraps a PKI error so that it can travel through rustls as a certificate error.
fn certificate_error(err: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(TlsRejection(err)))))
}

/// A [`PkiError`] on its way through rustls.
///
/// rustls renders the errors it carries with `{:?}`, so this wrapper's `Debug` prints the
/// human-readable message; otherwise "ca fingerprint mismatch: ..." would reach the user as a
/// derived struct dump.
struct TlsRejection(PkiError);

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
    inner: Arc<dyn ClientCertVerifier>,
    is_revoked: RevocationCheck,
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

    fn build(ca_cert_der: Vec<u8>, is_revoked: RevocationCheck, mandatory: bool) -> Result<Arc<Self>, PkiError> {
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
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    pinned_ca: PinnedCa,
    algorithms: WebPkiSupportedAlgorithms,
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

/// Lowercase hex, used in messages about fingerprints.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Encodes DER as a PEM block with 64-character lines (RFC 7468).
/// A DER certificate as PEM text (what tonic, grpc libraries and files want).
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k input bytes yields k + 1 significant characters; the rest is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                b64.push(char::from(ALPHABET[index as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting its bytes into lines never splits a character.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
