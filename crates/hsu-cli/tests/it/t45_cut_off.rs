//! Edge promise: a node cut off from every other server keeps its units running, and when its
//! process restarts while still alone (its units gone too, as after a reboot) it starts them
//! again from its own copy of the store.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{alive, cli_ok, pid_of, poll, three_voters, NODE_GRACE, PID_UNIT};

#[test]
fn a_node_alone_keeps_its_units_and_starts_them_again_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let units = tempfile::tempdir().unwrap();
    let script = units.path().join("unit.py");
    std::fs::write(&script, PID_UNIT).unwrap();
    let (mut nodes, config, _) = three_voters(root.path());
    let spec = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: edge}}\nspec:\n  replicas: 3\n  template: {{command: [python3, \"{}\"], stop: {{grace: 1s}}}}\n  placement: {{maxPerNode: 1}}\n",
        script.display()
    );
    let file = units.path().join("edge.yaml");
    std::fs::write(&file, spec).unwrap();
    cli_ok(&config, nodes[0].api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let mine = poll("3 ready instances, one on n1", || {
        let text = cli_ok(&config, nodes[0].api, &["get", "instances", "edge", "-o", "json"])?;
        let list: Vec<Value> = serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone();
        let on_n1: Vec<String> =
            list.iter().filter(|i| i["node"] == "n1").map(|i| i["name"].as_str().unwrap().to_string()).collect();
        if list.len() == 3 && list.iter().all(|i| i["ready"] == true) && on_n1.len() == 1 {
            Ok(on_n1[0].clone())
        } else {
            Err(text)
        }
    });
    let first = poll("n1's unit to write its pid", || pid_of(units.path(), &mine).ok_or("no pid yet".to_string()));

    // n1 alone: both other servers gone. Its unit keeps running well past the node grace period.
    nodes[1].kill9();
    nodes[2].kill9();
    std::thread::sleep(NODE_GRACE * 2 + Duration::from_secs(1));
    assert!(alive(first), "n1's unit was stopped while n1 was cut off");

    // A reboot while alone: the node and its unit die; the node starts again without any other
    // server and starts the unit from its own copy of the store.
    nodes[0].kill9();
    rustix::process::kill_process(rustix::process::Pid::from_raw(first).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    poll("the unit to be gone", || if alive(first) { Err("still alive".into()) } else { Ok(()) });
    nodes[0].restart();
    let again = poll("n1 to start its unit again from its local record", || match pid_of(units.path(), &mine) {
        Some(p) if p != first && alive(p) => Ok(p),
        other => Err(format!("pid file says {other:?}")),
    });
    assert_ne!(again, first);
}
