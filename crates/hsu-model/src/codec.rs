//! The record encoding for everything HSU persists or puts on the wire: one format-version byte,
//! a CRC-32 of the payload, then the payload in bincode's standard configuration.
//!
//! The version byte lets a later release read records written by this one (and refuse records
//! from a newer one with a clear message instead of misreading them). The checksum exists because
//! a storage engine's own integrity checks do not cover every way a record can go bad (a bit flip
//! in a value, a record cut short by a bug), and a store that silently serves a damaged record is
//! worse than one that refuses to open.

use serde::{de::DeserializeOwned, Serialize};

/// The format version written by this build.
pub const RECORD_VERSION: u8 = 1;

/// Bytes in front of the payload: version (1) and CRC-32 (4).
const HEADER_LEN: usize = 5;

/// Why a record could not be decoded. Messages say what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record is {found} bytes long, expected at least {HEADER_LEN} (truncated)")]
    Truncated { found: usize },
    #[error("record has format version {found}, this build reads version {RECORD_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x} over {len} payload bytes")]
    Checksum { stored: u32, computed: u32, len: usize },
    #[error("record payload does not decode: {0}")]
    Payload(String),
    #[error("record payload has {0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("value does not encode: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// No record is larger than this (a frame is at most 16 MiB): a length prefix that claims more
/// is refused before anything is allocated for it.
pub const MAX_RECORD: usize = 64 << 20;

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD>,
> {
    config().with_limit::<MAX_RECORD>()
}

/// Encodes `value` as a versioned, checksummed record.
pub fn encode_record<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![RECORD_VERSION, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a record written by [`encode_record`], checking version, checksum and length.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated { found: bytes.len() });
    }
    if bytes[0] != RECORD_VERSION {
        return Err(CodecError::UnknownVersion { found: bytes[0] });
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed, len: payload.len() });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(payload, decode_config()).map_err(|e| CodecError::Payload(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
