//! `hsu dev`: the README's "run it" command starts a cluster with the example deployments,
//! and stopping it stops the units and removes its directory.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use crate::harness::{cli_ok, free_addr, hsu, poll};

/// Processes whose environment says they are unit `name`.
fn unit_processes(name: &str) -> Vec<u32> {
    let want = format!("HSU_UNIT={name}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        })
        .collect()
}

#[test]
fn dev_runs_the_examples_and_cleans_up_on_sigterm() {
    let (api, listen) = (free_addr(), free_addr());
    let mut child = hsu()
        .args(["dev", "--api", &api.to_string(), "--listen", &listen.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut config = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(c) = line.trim().strip_prefix("export HSU_CONFIG=") {
            config = Some(std::path::PathBuf::from(c));
            break;
        }
    }
    let config = config.expect("hsu dev prints the config to use");
    let dir = config.parent().unwrap().to_path_buf();
    let list = poll("the example instances to be ready", || {
        let text = cli_ok(&config, api, &["get", "instances", "-o", "json"])?;
        let list: Vec<Value> = serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone();
        let ready = list.iter().filter(|i| i["ready"] == true).count();
        if list.len() == 3 && ready == 3 {
            Ok(list)
        } else {
            Err(text)
        }
    });
    let names: Vec<String> = list.iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    assert!(names.iter().all(|n| !unit_processes(n).is_empty()), "{names:?} run");

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = poll("hsu dev to exit", || child.try_wait().map_err(|e| e.to_string())?.ok_or("running".to_string()));
    assert!(status.success(), "hsu dev exited with {status}");
    for n in &names {
        assert!(unit_processes(n).is_empty(), "unit {n} outlived hsu dev");
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
