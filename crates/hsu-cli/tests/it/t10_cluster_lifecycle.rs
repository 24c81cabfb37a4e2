//! Three real processes form a cluster through the CLI, survive a kill -9 and shrink when one leaves.

use serde_json::Value;

use crate::harness::{cli, cli_ok, poll, status_json, NodeProc};

fn voters(s: &Value) -> Vec<String> {
    s["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn three_processes_form_a_cluster_survive_kill_9_and_shrink_on_leave() {
    let root = tempfile::tempdir().unwrap();
    let n1 = NodeProc::init(root.path(), "n1");
    let config = n1.dir.join("admin.conf");
    let token = std::fs::read_to_string(n1.dir.join("join-token")).unwrap().trim().to_string();
    let n2 = NodeProc::join(root.path(), "n2", n1.api, &token);
    let n3 = NodeProc::join(root.path(), "n3", n1.api, &token);
    let mut nodes = [n1, n2, n3];

    // 3 voters, one leader, everyone healthy, as `hsu status -o json` reports it.
    let status = poll("three healthy voters", || {
        let s = status_json(&config, nodes[0].api)?;
        let healthy = s["members"].as_array().unwrap().iter().all(|m| m["healthy"] == true);
        if voters(&s).len() == 3 && healthy {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    let leader = status["leader"].as_str().unwrap().to_string();
    assert!(["n1", "n2", "n3"].contains(&leader.as_str()), "{status}");
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["commit_index"].as_u64().unwrap() > 0);
    for m in status["members"].as_array().unwrap() {
        for field in ["id", "name", "role", "address", "healthy"] {
            assert!(!m[field].is_null(), "member without {field}: {m}");
        }
    }

    // With three voters, a fourth node joining with `--role auto` becomes a learner.
    let n4 = NodeProc::join(root.path(), "n4", nodes[1].api, &token);
    let s = poll("n4 to join as a learner", || {
        let s = status_json(&config, nodes[0].api)?;
        let n4 = s["members"].as_array().unwrap().iter().find(|m| m["name"] == "n4").cloned();
        if n4.is_some_and(|m| m["role"] == "learner" && m["healthy"] == true) {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(voters(&s).len(), 3);
    // `hsu node remove` takes it out by force (and revokes its certificate).
    let n4_id = s["members"].as_array().unwrap().iter().find(|m| m["name"] == "n4").unwrap()["id"].to_string();
    cli_ok(&config, nodes[0].api, &["node", "remove", &n4_id]).unwrap();
    poll("n4 to be gone", || {
        let s = status_json(&config, nodes[0].api)?;
        if s["members"].as_array().unwrap().len() == 3 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    drop(n4);

    // A write through one node is read through another.
    cli_ok(&config, nodes[1].api, &["kv", "put", "greeting", "hello"]).unwrap();
    let got = cli_ok(&config, nodes[2].api, &["kv", "get", "greeting", "-o", "json"]).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got[0]["value"], "hello");

    // kill -9 the leader: a survivor reports a new leader and accepts writes.
    let li = nodes.iter().position(|n| n.name == leader).unwrap();
    nodes[li].kill9();
    let survivor = nodes.iter().position(|n| n.name != leader).unwrap();
    // Sent at once, while the survivor still takes the dead node for its leader: the survivor
    // forwards the read there, and must send it to the new leader as soon as one is elected
    // rather than wait for the dead one until the request times out.
    let got = cli_ok(&config, nodes[survivor].api, &["kv", "get", "greeting", "-o", "json"])
        .expect("a read through a follower while its leader is dead is answered by the next leader");
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got[0]["value"], "hello");
    let s = poll("a new leader", || {
        let s = status_json(&config, nodes[survivor].api)?;
        let l = s["leader"].as_str().unwrap_or("");
        if !l.is_empty() && l != leader {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_ne!(s["leader"], Value::from(leader.clone()));
    poll("a write after the failover", || cli_ok(&config, nodes[survivor].api, &["kv", "put", "after", "kill"]));

    // `hsu node run` brings the killed node back, at a new address, and it catches up: its
    // identity is its id and certificate, and the cluster learns where it is now.
    nodes[li].restart_moved();
    poll("the restarted node to catch up", || {
        let v = cli_ok(&config, nodes[li].api, &["kv", "get", "after", "--local", "-o", "json"])?;
        if v.contains("\"kill\"") {
            Ok(())
        } else {
            Err(v)
        }
    });
    let moved_to = nodes[li].listen.to_string();
    poll("the restarted node to be healthy at its new address", || {
        let s = status_json(&config, nodes[survivor].api)?;
        let m = s["members"].as_array().unwrap().iter().find(|m| m["name"] == leader.as_str()).cloned();
        if m.as_ref().is_some_and(|m| m["healthy"] == true && m["address"] == moved_to.as_str()) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });

    // `hsu node leave` shrinks the cluster cleanly, even when the leader leaves: it exits 0, and
    // the other two elect a leader in a new term and go on as two voters.
    let before = status_json(&config, nodes[survivor].api).unwrap();
    let current = before["leader"].as_str().unwrap().to_string();
    let leaver = nodes.iter().position(|n| n.name == current).unwrap();
    let left = cli(&config, nodes[leaver].api, &["node", "leave"]);
    assert!(left.status.success(), "{}", String::from_utf8_lossy(&left.stderr));
    let exit = nodes[leaver].wait_exit();
    assert!(exit.success(), "the leaving node exited with {exit}");
    let stay = nodes.iter().position(|n| n.name != current).unwrap();
    let s = poll("two voters and a new leader after leave", || {
        let s = status_json(&config, nodes[stay].api)?;
        let led = s["leader"].as_str().is_some_and(|l| !l.is_empty() && l != current);
        if led && voters(&s).len() == 2 && s["members"].as_array().unwrap().len() == 2 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert!(!voters(&s).contains(&nodes[leaver].name));
    assert!(s["term"].as_u64() > before["term"].as_u64(), "a new leader in the same term: {before} then {s}");
    cli_ok(&config, nodes[stay].api, &["kv", "put", "after", "leave"]).unwrap();
    let list = cli_ok(&config, nodes[stay].api, &["node", "list", "-o", "json"]).unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    let gone = list.as_array().unwrap().iter().find(|n| n["name"] == nodes[leaver].name.as_str()).unwrap();
    assert_eq!(gone["role"], "removed");
}
