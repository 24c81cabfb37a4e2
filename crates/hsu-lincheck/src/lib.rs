//! Linearizability checking for key-value histories with compare-and-swap.
//!
//! This module owns the offline verdict on whether a recorded client history of reads, writes,
//! deletes and compare-and-swaps could have been produced by a single atomic register per key.
//! Because every operation touches exactly one key, a key-value store is linearizable exactly
//! when each key's sub-history is, so the history is split by key first and the keys are checked
//! one at a time in sorted order; this keeps each search small and the result deterministic.
//! Each key is then checked with a Wing–Gong–Lowe depth-first search in the style of porcupine:
//! call and return events are kept in a time-ordered doubly linked list, and at every step the
//! search may linearize any operation whose call precedes the earliest pending return, provided
//! the register model accepts it in the current state. Linearized operations are unlinked from the
//! list and relinked on backtracking, and an explicit stack replaces recursion so that histories
//! with thousands of operations cannot overflow the thread stack. Every visited configuration,
//! the set of linearized operations plus the register state, is remembered so that no equivalent
//! configuration is explored twice; values are interned into small integers per key so that these
//! cache entries stay cheap. Operations with an indeterminate outcome have no return event: they
//! may be linearized at any point after their call or left out entirely, and the search succeeds
//! as soon as every operation with a definite outcome has been linearized. A per-key budget on the
//! number of explored configurations turns pathological searches into an explicit `Unknown`
//! verdict rather than an unbounded run.

use std::collections::{BTreeMap, HashMap, HashSet};

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// What a client asked for and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read that observed `value` (None = key absent).
    Read { key: Key, value: Option<Value> },
    /// An unconditional write.
    Write { key: Key, value: Value },
    /// Delete of one key.
    Delete { key: Key },
    /// Compare-and-swap: if the current value equals `expected` (None = absent), set `new`.
    /// `swapped` is what the client was told (meaningful only when the outcome is Ok).
    Cas { key: Key, expected: Option<Value>, new: Value, swapped: bool },
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Read { key, .. } | Op::Write { key, .. } | Op::Delete { key } => key,
            Op::Cas { key, .. } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client got a definite answer.
    Ok,
    /// The request definitely did not take effect (e.g. rejected before it was proposed).
    /// Ignored by the checker.
    Failed,
    /// Unknown whether it took effect (timeout, lost connection). It may take effect at any point
    /// after `start` or never; a read with this outcome is ignored; an indeterminate CAS may have
    /// swapped or not.
    Indeterminate,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: u64,
    /// Nanoseconds since any monotonic epoch.
    pub start: u64,
    /// Nanoseconds; ignored for Indeterminate (treated as infinity).
    pub end: u64,
    pub op: Op,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists for this key; `ops` lists every input index that touches the key (in input
    /// order, including ignored ones), and `reason` explains where the search got stuck.
    NotLinearizable {
        key: Key,
        ops: Vec<usize>,
        reason: String,
    },
    /// The search exceeded its budget for this key; neither verdict could be reached.
    Unknown {
        key: Key,
        explored: u64,
    },
}

/// A linearizability checker with a bound on the configurations explored per key.
#[derive(Clone, Debug)]
pub struct Checker {
    max_states_per_key: u64,
}

impl Checker {
    /// A checker with the default budget of 5,000,000 explored configurations per key.
    pub fn new() -> Self {
        Self::with_budget(5_000_000)
    }

    /// A checker that gives up on a key, answering `Unknown`, after this many configurations.
    pub fn with_budget(max_states_per_key: u64) -> Self {
        Self { max_states_per_key }
    }

