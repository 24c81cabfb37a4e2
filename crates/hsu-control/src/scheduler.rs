//! Placement of instances on nodes: filter (up, selector, constraints, per-node limit, free CPU
//! and memory), then score (spread first: fewest instances of the same owner; then packing: the
//! node with the least free CPU that still fits, so that big requests keep finding room). When no
//! node fits, the reason counts the nodes per cause, as Kubernetes' scheduler does
//! ("0/3 nodes fit: 3 have too little free CPU (asks 8000m, most free 2000m)").

use std::collections::BTreeMap;

use hsu_model::deploy::{Placement, Resources};
use hsu_model::state::Capacity;
use hsu_model::NodeId;

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    /// Reported within the grace period.
    pub up: bool,
}

impl NodeView {
    /// Its labels plus `node.name` and `node.id`, for selectors and constraints.
    fn all_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.insert("node.name".into(), self.name.clone());
        l.insert("node.id".into(), self.id.to_string());
        l
    }
}

/// An instance that holds resources on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub node: NodeId,
    pub resources: Resources,
    /// `namespace/name` of its deployment or job.
    pub owner: String,
}

/// What to place.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    pub owner: String,
    pub resources: Resources,
    pub placement: &'a Placement,
}

/// Places `count` instances one after the other (each counts for the next). Returns the nodes
/// chosen, and why the rest could not be placed.
pub fn place(nodes: &[NodeView], held: &[Held], ask: &Ask<'_>, count: usize) -> (Vec<NodeId>, Option<String>) {
    let mut held: Vec<Held> = held.to_vec();
    let mut chosen = Vec::new();
    for _ in 0..count {
        match place_one(nodes, &held, ask) {
            Ok(node) => {
                held.push(Held { node, resources: ask.resources, owner: ask.owner.clone() });
                chosen.push(node);
            }
            Err(why) => return (chosen, Some(why)),
        }
    }
    (chosen, None)
}

#[derive(Default)]
struct Used {
    cpu: u64,
    memory: u64,
    same_owner: u32,
}

fn place_one(nodes: &[NodeView], held: &[Held], ask: &Ask<'_>) -> Result<NodeId, String> {
    let mut used: BTreeMap<NodeId, Used> = BTreeMap::new();
    for h in held {
        let u = used.entry(h.node).or_default();
        u.cpu += h.resources.cpu_millis();
        u.memory += h.resources.memory_bytes();
        if h.owner == ask.owner {
            u.same_owner += 1;
        }
    }
    let (want_cpu, want_mem) = (ask.resources.cpu_millis(), ask.resources.memory_bytes());
    let mut reasons: BTreeMap<&'static str, u32> = BTreeMap::new();
    let (mut most_cpu, mut most_mem) = (0u64, 0u64);
    let mut best: Option<((u32, u64, NodeId), NodeId)> = None;
    for n in nodes {
        let none = Used::default();
        let u = used.get(&n.id).unwrap_or(&none);
        let free_cpu = n.capacity.cpu_millis.saturating_sub(u.cpu);
        let free_mem = n.capacity.memory_bytes.saturating_sub(u.memory);
        let labels = n.all_labels();
        let why = if !n.up {
            Some("are down")
        } else if !ask.placement.node_selector.iter().all(|(k, v)| labels.get(k.as_str()) == Some(v)) {
            Some("do not match the node selector")
        } else if !ask.placement.constraints.iter().all(|c| c.matches(&labels)) {
            Some("do not meet the constraints")
        } else if ask.placement.max_per_node.is_some_and(|max| u.same_owner >= max) {
            Some("already run maxPerNode instances")
        } else if free_cpu < want_cpu {
            most_cpu = most_cpu.max(free_cpu);
            Some("have too little free CPU")
        } else if free_mem < want_mem {
            most_mem = most_mem.max(free_mem);
            Some("have too little free memory")
        } else {
            None
        };
        match why {
            Some(w) => *reasons.entry(w).or_default() += 1,
            None => {
                // Lowest wins: fewest of the same owner, then least free CPU (packing), then id.
                let score = (u.same_owner, free_cpu - want_cpu, n.id);
                if best.as_ref().is_none_or(|(b, _)| score < *b) {
                    best = Some((score, n.id));
                }
            }
        }
    }
    if let Some((_, id)) = best {
        return Ok(id);
    }
    if nodes.is_empty() {
        return Err("no node has reported to the master yet".into());
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|(why, n)| {
            let mut s = format!("{n} {why}");
            if *why == "have too little free CPU" {
                s.push_str(&format!(" (asks {want_cpu}m, most free {most_cpu}m)"));
            }
            if *why == "have too little free memory" {
                s.push_str(&format!(" (asks {} MiB, most free {} MiB)", want_mem >> 20, most_mem >> 20));
            }
            s
        })
        .collect();
    Err(format!("0/{} nodes fit: {}", nodes.len(), parts.join("; ")))
}

#[cfg(test)]
mod tests;
