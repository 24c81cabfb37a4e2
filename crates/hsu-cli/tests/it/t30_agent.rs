//! `hsu agent run` as a user runs it: 20 units survive kill -9 of the agent and are adopted by
//! the next one (same pids, none started twice); reload applies only the difference; a bad file
//! changes nothing; SIGTERM stops the units and ends the agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use serde_json::Value;

use crate::harness::{hsu, poll};

/// A running `hsu agent run`; on drop it is killed and so is every unit its records name.
struct AgentProc {
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    fn start(units: &Path, data: &Path) -> AgentProc {
        let log = data.with_extension("log");
        let out = std::fs::File::options().create(true).append(true).open(&log).unwrap();
        let child = hsu()
            .args(["agent", "run", "--units"])
            .arg(units)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        AgentProc { data: data.to_path_buf(), log, child: Some(child) }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        for pgid in recorded_groups(&self.data) {
            let _ = std::process::Command::new("kill").args(["-9", "--", &format!("-{pgid}")]).output();
        }
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn recorded_groups(data: &Path) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(data.join("units")) else { return vec![] };
    dir.filter_map(|e| std::fs::read(e.ok()?.path().join("record.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok()?["pgid"].as_u64())
        .collect()
}

fn agent_cli(args: &[&str], data: &Path) -> Output {
    hsu().arg("agent").args(args).arg("--data-dir").arg(data).stdin(Stdio::null()).output().unwrap()
}

/// name → (state, pid, adopted), from `hsu agent status -o json`.
fn status(data: &Path) -> Result<BTreeMap<String, (String, u64, bool)>, String> {
    let out = agent_cli(&["status", "-o", "json"], data);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let name = u["name"].as_str().unwrap().to_string();
            (name, (u["state"].as_str().unwrap().to_string(), u["pid"].as_u64().unwrap_or(0), u["adopted"] == true))
        })
        .collect())
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn units_yaml(starts: &Path, names: &[String], changed: Option<&str>) -> String {
    let mut y = String::from("units:\n");
    for n in names {
        let secs = if Some(n.as_str()) == changed { "2000" } else { "1000" };
        y += &format!(
            "  - name: {n}\n    command: [sh, -c, 'echo {n} $$ >> {}; exec sleep {secs}']\n    stop: {{grace: 2s}}\n",
            starts.display()
        );
    }
    y
}

fn all_running(data: &Path, n: usize) -> Result<BTreeMap<String, (String, u64, bool)>, String> {
    let s = status(data)?;
    if s.len() == n && s.values().all(|(state, pid, _)| state == "running" && *pid > 0) {
        Ok(s)
    } else {
        Err(format!("{s:?}"))
    }
}

#[test]
fn units_outlive_kill_9_of_the_agent_and_are_adopted_and_reload_applies_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (units, data, starts) = (dir.path().join("units.yaml"), dir.path().join("data"), dir.path().join("starts"));
    let mut names: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    std::fs::write(&units, units_yaml(&starts, &names, None)).unwrap();

    let mut first = AgentProc::start(&units, &data);
    let before = poll("20 units running", || all_running(&data, 20));
    first.kill9();
    for (n, (_, pid, _)) in &before {
        assert!(alive(*pid), "{n} (pid {pid}) kept running after kill -9 of the agent");
    }

    let mut second = AgentProc::start(&units, &data);
    let after = poll("20 units adopted", || all_running(&data, 20));
    for (n, (_, pid, adopted)) in &after {
        assert_eq!(*pid, before[n].1, "{n} has the same pid");
        assert!(*adopted, "{n} was adopted");
    }
    assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 20, "none was started twice");

    // Edit: u19 removed, u18 changed, `extra` added; the other 18 must not be touched.
    names.pop();
    names.push("extra".into());
    std::fs::write(&units, units_yaml(&starts, &names, Some("u18"))).unwrap();
    let out = agent_cli(&["reload", "-o", "json"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stopped"], serde_json::json!(["u19"]));
    assert_eq!(report["replaced"], serde_json::json!(["u18"]));
    assert_eq!(report["started"], serde_json::json!(["extra"]));
    assert_eq!(report["unchanged"].as_array().unwrap().len(), 18);
    assert!(!alive(before["u19"].1), "u19 was stopped");
    assert!(!alive(before["u18"].1), "u18's old process was stopped");
    let reloaded = poll("the new units running", || all_running(&data, 20));
    for n in names.iter().filter(|n| n.starts_with('u') && n.as_str() < "u18") {
        assert_eq!(reloaded[n].1, before[n].1, "{n} untouched");
    }

    // The machine's capacity, as the scheduler will see it.
    let out = agent_cli(&["resources", "-o", "json"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["cpu_cores"].as_u64().unwrap() >= 1 && r["memory_total_bytes"].as_u64().unwrap() > 0, "{r}");

    // A bad file: the reload fails with the file and line, and nothing changes.
    std::fs::write(&units, "units:\n  - name: u00\n    command: [sleep, '1']\n    colour: red\n").unwrap();
    let out = agent_cli(&["reload"], &data);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("units.yaml") && err.contains("line 4") && err.contains("colour"), "{err}");
    assert_eq!(status(&data).unwrap(), reloaded, "a refused reload changed nothing");

    // SIGHUP re-reads the file too: u00 removed, everything else as it was.
    names.retain(|n| n != "u00");
    std::fs::write(&units, units_yaml(&starts, &names, Some("u18"))).unwrap();
    let pid = second.child.as_ref().unwrap().id().to_string();
    let _ = std::process::Command::new("kill").args(["-HUP", &pid]).output();
    let after_hup = poll("SIGHUP to remove u00", || {
        let s = status(&data)?;
        if s.contains_key("u00") {
            Err(format!("{s:?}"))
        } else {
            Ok(s)
        }
    });
    assert!(!alive(reloaded["u00"].1), "u00 was stopped");
    for (n, (_, pid, _)) in &after_hup {
        assert_eq!(*pid, reloaded[n].1, "{n} untouched by SIGHUP");
    }
    let reloaded = after_hup;

    // SIGTERM: the units are stopped, then the agent exits 0.
    let mut child = second.child.take().unwrap();
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).output();
    let code = poll("the agent to exit", || child.try_wait().map_err(|e| e.to_string())?.ok_or("running".to_string()));
    assert!(code.success(), "exit status {code}");
    for (n, (_, pid, _)) in &reloaded {
        assert!(!alive(*pid), "{n} (pid {pid}) was stopped with the agent");
    }
}

#[test]
fn a_bad_units_file_stops_the_agent_before_it_starts_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (units, data) = (dir.path().join("bad.yaml"), dir.path().join("data"));
    std::fs::write(
        &units,
        "units:\n  - name: ok\n    command: [sleep, '100']\n  - name: bad\n    restart: {policy: always}\n",
    )
    .unwrap();
    let out = hsu()
        .args(["agent", "run", "--units"])
        .arg(&units)
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("line 4") && err.contains("missing field `command`"), "{err}");
    assert!(recorded_groups(&data).is_empty(), "nothing was started");
}
