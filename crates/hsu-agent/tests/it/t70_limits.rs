//! Limits: a unit past its memory limit is OOM-killed and reported as such (cgroup v2 or v1,
//! whichever this machine has; without either the status says the limits are not enforced);
//! the unit's processes are in its cgroup from their first instruction; rlimits reach it.

use hsu_agent::limits::{detect, Cgroups};
use hsu_agent::{Agent, Exit, OnExit, State};

use crate::{units, wait_for, Cleanup};

/// Cgroups are mounted and this process may create them (root).
fn cgroups_usable() -> bool {
    detect() != Cgroups::None && rustix::process::geteuid().is_root()
}

#[tokio::test]
async fn a_unit_past_its_memory_limit_is_oom_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let mode = detect();
    eprintln!("cgroups on this machine: {mode:?}");
    // Grows by 10 MB a step, touching every page, far past the 48 MiB limit; bounded at 400 MB
    // so that a machine where the limit cannot be enforced (no cgroups, not root) is not hurt.
    let yaml = "units:\n  - name: hog\n    command: [python3, -c, \"import time\\nx=[]\\nfor i in range(40):\\n  x.append(bytearray(10**7))\\n  time.sleep(0.01)\\ntime.sleep(1000)\"]\n    restart: {policy: never}\n    limits: {memory: 48MiB}\n";
    agent.apply(units(yaml)).await;
    let s = wait_for(&agent, "hog", "told how its limits are enforced", |s| s.limits.is_some()).await;
    if !cgroups_usable() {
        assert!(s.limits.unwrap().contains("not enforced"), "without cgroups the status says so");
        agent.shutdown(OnExit::Stop).await;
        return;
    }
    let s = wait_for(&agent, "hog", "exited", |s| s.state == State::Exited).await;
    let how = s.limits.clone().unwrap_or_default();
    eprintln!("enforced by {how}");
    assert!(how.starts_with("cgroup v1: memory") || how.starts_with("cgroup v2: memory"), "{how}");
    assert_eq!(s.last_exit, Some(Exit::Signal(9)));
    assert!(s.oom_killed, "{s:?}");
    assert!(s.message.unwrap_or_default().contains("OOM-killed"));
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn processes_run_in_the_units_cgroup_with_their_rlimits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("limits");
    let _cleanup = Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    // The shell reports what it got from its first instruction on: its rlimits and cgroups.
    let yaml = format!(
        "units:\n  - name: limited\n    command: [sh, -c, 'echo files $(ulimit -n) core $(ulimit -c) >> {o}; cat /proc/self/cgroup >> {o}; exec sleep 1000']\n    limits: {{open_files: 123, core: 0, memory: 256MiB, cpu: 0.5, pids: 50}}\n",
        o = out.display()
    );
    agent.apply(units(&yaml)).await;
    let s = wait_for(&agent, "limited", "running", |s| s.state == State::Running).await;
    let text = crate::poll("the unit's report", || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        t.contains("cpu").then_some(t)
    })
    .await;
    assert!(text.contains("files 123 core 0"), "{text}");
    match detect() {
        _ if !cgroups_usable() => assert!(s.limits.unwrap_or_default().contains("not enforced")),
        Cgroups::V1 { .. } => {
            for controller in ["memory", "cpu", "pids"] {
                let line =
                    text.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|x| x == controller)));
                assert!(line.is_some_and(|l| l.ends_with("/hsu/limited")), "{controller}: {text}");
            }
        }
        Cgroups::V2(_) => assert!(text.lines().any(|l| l == "0::/hsu/limited"), "{text}"),
        Cgroups::None => assert!(s.limits.unwrap_or_default().contains("not enforced")),
    }
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn a_process_that_left_the_group_is_stopped_through_the_cgroup() {
    if !cgroups_usable() {
        eprintln!("skipped: no cgroups this process may create");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let escaped = dir.path().join("escaped.pid");
    let _cleanup = Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    // setsid puts the helper in a session and group of its own: signals to the unit's group
    // miss it, its cgroup does not.
    let yaml = format!(
        "units:\n  - name: daemonizing\n    command: [sh, -c, 'setsid sh -c \"echo \\$$ > {e}; exec sleep 1001\" & exec sleep 1000']\n    limits: {{pids: 100}}\n",
        e = escaped.display()
    );
    agent.apply(units(&yaml)).await;
    wait_for(&agent, "daemonizing", "running", |s| s.state == State::Running).await;
    let pid: u32 =
        crate::poll("the escaped process", || std::fs::read_to_string(&escaped).ok()?.trim().parse().ok()).await;
    assert!(hsu_agent::process::ProcId::of(pid).is_some_and(|p| p.alive()));
    agent.shutdown(OnExit::Stop).await;
    assert!(!hsu_agent::process::ProcId::of(pid).is_some_and(|p| p.alive()), "pid {pid} escaped the stop");
}
