//! What the node keeps in the replicated store, and under which keys. Every value is a
//! versioned record (hsu-model's codec); keys are grouped under typed prefixes so a prefix range
//! lists one kind of object.

use hsu_model::{decode_record, encode_record, CodecError, NodeId};
use hsu_net::token::TokenRecord;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const NODES: &str = "/nodes/";
pub const TOKENS: &str = "/tokens/";
pub const REVOKED: &str = "/pki/revoked/";
pub const CA: &str = "/pki/ca";
pub const CLUSTER: &str = "/cluster/info";
pub const NEXT_NODE_ID: &str = "/cluster/next-node-id";

/// Zero-padded so that keys sort by id.
pub fn node_key(id: NodeId) -> String {
    format!("{NODES}{id:020}")
}

pub fn token_key(id: &str) -> String {
    format!("{TOKENS}{id}")
}

pub fn revoked_key(id: NodeId) -> String {
    format!("{REVOKED}{id:020}")
}

/// The node id of a key under [`REVOKED`].
pub fn revoked_id(key: &[u8]) -> Option<NodeId> {
    std::str::from_utf8(key).ok()?.strip_prefix(REVOKED)?.parse().ok()
}

/// A node as recorded when it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// The node-to-node (QUIC) address.
    pub address: String,
    pub api_address: String,
    pub joined_ms: u64,
    pub version: String,
    /// Set by `hsu node remove` and `hsu node leave`; the record stays for the history.
    pub removed: bool,
    /// An agent-only node: never in Raft, holds no CA key.
    pub agent_only: bool,
    /// The sha256 of the certificate the node was enrolled with. Servers hold the CA key, so a
    /// certificate that merely chains to the CA proves little; the node must present this one.
    pub cert_sha256: [u8; 32],
}

/// The sha256 of the first certificate of a PEM bundle: a node's leaf certificate, or the CA
/// certificate a join token pins.
pub fn leaf_fingerprint(chain_pem: &str) -> Option<[u8; 32]> {
    let certs = hsu_net::pki::certs_from_pem(chain_pem).ok()?;
    certs.first().map(|c| hsu_net::pki::sha256(c.as_ref()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    Join,
    Api,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRole {
    Admin,
    ReadOnly,
}

/// A token as the cluster keeps it: the record holds a hash of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub kind: TokenKind,
    pub role: ApiRole,
    pub record: TokenRecord,
}

/// The cluster CA's certificate. Its private key is in no record: only voters hold it, in
/// their data directory (`pki/ca.key`), and a new voter fetches it from another voter over the
/// node-to-node endpoint, so no read, watch or snapshot of the store can hand it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub created_ms: u64,
}

/// A record of the node's own that could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// A value did not encode: a bug in a type, never a value worth storing empty.
    #[error("a {what} record does not encode: {source}")]
    Encode { what: &'static str, source: CodecError },
    /// A stored value did not decode (damage, or a record of another version).
    #[error("the record at {key} does not decode: {source}")]
    Decode { key: String, source: CodecError },
}

/// Encodes `value` as a versioned record.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RecordError> {
    encode_record(value).map_err(|source| RecordError::Encode { what: std::any::type_name::<T>(), source })
}

/// Decodes the record stored at `key`.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, RecordError> {
    decode_record(bytes)
        .map_err(|source| RecordError::Decode { key: String::from_utf8_lossy(key).into_owned(), source })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
