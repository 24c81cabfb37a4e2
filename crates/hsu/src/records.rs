//! The node's side of its records in the replicated store: the record types are hsu-model's
//! (`cluster`, re-exported here) and their keys are `hsu_model::keys`; this adds the errors of
//! encoding and decoding them as the node reports them, and the certificate fingerprint a node
//! record pins.

use hsu_model::keys::At;
use hsu_model::{decode_record, encode_record, CodecError};
use hsu_store::Op;
use serde::{de::DeserializeOwned, Serialize};

pub use hsu_model::cluster::{ApiRole, CaRecord, ClusterInfo, NodeRecord, TokenEntry, TokenKind};

/// The sha256 of the first certificate of a PEM bundle: a node's leaf certificate, or the CA
/// certificate a join token pins.
pub fn leaf_fingerprint(chain_pem: &str) -> Option<[u8; 32]> {
    let certs = hsu_net::pki::certs_from_pem(chain_pem).ok()?;
    certs.first().map(|c| hsu_net::pki::sha256(c.as_ref()))
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

/// Puts `value` as the record at `at` (whose space holds only `V`).
pub fn put<V: Serialize>(at: &At<V>, value: &V) -> Result<Op, RecordError> {
    Ok(hsu_store::record::put(at, encode(value)?))
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
