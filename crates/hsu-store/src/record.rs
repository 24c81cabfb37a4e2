//! Versioned records over the store's bytes: what every writer of records shares, so that no
//! crate keeps its own copy — a compare that a key is unchanged since it was read, a put, a put
//! of a record, and a range read back as typed records (those that do not decode set apart).

use hsu_model::{decode_record, encode_record, CodecError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Compare, CompareOp, CompareTarget, KeyValue, Op};

/// A record as read, with the key and mod revision a write compares on.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub key: Vec<u8>,
    pub mod_revision: u64,
    pub value: T,
}

/// The key is as it was read: its mod revision is still `mod_revision` (0: it does not exist).
pub fn unchanged(key: impl AsRef<[u8]>, mod_revision: u64) -> Compare {
    Compare { key: key.as_ref().to_vec(), target: CompareTarget::ModRevision(mod_revision), op: CompareOp::Equal }
}

/// Puts `value` (already encoded) at `key`, without a lease.
pub fn put(key: impl AsRef<[u8]>, value: Vec<u8>) -> Op {
    Op::Put { key: key.as_ref().to_vec(), value, lease: 0 }
}

/// Puts `value` as a versioned record at `key`.
pub fn put_record<T: Serialize>(key: impl AsRef<[u8]>, value: &T) -> Result<Op, CodecError> {
    Ok(put(key, encode_record(value)?))
}

/// The keys of records that do not decode, with why.
pub type Undecodable = Vec<(Vec<u8>, CodecError)>;

/// The records of a range: those that decode, and those that do not.
pub fn records_of<T: DeserializeOwned>(kvs: Vec<KeyValue>) -> (Vec<Versioned<T>>, Undecodable) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for kv in kvs {
        match decode_record::<T>(&kv.value) {
            Ok(value) => good.push(Versioned { key: kv.key, mod_revision: kv.mod_revision, value }),
            Err(e) => bad.push((kv.key, e)),
        }
    }
    (good, bad)
}
