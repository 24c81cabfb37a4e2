//! The state machine in sled, behind openraft's `RaftStateMachine`, and its snapshots.
//!
//! The whole key space is held in memory ([`KvState`]) and every applied batch is also written
//! to sled as one atomic batch together with the last applied log id, so the on-disk state is
//! always the result of a prefix of the log. Reads and watches are served from memory and from
//! the event history in sled.
//!
//! A snapshot is the key space, the leases, the last applied log id and the membership, encoded
//! as one checksummed record. Installing one builds a new generation of the data tree aside,
//! flushes it, and only then flips the generation pointer in the `sm_root` tree, so a crash in the
//! middle leaves the old state intact, never a half-installed one.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use hsu_model::{decode_record, encode_record};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{be, show_key};
use crate::error::{Error, OpenError};
use crate::kv::{Changes, KvState, Session, StoredKv, StoredLease};
use crate::types::{Event, KeyRange, LogId, Member, NodeId, Response, StoredMembership, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const ROOT_TREE: &str = "sm_root";
const GEN: &[u8] = b"gen";
const SNAPSHOT: &[u8] = b"snapshot";

const KV: u8 = b'k';
const LEASE: u8 = b'l';
const EVENT: u8 = b'e';
const SESSION: u8 = b's';
const META_APPLIED: &[u8] = b"m:applied";
const META_MEMBERSHIP: &[u8] = b"m:membership";
const META_REVISION: &[u8] = b"m:revision";
const META_COMPACTED: &[u8] = b"m:compacted";
const META_CLOCK: &[u8] = b"m:clock";

fn data_tree_name(gen: u64) -> String {
    format!("sm.{gen}")
}

fn prefixed(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

/// The big-endian number after the tag byte of a lease or session key.
fn number_key(k: &[u8], what: &str) -> Result<u64, OpenError> {
    super::from_be(&k[1..]).ok_or_else(|| OpenError::Inconsistent {
        tree: "state machine",
        detail: format!("key {} is not a {what}", show_key(k)),
    })
}

fn event_key(revision: u64, seq: u32) -> Vec<u8> {
    let mut k = prefixed(EVENT, &be(revision));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What a snapshot holds. `format` lets a later release read an older snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    compacted: u64,
    kv: BTreeMap<Vec<u8>, StoredKv>,
    leases: BTreeMap<u64, StoredLease>,
    /// Client sessions: without them a retry that reaches a member restored from this snapshot
    /// would be applied twice.
    sessions: BTreeMap<u64, Session>,
    clock_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The state machine state that moves together.
pub(crate) struct SmInner {
    gen: u64,
    tree: sled::Tree,
    pub(crate) state: KvState,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

/// The state machine, shared between openraft (which applies to it) and the store's readers and
/// watchers.
pub(crate) struct SmShared {
    disk: super::Disk,
    root: sled::Tree,
    inner: RwLock<SmInner>,
    /// The index of the last applied entry; watchers wait on it.
    applied: watch::Sender<u64>,
    /// Revisions of watch history to keep.
    retain: u64,
}

impl SmShared {
    /// Opens the state machine, checking every stored record.
    pub(crate) fn open(disk: &super::Disk, retain: u64) -> Result<Arc<Self>, OpenError> {
        let db = &disk.db;
        let engine = |e: sled::Error| OpenError::Engine { path: Default::default(), detail: e.to_string() };
        let corrupt = |tree: &'static str, key: &[u8]| {
            let key = show_key(key);
            move |source| OpenError::Corrupt { tree, key, source }
        };
        let root = db.open_tree(ROOT_TREE).map_err(engine)?;
        let gen: u64 = match root.get(GEN).map_err(engine)? {
            Some(v) => decode_record(&v).map_err(corrupt(ROOT_TREE, GEN))?,
            None => 0,
        };
        let snapshot: Option<StoredSnapshot> = match root.get(SNAPSHOT).map_err(engine)? {
            Some(v) => Some(decode_record(&v).map_err(corrupt(ROOT_TREE, SNAPSHOT))?),
            None => None,
        };
        // Generations other than the current one are leftovers of an install that did not finish.
        let current = data_tree_name(gen);
        for name in db.tree_names() {
            if name.starts_with(b"sm.") && name != current.as_bytes() {
                db.drop_tree(&name).map_err(engine)?;
            }
        }
        let tree = db.open_tree(&current).map_err(engine)?;
        let tree_label = "state machine";

        let mut kv = BTreeMap::new();
        let mut leases = BTreeMap::new();
        let mut sessions = BTreeMap::new();
        let (mut last_applied, mut membership, mut revision, mut compacted) = (None, StoredMembership::default(), 0, 0);
        let mut clock_ms = 0;
        for item in tree.iter() {
            let (k, v) = item.map_err(engine)?;
            let err = corrupt(tree_label, &k);
            match k.first() {
                Some(&KV) => {
                    kv.insert(k[1..].to_vec(), decode_record::<StoredKv>(&v).map_err(err)?);
                }
                Some(&LEASE) => {
                    leases.insert(number_key(&k, "lease id")?, decode_record::<StoredLease>(&v).map_err(err)?);
                }
                Some(&EVENT) => {
                    decode_record::<Event>(&v).map_err(err)?;
                }
                Some(&SESSION) => {
                    sessions.insert(number_key(&k, "client id")?, decode_record::<Session>(&v).map_err(err)?);
                }
                _ => match &*k {
                    META_APPLIED => last_applied = decode_record(&v).map_err(err)?,
                    META_MEMBERSHIP => membership = decode_record(&v).map_err(err)?,
                    META_REVISION => revision = decode_record(&v).map_err(err)?,
                    META_COMPACTED => compacted = decode_record(&v).map_err(err)?,
                    META_CLOCK => clock_ms = decode_record(&v).map_err(err)?,
                    _ => {
                        return Err(OpenError::Inconsistent {
                            tree: tree_label,
                            detail: format!("unknown key {}", show_key(&k)),
                        })
                    }
                },
            }
        }
        let applied_index = last_applied.map_or(0, |l: LogId| l.index);
        let shared = Arc::new(SmShared {
            disk: disk.clone(),
            root,
            inner: RwLock::new(SmInner {
                gen,
                tree,
                state: KvState::from_parts(kv, leases, sessions, revision, compacted, clock_ms),
                last_applied,
                membership,
            }),
            applied: watch::channel(applied_index).0,
            retain,
        });
        // The snapshot is flushed only after the state it was built from, so it can be newer than
        // the state machine only if that flush was lost; then the snapshot is the better state.
        if let Some(snap) = snapshot {
            if snap.meta.last_log_id > last_applied {
                shared.install(&snap.meta, &snap.data).map_err(|e| OpenError::Inconsistent {
                    tree: ROOT_TREE,
                    detail: format!("stored snapshot is ahead of the state machine and does not install: {e}"),
                })?;
            }
        }
        Ok(shared)
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, SmInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of the last applied log index.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// How many receivers of the applied index exist: one per live [`crate::Watcher`].
    pub(crate) fn subscribers(&self) -> usize {
        self.applied.receiver_count()
    }

    /// Events in `range` with revisions `from..=to`, in order. Fails with `Compacted` when any of
    /// that history is gone, also if compaction raced with the read.
    pub(crate) fn events(&self, range: &KeyRange, from: u64, to: u64) -> Result<Vec<Event>, Error> {
        let (tree, compacted) = {
            let inner = self.read();
            (inner.tree.clone(), inner.state.compacted)
        };
        if from <= compacted {
            return Err(Error::Compacted { requested: from, compacted });
        }
        let mut out = Vec::new();
        for item in tree.range(event_key(from, 0)..event_key(to.saturating_add(1), 0)) {
            let (k, v) = item.map_err(|e| Error::Fatal(format!("reading watch history: {e}")))?;
            let event: Event =
                decode_record(&v).map_err(|e| Error::Fatal(format!("watch history record {}: {e}", show_key(&k))))?;
            if range.contains(&event.kv.key) {
                out.push(event);
            }
        }
        let compacted = self.read().state.compacted;
        if from <= compacted {
            return Err(Error::Compacted { requested: from, compacted });
        }
        Ok(out)
    }

    /// Flushes every tree to disk (fsync) off the async runtime.
    async fn flush(&self) -> std::io::Result<()> {
        self.disk.flush().await
    }

    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = openraft::Entry<TypeConfig>>,
    ) -> StorageResult<Vec<Response>> {
        let write_err = |e: &dyn std::error::Error| {
            StorageError::from(StorageIOError::write_state_machine(openraft::AnyError::error(e)))
        };
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let compacted_before = inner.state.compacted;
        let mut changes = Changes::default();
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(p) => {
                    inner.state.apply_proposal(entry.log_id.index, &p, self.retain, &mut changes)
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
            });
        }
        let mut batch = sled::Batch::default();
        let enc = |v: &dyn erased::Encode| v.encode().map_err(|e| write_err(&e));
        for key in &changes.keys {
            let k = prefixed(KV, key);
            match inner.state.kv.get(key) {
                Some(v) => batch.insert(k, enc(v)?),
                None => batch.remove(k),
            }
        }
        for id in &changes.leases {
            let k = prefixed(LEASE, &be(*id));
            match inner.state.leases.get(id) {
                Some(l) => batch.insert(k, enc(&StoredLease { ttl_ms: l.ttl_ms })?),
                None => batch.remove(k),
            }
        }
        for client in &changes.sessions {
            let k = prefixed(SESSION, &be(*client));
            match inner.state.sessions.get(client) {
                Some(s) => batch.insert(k, enc(s)?),
                None => batch.remove(k),
            }
        }
        let mut seq = 0u32;
        let mut last_rev = 0;
        for event in &changes.events {
            let rev = event.kv.mod_revision;
            seq = if rev == last_rev { seq + 1 } else { 0 };
            last_rev = rev;
            batch.insert(event_key(rev, seq), enc(event)?);
        }
        if inner.state.compacted > compacted_before {
            for item in inner.tree.range(vec![EVENT]..event_key(inner.state.compacted + 1, 0)) {
                let (k, _) = item.map_err(|e| write_err(&e))?;
                batch.remove(k);
            }
        }
        batch.insert(META_APPLIED, enc(&inner.last_applied)?);
        batch.insert(META_MEMBERSHIP, enc(&inner.membership)?);
        batch.insert(META_REVISION, enc(&inner.state.revision)?);
        batch.insert(META_COMPACTED, enc(&inner.state.compacted)?);
        batch.insert(META_CLOCK, enc(&inner.state.clock_ms)?);
        // Written under the lock so that a snapshot, which is built from the in-memory state under
        // the same lock and then flushes sled, never describes state that sled does not yet hold.
        inner.tree.apply_batch(batch).map_err(|e| write_err(&e))?;
        let applied = inner.last_applied.map_or(0, |l| l.index);
        drop(inner);
        self.applied.send_replace(applied);
        Ok(responses)
    }

    fn snapshot_payload(&self) -> (SnapshotPayload, SnapshotMeta<NodeId, Member>) {
        let inner = self.read();
        let payload = SnapshotPayload {
            last_applied: inner.last_applied,
            membership: inner.membership.clone(),
            revision: inner.state.revision,
            compacted: inner.state.compacted,
            kv: inner.state.kv.clone(),
            leases: inner.state.leases.iter().map(|(id, l)| (*id, StoredLease { ttl_ms: l.ttl_ms })).collect(),
            sessions: inner.state.sessions.clone(),
            clock_ms: inner.state.clock_ms,
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!("{}-{now:x}", inner.last_applied.map_or(0, |l| l.index)),
        };
        (payload, meta)
    }

    /// Replaces the whole state by a snapshot: built aside in a new generation, flushed, then
    /// switched to.
    fn install(&self, meta: &SnapshotMeta<NodeId, Member>, data: &[u8]) -> Result<(), String> {
        let payload: SnapshotPayload =
            decode_record(data).map_err(|e| format!("snapshot {}: {e}", meta.snapshot_id))?;
        if payload.last_applied != meta.last_log_id {
            return Err(format!(
                "snapshot {} holds state up to {:?} but its metadata says {:?}",
                meta.snapshot_id, payload.last_applied, meta.last_log_id
            ));
        }
        let old_gen = self.read().gen;
        let gen = old_gen + 1;
        let e = |e: sled::Error| e.to_string();
        let tree = self.disk.db.open_tree(data_tree_name(gen)).map_err(e)?;
        tree.clear().map_err(e)?;
        let enc = |v: &dyn erased::Encode| v.encode().map_err(|e| e.to_string());
        let mut batch = sled::Batch::default();
        for (k, v) in &payload.kv {
            batch.insert(prefixed(KV, k), enc(v)?);
        }
        for (id, l) in &payload.leases {
            batch.insert(prefixed(LEASE, &be(*id)), enc(l)?);
        }
        for (client, session) in &payload.sessions {
            batch.insert(prefixed(SESSION, &be(*client)), enc(session)?);
        }
        // History before the snapshot is not part of it: watchers from earlier revisions re-list.
        let compacted = payload.compacted.max(payload.last_applied.map_or(0, |l| l.index));
        batch.insert(META_APPLIED, enc(&payload.last_applied)?);
        batch.insert(META_MEMBERSHIP, enc(&payload.membership)?);
        batch.insert(META_REVISION, enc(&payload.revision)?);
        batch.insert(META_COMPACTED, enc(&compacted)?);
        batch.insert(META_CLOCK, enc(&payload.clock_ms)?);
        tree.apply_batch(batch).map_err(e)?;
        self.disk.flush_blocking().map_err(|e| e.to_string())?;
        self.root.insert(GEN, enc(&gen)?).map_err(e)?;
        self.root.insert(SNAPSHOT, enc(&StoredSnapshot { meta: meta.clone(), data: data.to_vec() })?).map_err(e)?;
        self.disk.flush_blocking().map_err(|e| e.to_string())?;

        let applied = payload.last_applied.map_or(0, |l| l.index);
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            *inner = SmInner {
                gen,
                tree,
                state: KvState::from_parts(
                    payload.kv,
                    payload.leases,
                    payload.sessions,
                    payload.revision,
                    compacted,
                    payload.clock_ms,
                ),
                last_applied: payload.last_applied,
                membership: payload.membership,
            };
        }
        self.disk.db.drop_tree(data_tree_name(old_gen)).map_err(e)?;
        self.applied.send_replace(applied);
        Ok(())
    }
}

