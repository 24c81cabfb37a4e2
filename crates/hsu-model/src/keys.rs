//! Every key space of the cluster's store, in one place: the prefix, the name that addresses a
//! key in it ([`KeyKind`]), and the record type its values hold, encoded with [`crate::codec`].
//! A [`Space`] makes a key only from a name of its own kind and encodes only its own type, so a
//! node record cannot land under `/tokens/` and a revision key always sorts by number.
//!
//! The KV API's keys are the one space that holds no records: under [`USER_KV`] the values are
//! the client's own bytes.

use std::fmt::Write as _;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::{CaRecord, ClusterInfo, NodeRecord, TokenEntry};
use crate::service::ServiceRecord;
use crate::state::{DeploymentRecord, InstanceRecord, JobRecord, RevisionRecord};
use crate::{decode_record, encode_record, CodecError, NodeId};

/// How the names of one space's keys are written after its prefix.
pub trait KeyKind {
    /// What names one key.
    type Name<'a>;
    fn write(name: Self::Name<'_>, out: &mut String);
}

/// A node id, zero-padded to 20 digits so that keys sort by id.
pub enum ById {}
/// A string as it is (a token id).
pub enum ByText {}
/// `namespace/name`.
pub enum ByName {}
/// `namespace/name/number`, the number zero-padded to 10 digits so that they sort by it.
pub enum ByRevision {}
/// `node/instance id`, the node padded as in [`ById`], so that a node watches only its own.
pub enum ByInstance {}
/// The prefix is the whole key: a space of one record (`prefix()` is its key).
pub enum Single {}

impl KeyKind for ById {
    type Name<'a> = NodeId;
    fn write(id: NodeId, out: &mut String) {
        let _ = write!(out, "{id:020}");
    }
}

impl KeyKind for ByText {
    type Name<'a> = &'a str;
    fn write(text: &str, out: &mut String) {
        out.push_str(text);
    }
}

impl KeyKind for ByName {
    type Name<'a> = (&'a str, &'a str);
    fn write((namespace, name): (&str, &str), out: &mut String) {
        let _ = write!(out, "{namespace}/{name}");
    }
}

impl KeyKind for ByRevision {
    type Name<'a> = (&'a str, &'a str, u64);
    fn write((namespace, name, number): (&str, &str, u64), out: &mut String) {
        let _ = write!(out, "{namespace}/{name}/{number:010}");
    }
}

impl KeyKind for ByInstance {
    type Name<'a> = (NodeId, &'a str);
    fn write((node, id): (NodeId, &str), out: &mut String) {
        let _ = write!(out, "{node:020}/{id}");
    }
}

impl KeyKind for Single {
    type Name<'a> = ();
    fn write((): (), _: &mut String) {}
}

/// The key of one `V` record. It reads as the key's text wherever a key is taken (`&str`,
/// bytes), and the readers and writers that take an `At<V>` decode and encode only a `V`.
pub struct At<V> {
    key: String,
    types: PhantomData<fn() -> V>,
}

impl<V> At<V> {
    fn new(key: String) -> Self {
        At { key, types: PhantomData }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.key.into_bytes()
    }
}

impl<V> Clone for At<V> {
    fn clone(&self) -> Self {
        At::new(self.key.clone())
    }
}

impl<V> std::fmt::Debug for At<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key.fmt(f)
    }
}

impl<V> std::fmt::Display for At<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

impl<V> std::ops::Deref for At<V> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.key
    }
}

impl<V> AsRef<[u8]> for At<V> {
    fn as_ref(&self) -> &[u8] {
        self.key.as_bytes()
    }
}

impl<V> AsRef<str> for At<V> {
    fn as_ref(&self) -> &str {
        &self.key
    }
}

impl<V> From<At<V>> for String {
    fn from(at: At<V>) -> String {
        at.key
    }
}

impl<V> From<At<V>> for Vec<u8> {
    fn from(at: At<V>) -> Vec<u8> {
        at.key.into_bytes()
    }
}

impl<V> PartialEq<&str> for At<V> {
    fn eq(&self, other: &&str) -> bool {
        self.key == *other
    }
}

/// A range of `V` records: a whole space, or one deployment's revisions, or one node's instances.
pub struct Within<V> {
    prefix: String,
    types: PhantomData<fn() -> V>,
}

impl<V> Within<V> {
    fn new(prefix: String) -> Self {
        Within { prefix, types: PhantomData }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.prefix.into_bytes()
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key.starts_with(self.prefix.as_bytes())
    }
}

impl<V> Clone for Within<V> {
    fn clone(&self) -> Self {
        Within::new(self.prefix.clone())
    }
}

impl<V> std::fmt::Debug for Within<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}*", self.prefix)
    }
}

/// One key space: its keys start with `prefix`, are named by `K`, and hold `V` records.
pub struct Space<K, V> {
    prefix: &'static str,
    types: PhantomData<fn(K) -> V>,
}

impl<K: KeyKind, V> Space<K, V> {
    const fn new(prefix: &'static str) -> Self {
        Space { prefix, types: PhantomData }
    }

    /// What every key of the space starts with (a range over the whole space).
    pub const fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The key of `name`.
    pub fn key(&self, name: K::Name<'_>) -> At<V> {
        let mut out = self.prefix.to_string();
        K::write(name, &mut out);
        At::new(out)
    }

    /// Every key of the space.
    pub fn all(&self) -> Within<V> {
        Within::new(self.prefix.to_string())
    }
}

impl<K, V: Serialize> Space<K, V> {
    pub fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        encode_record(value)
    }
}

