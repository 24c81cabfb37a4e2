//! Jobs: run to completion with parallelism, retries until they run out, and dispatch with
//! parameters, on a real node.

use serde_json::Value;

use crate::harness::{cli, cli_ok, poll, NodeProc};

fn job(config: &std::path::Path, api: std::net::SocketAddr, name: &str) -> Result<Value, String> {
    let text = cli_ok(config, api, &["get", "jobs", name, "-o", "json"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(v[0].clone())
}

#[test]
fn jobs_run_to_completion_retry_and_take_parameters() {
    let root = tempfile::tempdir().unwrap();
    let n1 = NodeProc::init(root.path(), "n1");
    let config = n1.dir.join("admin.conf");
    let file = root.path().join("jobs.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: hsu/v1
kind: Job
metadata: {name: batch}
spec:
  template: {command: [sh, -c, "echo working; sleep 0.2"]}
  completions: 3
  parallelism: 2
---
apiVersion: hsu/v1
kind: Job
metadata: {name: flaky}
spec:
  template: {command: [sh, -c, "exit 3"]}
  retries: 1
---
apiVersion: hsu/v1
kind: Job
metadata: {name: report}
spec:
  template: {command: [sh, -c, "test \"$DAY\" = mon"]}
  retries: 0
  dispatchOnly: true
"#,
    )
    .unwrap();
    poll("the node to take the jobs", || cli_ok(&config, n1.api, &["apply", "-f", file.to_str().unwrap()]));

    let batch = poll("batch to succeed", || {
        let j = job(&config, n1.api, "batch")?;
        if j["runs"][0]["phase"] == "Succeeded" {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    });
    assert_eq!((batch["runs"][0]["succeeded"].as_u64(), batch["runs"][0]["failed"].as_u64()), (Some(3), Some(0)));

    let flaky = poll("flaky to fail after its retry", || {
        let j = job(&config, n1.api, "flaky")?;
        if j["runs"][0]["phase"] == "Failed" {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    });
    assert_eq!(flaky["runs"][0]["failed"].as_u64(), Some(2), "one try and one retry: {flaky}");
    let out = cli(&config, n1.api, &["job", "run", "flaky", "--timeout", "60s"]);
    assert!(!out.status.success(), "a failing run exits 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run 2 of job default/flaky failed"));

    // A dispatch-only job runs only when dispatched, with the parameters in its environment.
    let report = job(&config, n1.api, "report").unwrap();
    assert_eq!(report["runs"], Value::Array(vec![]), "not run when applied");
    let out = cli(&config, n1.api, &["job", "dispatch", "report", "--env", "DAY=mon", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&config, n1.api, &["job", "dispatch", "report", "--env", "DAY=tue", "--wait", "--timeout", "60s"]);
    assert!(!out.status.success(), "the parameter reaches the unit: DAY=tue fails the test");
    let out = cli(&config, n1.api, &["job", "dispatch", "report", "--env", "HSU_X=1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HSU_"), "{}", String::from_utf8_lossy(&out.stderr));

    // Finished runs leave no instances behind; `job run` runs an applied job again.
    cli_ok(&config, n1.api, &["job", "run", "batch", "--timeout", "60s"]).unwrap();
    poll("no job instances left", || {
        let text = cli_ok(&config, n1.api, &["get", "instances", "-o", "json"])?;
        if serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().is_empty() {
            Ok(())
        } else {
            Err(text)
        }
    });
    cli_ok(&config, n1.api, &["delete", "job", "batch"]).unwrap();
    assert!(cli(&config, n1.api, &["get", "jobs", "batch"]).status.code() == Some(1));
}
