//! Deployments on a 3-node cluster of real processes: placement spread over the nodes, a rolling
//! update watched by a sampler, kill -9 of the master during a rollout, rescheduling away from a
//! dead node and stopping its stale instances when it returns, automatic rollback at the
//! progress deadline, `rollout undo`, and a deployment that cannot be placed.
//!
//! The units are a small Python HTTP server that writes its pid to `<tmp>/pids/<unit>` and exits
//! by itself once its script is deleted (the temporary directory goes at the end of the test),
//! so no unit outlives the test even though nodes leave their units running when killed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{alive, cli, cli_ok, pid_of, poll, poll_for, status_json, three_voters, NODE_GRACE, PY_SERVE};

const SERVER: &str = r#"
import http.server, os, sys, threading, time
me = os.path.abspath(__file__)
pids = os.path.join(os.path.dirname(me), "pids")
os.makedirs(pids, exist_ok=True)
with open(os.path.join(pids, os.environ["HSU_UNIT"]), "w") as f:
    f.write(str(os.getpid()))
ready = os.environ.get("READY", "1") == "1"
print("serving", os.environ["HSU_UNIT"], "version", os.environ["VERSION"], flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("probed", flush=True)
        self.send_response(200 if ready else 503)
        self.end_headers()
"#;

fn spec(script: &Path, version: &str, ready: bool, deadline: &str) -> String {
    format!(
        r#"apiVersion: hsu/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  template:
    command: ["python3", "{script}", "${{HSU_PORT_HTTP}}"]
    env: {{VERSION: "{version}", READY: "{ready}"}}
    ports: [{{name: http}}]
    readiness: {{http: {{port: http, path: /}}, period: 200ms}}
    stop: {{grace: 2s}}
  strategy: {{maxSurge: 1, maxUnavailable: 0, minReady: 300ms, progressDeadline: {deadline}, autoRollback: true}}
"#,
        script = script.display(),
        ready = if ready { 1 } else { 0 },
    )
}

fn instances(config: &Path, api: std::net::SocketAddr) -> Result<Vec<Value>, String> {
    let text = cli_ok(config, api, &["get", "instances", "web", "-o", "json"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Exactly 3 instances, all of `revision`, running and ready.
fn settled(config: &Path, api: std::net::SocketAddr, revision: u64) -> Result<Vec<Value>, String> {
    let list = instances(config, api)?;
    let ok = list.len() == 3
        && list.iter().all(|i| i["revision"] == revision && i["ready"] == true && i["state"] == "running");
    if ok {
        Ok(list)
    } else {
        Err(format!("{list:?}"))
    }
}

/// The deployment `web` is at `revision` and its rollout is complete.
fn complete(config: &Path, api: std::net::SocketAddr, revision: u64) -> Result<(), String> {
    let d = cli_ok(config, api, &["get", "deployments", "web", "-o", "json"])?;
    let d: Value = serde_json::from_str(&d).map_err(|e| e.to_string())?;
    if d[0]["revision"] == revision && d[0]["phase"] == "Complete" {
        Ok(())
    } else {
        Err(d.to_string())
    }
}

/// Samples instances every 50 ms through the API until stopped: the fewest ready and the most
/// instances seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(u32, u32, u32)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(config: PathBuf, api: std::net::SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((u32::MAX, 0, 0)));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let cfg = hsu_sdk::client::ClientConfig::load(&config).unwrap();
                let mut api = hsu_sdk::client::connect_deployments(&cfg, Some(&api.to_string())).await.unwrap();
                while !s.load(Ordering::Relaxed) {
                    let req = hsu_proto::v1::ListRequest { namespace: "default".into(), name: "web".into() };
                    if let Ok(r) = api.list_instances(req).await {
                        let list = r.into_inner().instances;
                        let ready = list.iter().filter(|i| i.ready && i.desired == "run").count() as u32;
                        if ready < 3 {
                            eprintln!(
                                "SAMPLE ready {ready}: {:?}",
                                list.iter()
                                    .map(|i| (&i.name, i.revision, &i.state, i.ready, &i.desired, &i.message))
                                    .collect::<Vec<_>>()
                            );
                        }
                        let mut seen = v.lock().unwrap();
                        seen.0 = seen.0.min(ready);
                        seen.1 = seen.1.max(list.len() as u32);
                        seen.2 += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        Sampler { stop, seen, thread: Some(thread) }
    }

    /// (fewest ready, most instances, samples).
    fn finish(mut self) -> (u32, u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        *self.seen.lock().unwrap()
    }
}

fn apply(config: &Path, api: std::net::SocketAddr, dir: &Path, text: &str) {
    let file = dir.join("web.yaml");
    std::fs::write(&file, text).unwrap();
    let out = cli_ok(config, api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(out.contains("deployment/default/web"), "{out}");
}

fn leader(config: &Path, api: std::net::SocketAddr) -> String {
    poll("a leader", || {
        let s = status_json(config, api)?;
        match s["leader"].as_str() {
            Some(l) if !l.is_empty() => Ok(l.to_string()),
            _ => Err(s.to_string()),
        }
    })
}

#[test]
fn deployments_spread_roll_heal_roll_back_and_say_why_they_are_pending() {
    let root = tempfile::tempdir().unwrap();
    let units = tempfile::tempdir().unwrap();
    let script = units.path().join("server.py");
    std::fs::write(&script, format!("{SERVER}{PY_SERVE}")).unwrap();
    let (mut nodes, config, _) = three_voters(root.path());

    // 3 replicas on 3 nodes: one on each.
    apply(&config, nodes[0].api, units.path(), &spec(&script, "1", true, "30s"));
    let first = poll("3 ready instances of revision 1", || settled(&config, nodes[1].api, 1));
    let on: BTreeSet<&str> = first.iter().map(|i| i["node"].as_str().unwrap()).collect();
    assert_eq!(on, BTreeSet::from(["n1", "n2", "n3"]), "{first:?}");
    for field in ["name", "deployment", "revision", "node", "state", "ready"] {
        assert!(!first[0][field].is_null(), "instance without {field}: {:?}", first[0]);
    }

    // Logs come from every node running an instance, each line marked with its instance.
    let logs = cli_ok(&config, nodes[0].api, &["logs", "deployment/web", "--tail", "0"]).unwrap();
    for i in &first {
        let name = i["name"].as_str().unwrap();
        assert!(logs.contains(&format!("[{name}] serving {name} version 1")), "{name} missing in:\n{logs}");
    }
    let mut follow = crate::harness::hsu()
        .args(["--config", config.to_str().unwrap(), "--endpoint", &nodes[1].api.to_string()])
        .args(["logs", "-f", "--tail", "1", first[0]["name"].as_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let probed: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert!(probed.iter().all(|l| l.ends_with("probed")), "logs -f goes on with new lines: {probed:?}");
    let _ = follow.kill();
    let _ = follow.wait();

    // A rolling update: never fewer than 3 - 0 ready, never more than 3 + 1 instances.
    let sampler = Sampler::start(config.clone(), nodes[2].api);
    apply(&config, nodes[0].api, units.path(), &spec(&script, "2", true, "30s"));
    let out = cli(&config, nodes[0].api, &["rollout", "status", "web", "--timeout", "60s"]);
    assert!(out.status.success(), "rollout status: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 2 rolled out"));
    poll("3 ready instances of revision 2", || settled(&config, nodes[1].api, 2));
    let (fewest_ready, most, samples) = sampler.finish();
    assert!(samples > 5, "the sampler took only {samples} samples");
    assert!(fewest_ready >= 3, "the sampler saw only {fewest_ready} ready instances during the update");
    assert!(most <= 4, "the sampler saw {most} instances during the update");
    let old: Vec<String> = first.iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    poll("the old instances' processes to be gone", || {
        match old.iter().find(|u| pid_of(units.path(), u).is_some_and(alive)) {
            Some(u) => Err(format!("{u} still runs")),
            None => Ok(()),
        }
    });

    // kill -9 the master in the middle of a rollout: the new master finishes it, and no
    // instance is lost or doubled; the dead node's instances go elsewhere within the grace
    // period + 5 s, and when it comes back its stale instances are stopped.
    let master = leader(&config, nodes[0].api);
    let mi = nodes.iter().position(|n| n.name == master).unwrap();
    let other = (mi + 1) % 3;
    apply(&config, nodes[other].api, units.path(), &spec(&script, "3", true, "60s"));
    poll("the rollout of revision 3 to start", || {
        let list = instances(&config, nodes[other].api)?;
        if list.iter().any(|i| i["revision"] == 3) {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    });
    let on_master: Vec<String> = instances(&config, nodes[other].api)
        .unwrap()
        .iter()
        .filter(|i| i["node"] == master.as_str())
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    nodes[mi].kill9();
    // Placed elsewhere within the grace period + 5 s (ready a little later).
    poll_for(NODE_GRACE + Duration::from_secs(5), "the dead node's instances to be placed elsewhere", || {
        let list = instances(&config, nodes[other].api)?;
        let running = list.iter().filter(|i| i["desired"] == "run").count();
        if list.iter().any(|i| i["node"] == master.as_str()) || running < 3 {
            return Err(format!("{list:?}"));
        }
        Ok(())
    });
    let third = poll_for(Duration::from_secs(60), "3 ready instances of revision 3 off the dead node", || {
        let list = settled(&config, nodes[other].api, 3)?;
        if list.iter().any(|i| i["node"] == master.as_str()) {
            return Err(format!("still placed on the dead node {master}: {list:?}"));
        }
        Ok(list)
    });
    let names: BTreeSet<&str> = third.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "an instance is doubled: {third:?}");
    let stale: Vec<i32> = on_master.iter().filter_map(|u| pid_of(units.path(), u)).filter(|p| alive(*p)).collect();
    assert!(!stale.is_empty(), "the killed node's units keep running while it is away: {on_master:?}");
    nodes[mi].restart_moved();
    poll("the returning node to stop its stale instances", || match stale.iter().find(|p| alive(**p)) {
        Some(p) => Err(format!("pid {p} still runs")),
        None => Ok(()),
    });
    poll("3 ready instances of revision 3 after the node returned", || settled(&config, nodes[mi].api, 3));
    poll("revision 3 to be complete", || complete(&config, nodes[0].api, 3));

    // A template whose readiness never passes: the rollout stops at its deadline and goes back
    // to revision 3 by itself; `rollout status` says so and exits 1.
    apply(&config, nodes[0].api, units.path(), &spec(&script, "4", false, "4s"));
    let out = cli(&config, nodes[0].api, &["rollout", "status", "web", "--timeout", "60s"]);
    assert!(!out.status.success(), "rollout status of a failing rollout exits 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollout of revision 4 failed: no progress for 4s") && err.contains("rolled back to revision 3"),
        "{err}"
    );
    poll("revision 3 again", || settled(&config, nodes[0].api, 3));

    // `rollout undo` goes back to the previous kept revision (2: the 4th failed and is current
    // no more).
    let history = cli_ok(&config, nodes[0].api, &["rollout", "history", "web", "-o", "json"]).unwrap();
    let history: Value = serde_json::from_str(&history).unwrap();
    let kept: Vec<u64> = history.as_array().unwrap().iter().map(|r| r["revision"].as_u64().unwrap()).collect();
    assert_eq!(kept, [1, 2, 3, 4]);
    cli_ok(&config, nodes[0].api, &["rollout", "undo", "web", "--to-revision", "2"]).unwrap();
    poll("revision 2 restored by undo", || settled(&config, nodes[0].api, 2));
    poll("revision 2 to be complete", || complete(&config, nodes[0].api, 2));

    // More CPU than any node has: pending, and `describe` says why.
    let big = "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {name: big}\nspec:\n  template: {command: [sleep, \"1000\"]}\n  resources: {cpu: 4000}\n";
    let file = units.path().join("big.yaml");
    std::fs::write(&file, big).unwrap();
    cli_ok(&config, nodes[0].api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let described = poll("a reason why big is pending", || {
        let text = cli_ok(&config, nodes[1].api, &["describe", "deployment", "big"])?;
        if text.contains("Pending:") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(described.contains("0/3 nodes fit: 3 have too little free CPU (asks 4000000m"), "{described}");
    let list = cli_ok(&config, nodes[1].api, &["get", "instances", "big", "-o", "json"]).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap(), Value::Array(vec![]));

    // A file with one bad document applies nothing, and the error names file, line and field.
    let bad = format!("{}---\napiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: other}}\nspec:\n  replicas: lots\n  template: {{command: [x]}}\n", spec(&script, "5", true, "30s"));
    let file = units.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = cli(&config, nodes[0].api, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("line 18") && err.contains("invalid u32"), "{err}");
    let d = cli_ok(&config, nodes[0].api, &["get", "deployments", "-o", "json"]).unwrap();
    let names: BTreeMap<String, u64> = serde_json::from_str::<Value>(&d)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_string(), d["revision"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, BTreeMap::from([("big".to_string(), 1), ("web".to_string(), 2)]), "nothing of bad.yaml applied");

    // Deleting the deployment stops its instances, even when a deployment of the same name is
    // applied again at once: the new one starts its own and never takes over the old ones.
    let last: Vec<String> =
        instances(&config, nodes[0].api).unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    cli_ok(&config, nodes[0].api, &["delete", "deployment", "web"]).unwrap();
    apply(&config, nodes[0].api, units.path(), &spec(&script, "6", true, "30s"));
    poll("the deleted deployment's processes to be gone", || {
        match last.iter().find(|u| pid_of(units.path(), u).is_some_and(alive)) {
            Some(u) => Err(format!("{u} still runs")),
            None => Ok(()),
        }
    });
    let again = poll("3 ready instances of the new web", || settled(&config, nodes[0].api, 1));
    assert!(again.iter().all(|i| !last.contains(&i["name"].as_str().unwrap().to_string())), "{again:?}");
    cli_ok(&config, nodes[0].api, &["delete", "deployment", "web"]).unwrap();
    poll("no instances left", || {
        let list = instances(&config, nodes[0].api)?;
        if list.is_empty() {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    });
}
