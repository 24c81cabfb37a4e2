//! Tests of placement: capacity, labels, spreading and ties.

use super::*;
use hsu_model::deploy::{Constraint, LabelKey, Operator};
use hsu_model::unit::{ByteSize, MilliCpu};

fn node(id: NodeId, cpu: u64, labels: &[(&str, &str)]) -> NodeView {
    NodeView {
        id,
        name: format!("n{id}"),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        capacity: Capacity { cpu_millis: cpu, memory_bytes: 1 << 30 },
        up: true,
    }
}

fn ask(cpu: u32, placement: &Placement) -> Ask<'_> {
    Ask {
        owner: "default/web".into(),
        resources: Resources { cpu: Some(MilliCpu(cpu)), memory: Some(ByteSize(64 << 20)) },
        placement,
    }
}

#[test]
fn instances_spread_over_nodes_before_doubling_up() {
    let nodes = [node(1, 4000, &[]), node(2, 4000, &[]), node(3, 4000, &[])];
    let p = Placement::default();
    let (placed, why) = place(&nodes, &[], &ask(100, &p), 3);
    assert_eq!(why, None);
    let mut sorted = placed.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
    // A fourth goes to a node that already has one; a fifth to another one.
    let held: Vec<Held> = placed
        .iter()
        .map(|n| Held { node: *n, resources: ask(100, &p).resources, owner: "default/web".into() })
        .collect();
    let (more, _) = place(&nodes, &held, &ask(100, &p), 2);
    assert_ne!(more[0], more[1]);
}

#[test]
fn packing_prefers_the_fullest_node_that_fits_among_equals() {
    let nodes = [node(1, 4000, &[]), node(2, 4000, &[])];
    let p = Placement::default();
    let other = Held { node: 2, resources: ask(1000, &p).resources, owner: "default/other".into() };
    let (placed, _) = place(&nodes, &[other], &ask(100, &p), 1);
    assert_eq!(placed, [2]);
}

#[test]
fn selectors_constraints_and_limits_filter_nodes() {
    let nodes = [node(1, 4000, &[("zone", "a")]), node(2, 4000, &[("zone", "b")]), node(3, 4000, &[])];
    let mut p = Placement::default();
    p.node_selector.insert(LabelKey::new("zone").unwrap(), "b".into());
    assert_eq!(place(&nodes, &[], &ask(100, &p), 1).0, [2]);

    let p = Placement {
        constraints: vec![Constraint {
            key: LabelKey::new("zone").unwrap(),
            operator: Operator::Exists,
            values: vec![],
        }],
        max_per_node: Some(1),
        ..Placement::default()
    };
    let (placed, why) = place(&nodes, &[], &ask(100, &p), 3);
    assert_eq!(placed.len(), 2);
    let why = why.unwrap();
    assert!(why.contains("0/3 nodes fit"), "{why}");
    assert!(why.contains("2 already run maxPerNode instances"), "{why}");
    assert!(why.contains("1 do not meet the constraints"), "{why}");

    let p = Placement {
        constraints: vec![Constraint {
            key: LabelKey::new("node.name").unwrap(),
            operator: Operator::NotIn,
            values: vec!["n1".into(), "n2".into()],
        }],
        ..Placement::default()
    };
    assert_eq!(place(&nodes, &[], &ask(100, &p), 1).0, [3]);
}

#[test]
fn an_ask_larger_than_any_node_says_why() {
    let mut nodes = vec![node(1, 2000, &[]), node(2, 2000, &[]), node(3, 1000, &[])];
    nodes[2].up = false;
    let p = Placement::default();
    let (placed, why) = place(&nodes, &[], &ask(8000, &p), 1);
    assert!(placed.is_empty());
    let why = why.unwrap();
    assert!(why.contains("2 have too little free CPU (asks 8000m, most free 2000m)"), "{why}");
    assert!(why.contains("1 are down"), "{why}");
    assert_eq!(place(&[], &[], &ask(1, &p), 1).1.unwrap(), "no node has reported to the master yet");
}

#[test]
fn held_resources_count_against_capacity() {
    let nodes = [node(1, 1000, &[])];
    let p = Placement::default();
    let (placed, why) = place(&nodes, &[], &ask(400, &p), 3);
    assert_eq!(placed, [1, 1]);
    assert!(why.unwrap().contains("most free 200m"));
}