    /// Checks every key in sorted order and returns the first failure, otherwise `Unknown` if
    /// some key ran out of budget, otherwise `Linearizable`.
    pub fn check(&self, history: &[Operation]) -> Verdict {
        let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for (index, operation) in history.iter().enumerate() {
            by_key.entry(operation.op.key()).or_default().push(index);
        }
        let mut unknown = None;
        for (key, ops) in by_key {
            let (entries, values) = prepare(history, &ops);
            match search(&entries, self.max_states_per_key) {
                Search::Linearizable => {}
                Search::Unknown(explored) => {
                    unknown.get_or_insert(Verdict::Unknown { key: key.to_vec(), explored });
                }
                Search::Stuck(prefix) => {
                    let reason = explain(history, &entries, &values, &prefix);
                    let key = key.to_vec();
                    return Verdict::NotLinearizable { key, ops, reason };
                }
            }
        }
        unknown.unwrap_or(Verdict::Linearizable)
    }
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

/// Convenience: `Checker::new().check(history)`.
pub fn check(history: &[Operation]) -> Verdict {
    Checker::new().check(history)
}

/// The register model's view of an operation, with values interned to per-key integers.
#[derive(Clone, Copy, Debug)]
enum Action {
    Read(Option<u32>),
    Write(u32),
    Delete,
    /// An indeterminate CAS is always recorded with `swapped: true`, because an indeterminate CAS
    /// that did not swap left the register unchanged and is equivalent to leaving it out.
    Cas {
        expected: Option<u32>,
        new: u32,
        swapped: bool,
    },
}

impl Action {
    /// The state after applying this action, or `None` if the register could not have
    /// produced the observed result from `state`.
    fn apply(self, state: Option<u32>) -> Option<Option<u32>> {
        match self {
            Action::Read(value) => (value == state).then_some(state),
            Action::Write(value) => Some(Some(value)),
            Action::Delete => Some(None),
            Action::Cas { expected, new, swapped: true } => (state == expected).then_some(Some(new)),
            Action::Cas { expected, .. } => (state != expected).then_some(state),
        }
    }
}

/// One operation of a key's sub-history that the search has to consider.
struct Entry {
    /// Index into the input history, used only for reporting.
    index: usize,
    start: u64,
    /// The return time, or `None` for an indeterminate operation that never returns.
    end: Option<u64>,
    action: Action,
}

/// Turns a key's sub-history into search entries, dropping failed operations and indeterminate
/// reads (neither constrains the register), and returns the interned values for reporting.
fn prepare<'h>(history: &'h [Operation], ops: &[usize]) -> (Vec<Entry>, Vec<&'h [u8]>) {
    let mut ids: HashMap<&[u8], u32> = HashMap::new();
    let mut values: Vec<&[u8]> = Vec::new();
    let mut intern = |value: &'h [u8]| {
        *ids.entry(value).or_insert_with(|| {
            values.push(value);
            (values.len() - 1) as u32
        })
    };
    let mut entries = Vec::with_capacity(ops.len());
    for &index in ops {
        let operation = &history[index];
        let definite = match operation.outcome {
            Outcome::Ok => true,
            Outcome::Indeterminate => false,
            Outcome::Failed => continue,
        };
        let action = match &operation.op {
            Op::Read { .. } if !definite => continue,
            Op::Read { value, .. } => Action::Read(value.as_deref().map(&mut intern)),
            Op::Write { value, .. } => Action::Write(intern(value)),
            Op::Delete { .. } => Action::Delete,
            Op::Cas { expected, new, swapped, .. } => Action::Cas {
                expected: expected.as_deref().map(&mut intern),
                new: intern(new),
                swapped: *swapped || !definite,
            },
        };
        // A return before the call is a clock glitch; treating it as an instantaneous operation
        // keeps the event order well formed instead of rejecting the history.
        let end = definite.then(|| operation.end.max(operation.start));
        entries.push(Entry { index, start: operation.start, end, action });
    }
    (entries, values)
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// Call and return events in time order as a doubly linked list behind a sentinel head, so that
/// linearizing an operation (unlinking its events) and backtracking (relinking them) are O(1).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node, the entry it belongs to and whether it is a return event.
    owner: Vec<(usize, bool)>,
    call: Vec<usize>,
    ret: Vec<Option<usize>>,
}