impl<K, V: DeserializeOwned> Space<K, V> {
    pub fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        decode_record(bytes)
    }
}

impl<V> Space<ById, V> {
    /// The id a key of this space names, if it is one.
    pub fn id_of(&self, key: &[u8]) -> Option<NodeId> {
        std::str::from_utf8(key).ok()?.strip_prefix(self.prefix)?.parse().ok()
    }
}

impl<V> Space<ByName, V> {
    /// The key of object `name` of `namespace`.
    pub fn key_of(&self, namespace: &str, name: &str) -> At<V> {
        self.key((namespace, name))
    }
}

impl<V> Space<ByRevision, V> {
    /// The key of revision `number` of deployment `namespace/name`.
    pub fn key_of(&self, namespace: &str, name: &str, number: u64) -> At<V> {
        self.key((namespace, name, number))
    }

    /// The prefix of one deployment's revisions.
    pub fn of(&self, namespace: &str, name: &str) -> Within<V> {
        Within::new(format!("{}{namespace}/{name}/", self.prefix))
    }
}

impl<V> Space<ByInstance, V> {
    /// The key of instance `id` on `node`.
    pub fn key_of(&self, node: NodeId, id: &str) -> At<V> {
        self.key((node, id))
    }

    /// The prefix of one node's instances.
    pub fn of_node(&self, node: NodeId) -> Within<V> {
        Within::new(format!("{}{node:020}/", self.prefix))
    }
}

pub const DEPLOYMENTS: Space<ByName, DeploymentRecord> = Space::new("/deployments/");
pub const REVISIONS: Space<ByRevision, RevisionRecord> = Space::new("/revisions/");
pub const INSTANCES: Space<ByInstance, InstanceRecord> = Space::new("/instances/");
pub const JOBS: Space<ByName, JobRecord> = Space::new("/jobs/");
/// A service's endpoints, written by the leader's controller.
pub const SERVICES: Space<ByName, ServiceRecord> = Space::new("/services/");
pub const NODES: Space<ById, NodeRecord> = Space::new("/nodes/");
pub const TOKENS: Space<ByText, TokenEntry> = Space::new("/tokens/");
/// A revoked node's certificate; the value is when it was revoked (ms since the Unix epoch).
pub const REVOKED: Space<ById, u64> = Space::new("/pki/revoked/");
pub const CA: Space<Single, CaRecord> = Space::new("/pki/ca");
pub const CLUSTER: Space<Single, ClusterInfo> = Space::new("/cluster/info");
/// The id the next node to join gets.
pub const NEXT_NODE_ID: Space<Single, u64> = Space::new("/cluster/next-node-id");

/// The KV API's keys: a client's key `k` is stored as `/kv/k`, its value as the client sent it.
pub const USER_KV: &str = "/kv/";

/// Every prefix above, for the check that no space's keys fall into another's.
pub const PREFIXES: [&str; 12] = [
    DEPLOYMENTS.prefix(),
    SERVICES.prefix(),
    REVISIONS.prefix(),
    INSTANCES.prefix(),
    JOBS.prefix(),
    NODES.prefix(),
    TOKENS.prefix(),
    REVOKED.prefix(),
    CA.prefix(),
    CLUSTER.prefix(),
    NEXT_NODE_ID.prefix(),
    USER_KV,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_holds_another_spaces_keys() {
        for a in PREFIXES {
            for b in PREFIXES {
                assert!(a == b || !b.starts_with(a), "keys of {b} fall under {a}");
            }
        }
    }

    #[test]
    fn keys_sort_by_their_numbers_and_name_their_parts() {
        assert_eq!(NODES.key(7), "/nodes/00000000000000000007");
        assert!(NODES.key(9).as_str() < NODES.key(10).as_str());
        assert_eq!(REVOKED.id_of(REVOKED.key(42).as_bytes()), Some(42));
        assert_eq!(REVOKED.id_of(NODES.key(42).as_bytes()), None, "a key of another space");
        assert_eq!(REVOKED.id_of(b"/pki/revoked/x"), None);
        assert_eq!(DEPLOYMENTS.key(("default", "web")), "/deployments/default/web");
        assert_eq!(REVISIONS.key(("default", "web", 3)), "/revisions/default/web/0000000003");
        assert!(REVISIONS.of("default", "web").contains(REVISIONS.key(("default", "web", 3)).as_ref()));
        assert!(!REVISIONS.of("default", "web").contains(REVISIONS.key(("default", "web2", 3)).as_ref()));
        assert_eq!(INSTANCES.key((2, "web-1")), "/instances/00000000000000000002/web-1");
        assert!(INSTANCES.of_node(2).contains(INSTANCES.key((2, "web-1")).as_ref()));
        assert!(!INSTANCES.of_node(1).contains(INSTANCES.key((12, "web-1")).as_ref()));
        assert_eq!(TOKENS.key("abc"), "/tokens/abc");
        assert_eq!(CA.key(()), "/pki/ca");
    }

    #[test]
    fn a_space_decodes_what_it_encodes() {
        let bytes = NEXT_NODE_ID.encode(&5).unwrap();
        assert_eq!(NEXT_NODE_ID.decode(&bytes).unwrap(), 5);
        let info = ClusterInfo { name: "c".into(), created_ms: 1 };
        assert_eq!(CLUSTER.decode(&CLUSTER.encode(&info).unwrap()).unwrap(), info);
        assert!(CLUSTER.decode(&bytes).is_err(), "a u64 record is no cluster record");
    }
}
