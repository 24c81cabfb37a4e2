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

mod ca;
mod pem;
mod tls;

use ca::*;
pub use ca::{generate_csr, ClusterCa};
use pem::*;
pub use pem::{cert_der_to_pem, certs_from_pem, key_from_pem, write_private};
#[cfg(test)]
use tls::*;
pub use tls::{
    client_config, pinned_client_config, pki_error_of, server_config, server_config_optional_client_auth, PinnedCa,
    RevocationAwareVerifier, RevocationCheck,
};

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

#[cfg(test)]
mod tests;
