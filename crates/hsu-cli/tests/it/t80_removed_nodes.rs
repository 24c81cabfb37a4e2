//! A removed node knows it. A learner and an agent-only node removed with `hsu node remove`
//! each say so once, stop their units (the cluster places those instances elsewhere; nobody
//! would supervise these copies), exit non-zero within 5 s, and refuse `hsu node run` on their
//! data directory. A removed node that keeps trying (its marker deleted, so it starts again and
//! again) costs the leader's log at most a couple of lines. An agent-only node that leaves with
//! `hsu node leave --data-dir` exits 0.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{alive, cli, cli_ok, hsu, pid_of, poll, poll_for, NodeProc, PID_UNIT};

/// How long a removed node may take to notice and exit.
const NOTICE: Duration = Duration::from_secs(5);

fn node_id(config: &std::path::Path, api: std::net::SocketAddr, name: &str) -> u64 {
    poll(&format!("{name} listed"), || {
        let text = cli_ok(config, api, &["node", "list", "-o", "json"])?;
        let v: Value = serde_json::from_str(&text).unwrap();
        let n = v.as_array().unwrap().iter().find(|n| n["name"] == name).cloned();
        n.and_then(|n| n["id"].as_u64()).ok_or(text)
    })
}

#[test]
fn removed_nodes_stop_and_exit_and_an_agent_that_leaves_exits_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let units = tempfile::tempdir().unwrap();
    let script = units.path().join("unit.py");
    std::fs::write(&script, PID_UNIT).unwrap();
    let n1 = NodeProc::init(root.path(), "n1");
    let config = n1.dir.join("admin.conf");
    let token = std::fs::read_to_string(n1.dir.join("join-token")).unwrap().trim().to_string();
    let mut learner =
        NodeProc::join_with(root.path(), "learner", n1.api, &token, &["--role", "learner", "--label", "site=edge"]);
    let mut agent =
        NodeProc::join_with(root.path(), "agent", n1.api, &token, &["--role", "agent", "--label", "site=edge"]);
    let mut leaver = NodeProc::join_with(root.path(), "leaver", n1.api, &token, &["--role", "agent"]);
    let ids = ["learner", "agent", "leaver"].map(|n| node_id(&config, n1.api, n));

    // One instance on each removed-to-be node.
    let spec = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: edge}}\nspec:\n  replicas: 2\n  template: {{command: [python3, \"{}\"], stop: {{grace: 1s}}}}\n  placement: {{nodeSelector: {{site: edge}}, maxPerNode: 1}}\n",
        script.display()
    );
    let file = units.path().join("edge.yaml");
    std::fs::write(&file, spec).unwrap();
    cli_ok(&config, n1.api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let pids: Vec<i32> = poll("an instance ready on the learner and on the agent", || {
        let text = cli_ok(&config, n1.api, &["get", "instances", "edge", "-o", "json"])?;
        let list: Vec<Value> = serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone();
        let ready: Vec<&Value> = list.iter().filter(|i| i["ready"] == true).collect();
        if ready.len() != 2 {
            return Err(text);
        }
        ready.iter().map(|i| pid_of(units.path(), i["name"].as_str().unwrap()).ok_or(text.clone())).collect()
    });
    let leader_log_before = n1.log().len();

    for id in &ids[..2] {
        cli_ok(&config, n1.api, &["node", "remove", &id.to_string()]).unwrap();
    }
    for node in [&mut learner, &mut agent] {
        let status = poll_for(NOTICE, &format!("{} to exit", node.name), || node.try_exit());
        assert!(!status.success(), "{} exited 0 after being removed", node.name);
        let log = node.log();
        assert_eq!(
            log.matches("was removed from the cluster").count(),
            2,
            "{}: said once, and exited with it:\n{log}",
            node.name
        );
    }
    for pid in pids {
        poll("the removed nodes' units to stop", || if alive(pid) { Err(format!("{pid} alive")) } else { Ok(()) });
    }

    // Neither starts again on its data directory; the agent-only one, its marker deleted, keeps
    // trying the servers and is refused each time until it takes itself for removed.
    for node in [&learner, &agent] {
        let out = hsu().args(["node", "run", "--data-dir"]).arg(&node.dir).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("was removed from the cluster"), "{}: {err}", node.name);
    }
    for _ in 0..5 {
        std::fs::remove_file(agent.dir.join("departed.json")).unwrap();
        agent.restart();
        let status = poll_for(NOTICE, "the agent to find out again", || agent.try_exit());
        assert!(!status.success());
    }
    let leader_log = n1.log()[leader_log_before..].to_string();
    let refusals = leader_log.lines().filter(|l| l.contains("WARN") && l.contains("handshake failed")).count();
    assert!(refusals <= 2, "the leader logged {refusals} lines of refused handshakes:\n{leader_log}");

    // `hsu node leave --data-dir` for an agent-only node: it leaves and its process exits 0.
    let left = hsu().args(["node", "leave", "--data-dir"]).arg(&leaver.dir).output().unwrap();
    assert!(left.status.success(), "{}", String::from_utf8_lossy(&left.stderr));
    let status = poll_for(NOTICE, "the leaver to exit", || leaver.try_exit());
    assert!(status.success(), "an agent-only node that left exited with {status}");
    let text = cli_ok(&config, n1.api, &["node", "list", "-o", "json"]).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let roles: Vec<(u64, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["role"].as_str().unwrap().to_string()))
        .collect();
    for id in ids {
        assert!(roles.contains(&(id, "removed".into())), "node {id} is not listed as removed: {text}");
    }
    let again = cli(&config, n1.api, &["node", "remove", "99"]);
    assert!(!again.status.success(), "removing an unknown node worked");
}
