//! Agent-only nodes: an edge machine that runs units but holds no replica of the store and no
//! CA key. It gets only its own instances from a server over QUIC, reports through it, serves its
//! units' logs, and after a restart while every server is gone it starts its units again from
//! its own records.

use serde_json::Value;

use crate::harness::{alive, cli_ok, pid_of, poll, status_json, three_voters, NodeProc};

const UNIT: &str = r#"
import os, time
me = os.path.abspath(__file__)
pids = os.path.join(os.path.dirname(me), "pids")
os.makedirs(pids, exist_ok=True)
with open(os.path.join(pids, os.environ["HSU_UNIT"]), "w") as f:
    f.write(str(os.getpid()))
print("edge unit", os.environ["HSU_UNIT"], "up", flush=True)
while os.path.exists(me):
    time.sleep(0.2)
"#;

#[test]
fn an_agent_only_node_runs_its_instances_and_survives_being_cut_off() {
    let root = tempfile::tempdir().unwrap();
    let units = tempfile::tempdir().unwrap();
    let script = units.path().join("unit.py");
    std::fs::write(&script, UNIT).unwrap();
    let (mut servers, config, token) = three_voters(root.path());
    let mut edge =
        NodeProc::join_with(root.path(), "edge", servers[1].api, &token, &["--role", "agent", "--label", "site=edge"]);
    let listed = poll("edge listed as an agent", || {
        let text = cli_ok(&config, servers[0].api, &["node", "list", "-o", "json"])?;
        let v: Value = serde_json::from_str(&text).unwrap();
        // Listed with its role, health and what it reports: labels and capacity.
        match v.as_array().unwrap().iter().find(|n| n["name"] == "edge") {
            Some(n)
                if n["role"] == "agent"
                    && n["ready"] == true
                    && n["labels"]["site"] == "edge"
                    && n["cpu_millis"].as_u64() > Some(0) =>
            {
                Ok(v.clone())
            }
            _ => Err(text),
        }
    });
    assert!(!edge.dir.join("pki/ca.key").exists(), "an agent-only node holds no CA key");
    assert!(!edge.dir.join("store").exists(), "an agent-only node holds no replica of the store");
    let status = status_json(&config, servers[0].api).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "not a Raft member: {listed}");

    // Placed on the edge by its label; ready through its reports; its log served by the edge.
    let spec = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: sensor}}\nspec:\n  template: {{command: [python3, \"{}\"], stop: {{grace: 1s}}}}\n  placement: {{nodeSelector: {{site: edge}}}}\n",
        script.display()
    );
    let file = units.path().join("sensor.yaml");
    std::fs::write(&file, spec).unwrap();
    cli_ok(&config, servers[0].api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let name = poll("the sensor ready on the edge", || {
        let text = cli_ok(&config, servers[1].api, &["get", "instances", "sensor", "-o", "json"])?;
        let list: Vec<Value> = serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone();
        match list.as_slice() {
            [i] if i["node"] == "edge" && i["ready"] == true => Ok(i["name"].as_str().unwrap().to_string()),
            _ => Err(text),
        }
    });
    let logs = poll("the edge's log", || {
        let text = cli_ok(&config, servers[2].api, &["logs", "deployment/sensor", "--tail", "0"])?;
        if text.contains("edge unit") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(logs.contains(&format!("[{name}] edge unit {name} up")), "{logs}");
    let first = poll("the unit's pid", || pid_of(units.path(), &name).ok_or("no pid yet".to_string()));

    // Every server gone, then the edge reboots (its unit dies with it): it starts the unit again
    // from its own records.
    for s in &mut servers {
        s.kill9();
    }
    edge.kill9();
    rustix::process::kill_process(rustix::process::Pid::from_raw(first).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    poll("the unit to be gone", || if alive(first) { Err("still alive".into()) } else { Ok(()) });
    edge.restart();
    let again = poll("the edge to start its unit from its records", || match pid_of(units.path(), &name) {
        Some(p) if p != first && alive(p) => Ok(p),
        other => Err(format!("pid file says {other:?}")),
    });
    assert_ne!(again, first);
}
