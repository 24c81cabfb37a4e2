//! Batching of linearizable reads, as etcd batches its read-index requests.
//!
//! A read-index round makes the leader confirm with a quorum that it still leads, then wait until
//! it has applied everything committed when the round began. One round can serve every read that
//! arrived before it began, but not a read that arrives while it runs: that read may follow a
//! write acknowledged after the round took its commit index. So reads queue for the *next* round;
//! at most one round runs and at most one batch waits behind it. Under load a round serves all
//! reads that arrived during the previous one, instead of each read paying its own quorum trip.

use std::sync::Mutex;

use tokio::sync::watch;

use crate::error::Error;

/// What a batch of reads waits for: `None` until its round finishes.
pub(crate) type RoundResult = Option<Result<(), Error>>;

#[derive(Default)]
pub(crate) struct ReadBatcher {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The batch waiting for the next round (no round has started for it yet).
    waiting: Option<watch::Sender<RoundResult>>,
    /// A driver is running rounds.
    driving: bool,
}

impl ReadBatcher {
    /// Joins the batch of the next round. Returns its receiver, and `true` when no driver runs,
    /// so the caller must start one (which then calls [`ReadBatcher::next_batch`] until `None`).
    pub(crate) fn join(&self) -> (watch::Receiver<RoundResult>, bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rx = match &st.waiting {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(None);
                st.waiting = Some(tx);
                rx
            }
        };
        let start = !st.driving;
        st.driving = true;
        (rx, start)
    }

    /// Takes the waiting batch to run a round for it now; `None` (and the driver stops) when no
    /// read waits. Every reader in the returned batch joined before this call.
    pub(crate) fn next_batch(&self) -> Option<watch::Sender<RoundResult>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let batch = st.waiting.take();
        if batch.is_none() {
            st.driving = false;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_arriving_during_a_round_waits_for_the_next_one() {
        let b = ReadBatcher::default();
        let (mut first, start) = b.join();
        assert!(start, "the first reader starts the driver");
        let (mut also_first, start) = b.join();
        assert!(!start, "a driver is already running");
        let round1 = b.next_batch().expect("two readers wait");

        // The round is running; this reader must not be served by it.
        let (mut second, start) = b.join();
        assert!(!start);
        round1.send_replace(Some(Ok(())));
        assert_eq!(*first.borrow_and_update(), Some(Ok(())));
        assert_eq!(*also_first.borrow_and_update(), Some(Ok(())));
        assert_eq!(*second.borrow_and_update(), None, "served by a round that began before it arrived");

        let round2 = b.next_batch().expect("the second reader waits");
        round2.send_replace(Some(Err(Error::Unavailable("no quorum".into()))));
        assert_eq!(*second.borrow_and_update(), Some(Err(Error::Unavailable("no quorum".into()))));

        assert!(b.next_batch().is_none(), "nobody waits: the driver stops");
        let (_third, start) = b.join();
        assert!(start, "after the driver stopped, the next reader starts a new one");
    }
}
