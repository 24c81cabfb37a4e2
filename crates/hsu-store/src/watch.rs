//! Watchers: every change under a key or prefix, from a revision on, in order, each once.
//!
//! A watcher does not buffer changes pushed at it. It remembers the next revision it owes its
//! client and, whenever the state machine reports a newer applied index, reads the events in
//! between from the stored history. Delivery is therefore exactly-once and in order by
//! construction, a slow watcher costs no memory, and a watcher that falls behind the retained
//! history gets a `Compacted` error instead of a gap.

use std::collections::VecDeque;
use std::sync::Weak;

use tokio::sync::watch;

use crate::error::Error;
use crate::storage::sm::SmShared;
use crate::types::{Event, KeyRange};

/// A stream of changes; see the module documentation.
pub struct Watcher {
    sm: Weak<SmShared>,
    range: KeyRange,
    next: u64,
    applied: watch::Receiver<u64>,
    buffered: VecDeque<Event>,
}

impl Watcher {
    /// `start` is the first revision to deliver; the caller has resolved 0 ("from now").
    pub(crate) fn new(sm: &std::sync::Arc<SmShared>, range: KeyRange, start: u64) -> Result<Self, Error> {
        let compacted = sm.read().state.compacted;
        if start <= compacted {
            return Err(Error::Compacted { requested: start, compacted });
        }
        Ok(Watcher {
            sm: std::sync::Arc::downgrade(sm),
            range,
            next: start,
            applied: sm.subscribe(),
            buffered: VecDeque::new(),
        })
    }

    /// The revision of the next change this watcher will deliver (or a later one, if nothing in
    /// its range changes at that revision). A client that reconnects elsewhere resumes from here.
    pub fn next_revision(&self) -> u64 {
        self.buffered.front().map_or(self.next, |e| e.kv.mod_revision)
    }

    /// The next change. Cancel-safe: if the future is dropped, no change is lost.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(e);
            }
            let applied = *self.applied.borrow_and_update();
            if applied >= self.next {
                let sm = self.sm.upgrade().ok_or(Error::Shutdown)?;
                let events = sm.events(&self.range, self.next, applied)?;
                self.next = applied + 1;
                self.buffered.extend(events);
                continue;
            }
            self.applied.changed().await.map_err(|_| Error::Shutdown)?;
        }
    }
}
