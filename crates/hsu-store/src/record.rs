//! Versioned records over the store's bytes: what every writer of records shares, so that no
//! crate keeps its own copy — a compare that a key is unchanged since it was read, a put, a put
//! of a record, and a range read back as typed records (those that do not decode set apart).
//! With the typed keys of `hsu_model::keys` ([`At`], [`Within`]) the record type follows from
//! the key: [`put_at`], [`records_in`], and `KeyRange::from` a key or a range.

use hsu_model::keys::{At, Within};
use hsu_model::{decode_record, encode_record, CodecError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Compare, CompareOp, CompareTarget, KeyRange, KeyValue, Op};

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

/// Puts `value` as the record at `at` (a key of `hsu_model::keys`, which holds only `V`).
pub fn put_at<V: Serialize>(at: &At<V>, value: &V) -> Result<Op, CodecError> {
    put_record(at, value)
}

impl<V> From<&At<V>> for KeyRange {
    fn from(at: &At<V>) -> KeyRange {
        KeyRange::Key(at.as_bytes().to_vec())
    }
}

impl<V> From<&Within<V>> for KeyRange {
    fn from(within: &Within<V>) -> KeyRange {
        KeyRange::Prefix(within.prefix().as_bytes().to_vec())
    }
}

/// The `V` records of a range read from `within`: those that decode, and those that do not.
pub fn records_in<V: DeserializeOwned>(_within: &Within<V>, kvs: Vec<KeyValue>) -> (Vec<Versioned<V>>, Undecodable) {
    records_of(kvs)
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
