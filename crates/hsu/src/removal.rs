//! A node that left the cluster, or that the cluster removed, knows it: it stops, stops its
//! units (the cluster has placed their instances elsewhere), and leaves a marker in its data
//! directory so that `hsu node run` says what happened instead of retrying forever.
//!
//! A server learns it from its own copy of the store (its revocation or its removed record);
//! any node, cut off or agent-only, also from its peers: a node whose certificate the others
//! refuse as revoked ([`hsu_net::quic::NetError::Revoked`]) several times in a row has been
//! removed, since nothing else makes a node of this CA get that answer.

use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// Refusals as revoked in a row (from any peers) after which a node takes itself for removed.
pub const REFUSALS_IN_A_ROW: u32 = 3;

/// The marker's file name in the data directory.
const MARKER: &str = "departed.json";

/// How a node stopped being part of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Departure {
    /// `hsu node leave`: it asked to go.
    Left,
    /// `hsu node remove`, or revoked while it was away; the text says how it found out.
    Removed(String),
}

/// Set once, when the node departs.
#[derive(Default)]
pub struct Removal(OnceLock<Departure>);

impl Removal {
    /// Records the departure; false if one was recorded already.
    pub fn set(&self, departure: Departure) -> bool {
        self.0.set(departure).is_ok()
    }

    pub fn get(&self) -> Option<Departure> {
        self.0.get().cloned()
    }

    /// Records the departure of `who` (e.g. "node 3"), says so once in the log and marks data
    /// directory `root`. False if the node had departed already (nothing is done again).
    pub fn depart(&self, root: &Path, who: &str, departure: Departure) -> bool {
        if !self.set(departure.clone()) {
            return false;
        }
        match &departure {
            Departure::Removed(reason) => {
                tracing::error!("{who} was removed from the cluster: {reason}; stopping its units and exiting")
            }
            Departure::Left => tracing::info!("{who} left the cluster; stopping its units"),
        }
        mark(root, &departure);
        true
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    departure: Departure,
    at_ms: u64,
}

/// Leaves the marker in data directory `root`; a failure is logged, not fatal (the node stops
/// either way).
pub fn mark(root: &Path, departure: &Departure) {
    let marker = Marker { departure: departure.clone(), at_ms: crate::records::now_ms() };
    let path = root.join(MARKER);
    let written = serde_json::to_vec_pretty(&marker)
        .map_err(|e| e.to_string())
        .and_then(|text| hsu_net::pki::write_private(&path, &text).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::warn!("cannot mark {} as departed: {e}", path.display());
    }
}

/// The departure marked in data directory `root`, if any.
pub fn marked(root: &Path) -> Option<Departure> {
    let text = std::fs::read(root.join(MARKER)).ok()?;
    serde_json::from_slice::<Marker>(&text).ok().map(|m| m.departure)
}

/// Refuses to start the node of data directory `root` if it left or was removed.
pub fn refuse_if_departed(root: &Path) -> Result<(), NodeError> {
    let path = root.join(MARKER);
    let Ok(text) = std::fs::read(&path) else { return Ok(()) };
    let marker: Marker = serde_json::from_slice(&text)
        .map_err(|e| NodeError::Config(format!("{}: not a departure marker: {e}", path.display())))?;
    let what = match marker.departure {
        Departure::Left => "left the cluster".to_string(),
        Departure::Removed(reason) => format!("was removed from the cluster ({reason})"),
    };
    Err(NodeError::Departed(format!(
        "the node of {} {what}; it cannot rejoin with this data directory: join again with a new one \
         (`hsu node join --data-dir NEW ...`)",
        root.display()
    )))
}