impl EventList {
    fn new(entries: &[Entry]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        for (id, entry) in entries.iter().enumerate() {
            events.push((entry.start, false, id));
            if let Some(end) = entry.end {
                events.push((end, true, id));
            }
        }
        // At equal timestamps calls sort before returns, so touching intervals count as
        // concurrent; with nanosecond clocks that is the only safe reading of a tie.
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = EventList {
            next: (1..=nodes).map(|n| if n == nodes { NIL } else { n }).collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            owner: vec![(NIL, false)],
            call: vec![NIL; entries.len()],
            ret: vec![None; entries.len()],
        };
        for (offset, &(_, is_return, id)) in events.iter().enumerate() {
            let node = offset + 1;
            list.owner.push((id, is_return));
            if is_return {
                list.ret[id] = Some(node);
            } else {
                list.call[id] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    fn lift(&mut self, id: usize) {
        self.unlink(self.call[id]);
        if let Some(ret) = self.ret[id] {
            self.unlink(ret);
        }
    }

    /// Undoes `lift` in reverse order, which dancing-links restoration requires.
    fn unlift(&mut self, id: usize) {
        if let Some(ret) = self.ret[id] {
            self.relink(ret);
        }
        self.relink(self.call[id]);
    }
}

enum Search {
    Linearizable,
    Unknown(u64),
    /// No linearization exists; carries the longest linearizable prefix found (entry ids).
    Stuck(Vec<usize>),
}

/// The Wing–Gong–Lowe search over one key's entries.
fn search(entries: &[Entry], budget: u64) -> Search {
    let mut list = EventList::new(entries);
    let words = entries.len().div_ceil(64);
    // The linearized set as a bitset, followed by one word holding the encoded register state;
    // keeping both in one slice lets the cache be probed by reference without allocating.
    let mut config = vec![0u64; words + 1];
    let mut cache: HashSet<Box<[u64]>> = HashSet::new();
    let definite_total = entries.iter().filter(|e| e.end.is_some()).count();
    let mut definite_placed = 0;
    let mut state: Option<u32> = None;
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut explored = 0u64;
    let mut node = list.next[HEAD];
    loop {
        if definite_placed == definite_total {
            return Search::Linearizable;
        }
        // Walking past a call event skips that operation for now; reaching a return event (or
        // the end of the list) means the pending operation it belongs to can no longer be placed
        // before everything that follows, so this branch is exhausted.
        let candidate = (node != NIL && !list.owner[node].1).then(|| list.owner[node].0);
        if let Some(id) = candidate {
            if let Some(next_state) = entries[id].action.apply(state) {
                let (word, bit) = (id / 64, 1u64 << (id % 64));
                config[word] |= bit;
                config[words] = next_state.map_or(0, |v| u64::from(v) + 1);
                if !cache.contains(&config[..]) {
                    if explored >= budget {
                        return Search::Unknown(explored);
                    }
                    explored += 1;
                    cache.insert(config.clone().into_boxed_slice());
                    list.lift(id);
                    stack.push((id, state));
                    state = next_state;
                    definite_placed += usize::from(entries[id].end.is_some());
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(id, _)| id).collect();
                    }
                    node = list.next[HEAD];
                    continue;
                }
                config[word] &= !bit;
            }
            node = list.next[node];
        } else {
            let Some((id, previous)) = stack.pop() else {
                return Search::Stuck(longest);
            };
            list.unlift(id);
            config[id / 64] &= !(1u64 << (id % 64));
            state = previous;
            definite_placed -= usize::from(entries[id].end.is_some());
            node = list.next[list.call[id]];
        }
    }
}

/// Builds the human-readable reason for a failed key from the longest linearizable prefix.
fn explain(history: &[Operation], entries: &[Entry], values: &[&[u8]], prefix: &[usize]) -> String {
    let mut state = None;
    let mut placed = vec![false; entries.len()];
    for &id in prefix {
        state = entries[id].action.apply(state).unwrap_or(state);
        placed[id] = true;
    }
    let shown = prefix.len().saturating_sub(5);
    let tail: Vec<String> =
        prefix[shown..].iter().map(|&id| describe(&history[entries[id].index], entries[id].index)).collect();
    // The definite operation with the earliest return that is still unplaced is the one whose
    // return event blocked every remaining branch of the search.
    let blocker = (0..entries.len())
        .filter(|&id| !placed[id] && entries[id].end.is_some())
        .min_by_key(|&id| (entries[id].end, entries[id].start, id))
        .map_or_else(
            || "an unknown operation".to_string(),
            |id| describe(&history[entries[id].index], entries[id].index),
        );
    let state = match state {
        Some(v) => format!("holding {:?}", lossy(values[v as usize])),
        None => "absent".to_string(),
    };
    format!(
        "the longest linearizable prefix has {} of {} operations{}{}; it leaves the key {}, and \
         no order of the remaining operations can then place {}",
        prefix.len(),
        entries.len(),
        if tail.is_empty() { "" } else { ", ending with: " },
        tail.join("; "),
        state,
        blocker,
    )
}

fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn describe(operation: &Operation, index: usize) -> String {
    let show = |value: &Option<Value>| match value {
        Some(v) => format!("{:?}", lossy(v)),
        None => "absent".to_string(),
    };
    let what = match &operation.op {
        Op::Read { value, .. } => format!("read -> {}", show(value)),
        Op::Write { value, .. } => format!("write {:?}", lossy(value)),
        Op::Delete { .. } => "delete".to_string(),
        Op::Cas { expected, new, swapped, .. } => {
            format!("cas {} -> {:?} swapped={swapped}", show(expected), lossy(new))
        }
    };
    let end = match operation.outcome {
        Outcome::Indeterminate => "?".to_string(),
        _ => operation.end.to_string(),
    };
    format!("#{index} (client {}, [{}, {end}], {:?}) {what}", operation.client, operation.start, operation.outcome)
}

#[cfg(test)]
mod tests;