/// Object-safe encoding, so one closure can encode the several record types of a batch.
mod erased {
    pub(super) trait Encode {
        fn encode(&self) -> Result<Vec<u8>, hsu_model::CodecError>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<Vec<u8>, hsu_model::CodecError> {
            hsu_model::encode_record(self)
        }
    }
}

/// openraft's handle on the state machine; also its snapshot builder.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (payload, meta) = self.shared.snapshot_payload();
        let signature = Some(meta.signature());
        let err = |e: &dyn std::error::Error| {
            StorageError::from(StorageIOError::write_snapshot(signature.clone(), openraft::AnyError::error(e)))
        };
        let data = encode_record(&payload).map_err(|e| err(&e))?;
        // The state the snapshot describes must be on disk before the snapshot is, because the
        // log behind it may be purged as soon as the snapshot exists.
        self.shared.flush().await.map_err(|e| err(&e))?;
        let stored = encode_record(&StoredSnapshot { meta: meta.clone(), data: data.clone() }).map_err(|e| err(&e))?;
        self.shared.root.insert(SNAPSHOT, stored).map_err(|e| err(&e))?;
        self.shared.flush().await.map_err(|e| err(&e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        let inner = self.shared.read();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.shared.apply_entries(entries)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let shared = self.shared.clone();
        let meta2 = meta.clone();
        let data = snapshot.into_inner();
        tokio::task::spawn_blocking(move || shared.install(&meta2, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e)).into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.shared.root.get(SNAPSHOT).map_err(|e| StorageIOError::read_snapshot(None, &e))? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode_record(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
