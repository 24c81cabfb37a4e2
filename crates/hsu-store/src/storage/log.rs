//! The Raft log and vote in sled, behind openraft's `RaftLogStorage`.
//!
//! Entries live in the `log` tree under their big-endian index; the vote, the committed log id
//! and the last purged log id live in the `raft` tree. An append is flushed to disk (fsync)
//! before openraft is told it is done. The flush runs on a flusher thread of its own: `append`
//! hands it the callback and returns at once, so openraft goes on batching new entries (and
//! answering heartbeats) while the disk syncs, and every append that queued up meanwhile shares
//! the next fsync (group commit). That batching is what lets many writers share one fsync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use hsu_model::{decode_record, encode_record};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{be, from_be, show_key};
use crate::error::OpenError;
use crate::types::{LogId, NodeId, TypeConfig};

const LOG_TREE: &str = "log";
const RAFT_TREE: &str = "raft";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log store. Cloning is cheap (sled handles are shared); a clone is the log reader.
#[derive(Clone)]
pub struct LogStore {
    disk: super::Disk,
    log: sled::Tree,
    raft: sled::Tree,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Syncs the database for every batch of queued appends, then completes their callbacks in
/// order. sled's flush persists everything written before it, so one fsync covers the whole
/// queue. The thread ends when the last `LogStore` handle is dropped.
fn spawn_flusher(disk: super::Disk) -> std::io::Result<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    std::thread::Builder::new().name("hsu-log-flush".into()).spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut waiting = vec![first];
            waiting.extend(rx.try_iter());
            let result = if disk.fsync_appends {
                disk.flush_blocking().map_err(|e| e.to_string())
            } else {
                // Not durable: sled's flush alone (see `Disk`). For the power-loss test's test.
                disk.db.flush().map(drop).map_err(|e| e.to_string())
            };
            for callback in waiting {
                callback.log_io_completed(result.clone().map_err(std::io::Error::other));
            }
        }
    })?;
    Ok(tx)
}

impl LogStore {
    /// Opens the log trees and checks every record, so that damage is reported now, with its
    /// location, instead of when openraft happens to read it.
    pub(crate) fn open(disk: &super::Disk) -> Result<Self, OpenError> {
        let db = &disk.db;
        let engine = |e: sled::Error| OpenError::Engine { path: Default::default(), detail: e.to_string() };
        let log = db.open_tree(LOG_TREE).map_err(engine)?;
        let raft = db.open_tree(RAFT_TREE).map_err(engine)?;
        for item in raft.iter() {
            let (k, v) = item.map_err(engine)?;
            let key = show_key(&k);
            let check = match &*k {
                VOTE => decode_record::<Vote<NodeId>>(&v).map(drop),
                COMMITTED | PURGED => decode_record::<Option<LogId>>(&v).map(drop),
                _ => return Err(OpenError::Inconsistent { tree: RAFT_TREE, detail: format!("unknown key {key}") }),
            };
            check.map_err(|source| OpenError::Corrupt { tree: RAFT_TREE, key, source })?;
        }
        let mut expect: Option<u64> = None;
        for item in log.iter() {
            let (k, v) = item.map_err(engine)?;
            let Some(index) = from_be(&k) else {
                return Err(OpenError::Inconsistent {
                    tree: LOG_TREE,
                    detail: format!("key {} is not a log index", show_key(&k)),
                });
            };
            let entry: Entry<TypeConfig> = decode_record(&v).map_err(|source| OpenError::Corrupt {
                tree: LOG_TREE,
                key: format!("index {index}"),
                source,
            })?;
            if entry.log_id.index != index {
                return Err(OpenError::Inconsistent {
                    tree: LOG_TREE,
                    detail: format!("entry stored at index {index} says it is index {}", entry.log_id.index),
                });
            }
            if let Some(e) = expect {
                if e != index {
                    return Err(OpenError::Inconsistent {
                        tree: LOG_TREE,
                        detail: format!("gap in the log: expected index {e}, found {index}"),
                    });
                }
            }
            expect = Some(index + 1);
        }
        let flusher = spawn_flusher(disk.clone())
            .map_err(|e| OpenError::Engine { path: Default::default(), detail: format!("log flusher thread: {e}") })?;
        Ok(LogStore { disk: disk.clone(), log, raft, flusher })
    }

    /// Turns a saved vote that made this member the leader back into an uncommitted vote for
    /// itself, so that it restarts as a follower and leads again only by winning a new term.
    /// openraft would otherwise restore it as leader of its old term at once, and answer
    /// linearizable reads as soon as it had applied its saved commit index and the first entry it
    /// proposed in that term. Neither is flushed on its own, so after a power cut both can be
    /// behind entries that were committed and acknowledged: the read would return an older value.
    /// A leader of a new term commits a blank entry first and so knows everything committed.
    /// Returns the term it stepped down from.
    pub(crate) fn step_down_if_leader(&self, id: NodeId) -> Result<Option<u64>, OpenError> {
        let vote: Option<Vote<NodeId>> = self
            .get_meta(VOTE)
            .map_err(|e| OpenError::Engine { path: Default::default(), detail: format!("reading the vote: {e}") })?;
        let Some(vote) = vote.filter(|v| v.committed && v.leader_id.voted_for() == Some(id)) else { return Ok(None) };
        let engine = |detail: String| OpenError::Engine { path: Default::default(), detail };
        self.put_meta(VOTE, &Vote { committed: false, ..vote })
            .map_err(|e| engine(format!("writing the vote: {e}")))?;
        self.disk.flush_blocking().map_err(|e| engine(format!("flushing the vote: {e}")))?;
        Ok(Some(vote.leader_id.term))
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self.raft.get(key).map_err(|e| StorageIOError::read(&e))? else { return Ok(None) };
        decode_record(&bytes).map(Some).map_err(|e| StorageIOError::read(&e).into())
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = encode_record(value).map_err(|e| StorageIOError::write(&e))?;
        self.raft.insert(key, bytes).map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Flushes every tree of the database to disk (fsync) off the async runtime.
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        self.disk.flush().await
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId>> {
        let Some((_, v)) = self.log.last().map_err(|e| StorageIOError::read_logs(&e))? else { return Ok(None) };
        let entry: Entry<TypeConfig> = decode_record(&v).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(Some(entry.log_id))
    }
}

fn key_bound(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(be(*i)),
        Bound::Excluded(i) => Bound::Excluded(be(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let bounds = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let mut out = Vec::new();
        for item in self.log.range(bounds) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry: Entry<TypeConfig> = decode_record(&v)
                .map_err(|e| StorageIOError::read_log_at_index(from_be(&k).unwrap_or_default(), AnyError::new(&e)))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?.flatten();
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(VOTE, vote)?;
        // A vote must survive a crash, or a node could vote twice in one term.
        self.flush().await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        // Not flushed: after a restart openraft re-applies up to it at once, and the rest of what
        // was committed is learnt from the leader of a new term (see `step_down_if_leader`).
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        Ok(self.get_meta(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                encode_record(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            batch.insert(&be(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        // openraft learns that the batch is durable from the callback, once the flusher synced it.
        self.flusher
            .send(callback)
            .map_err(|_| StorageIOError::write_logs(AnyError::error("the log flusher thread has stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(be(log_id.index)..) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        // Record the purge point first: a crash between the two steps then leaves entries that
        // are merely unused, never a log that claims entries it no longer has.
        self.put_meta(PURGED, &Some(log_id))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=be(log_id.index)) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
