//! A second agent on the same data directory adopts what the first one left running: the same
//! pids, nothing started twice; a unit whose spec changed meanwhile is replaced.

use hsu_agent::process::{group_members_with_zombies, ProcId};
use hsu_agent::{Agent, OnExit, State};

use crate::{units, wait_for};

#[tokio::test]
async fn a_new_agent_adopts_running_units_and_replaces_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let v1 = "units:\n  - {name: a, command: [sleep, '1000']}\n  - {name: b, command: [sleep, '1000']}\n  - {name: c, command: [sleep, '1000']}\n";
    let _cleanup = crate::Cleanup(data.clone());
    let mut first = Agent::open(&data).unwrap();
    first.apply(units(v1)).await;
    let mut pids = Vec::new();
    for n in ["a", "b", "c"] {
        pids.push(wait_for(&first, n, "running", |s| s.state == State::Running).await.pid.unwrap());
    }
    first.shutdown(OnExit::Keep).await;
    for p in &pids {
        assert!(ProcId::of(*p).is_some_and(|id| id.alive()), "pid {p} kept running");
    }

    let mut second = Agent::open(&data).unwrap();
    let v2 = v1.replace("{name: c, command: [sleep, '1000']}", "{name: c, command: [sleep, '2000']}");
    let report = second.apply(units(&v2)).await;
    assert_eq!(report.adopted, ["a", "b"]);
    assert_eq!(report.stopped, ["c"], "c's old process is stopped: its spec changed");
    assert_eq!(report.started, ["c"]);
    for (n, p) in ["a", "b"].iter().zip(&pids) {
        let s = second.status().into_iter().find(|s| s.name == *n).unwrap();
        assert_eq!((s.pid, s.adopted, s.state), (Some(*p), true, State::Running), "{n}");
    }
    assert_eq!(group_members_with_zombies(pids[2]), [], "the old c is gone");
    let c = wait_for(&second, "c", "running", |s| s.state == State::Running).await;
    assert_ne!(c.pid, Some(pids[2]));

    // Adopted processes are not the agent's children, and it still stops them.
    second.shutdown(OnExit::Stop).await;
    for p in &pids[..2] {
        assert_eq!(group_members_with_zombies(*p), [], "group {p} is gone");
    }
}

#[tokio::test]
async fn workers_left_by_a_main_process_that_died_while_no_agent_watched_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = crate::Cleanup(data.clone());
    // The main process (exec'd sleep 1000) and a worker (sleep 1001) share the unit's group.
    let yaml = "units:\n  - {name: w, command: [sh, -c, 'sleep 1001 & exec sleep 1000']}\n";
    let mut first = Agent::open(&data).unwrap();
    first.apply(units(yaml)).await;
    let main = wait_for(&first, "w", "running", |s| s.state == State::Running).await.pid.unwrap();
    crate::poll("the worker", || (hsu_agent::process::group_members(main).len() == 2).then_some(())).await;
    let worker = *hsu_agent::process::group_members(main).iter().find(|p| **p != main).unwrap();
    first.shutdown(OnExit::Keep).await;
    // The main process dies while no agent runs; the worker runs on.
    rustix::process::kill_process(rustix::process::Pid::from_raw(main as i32).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    crate::poll("the main process to die", || (!ProcId::of(main).is_some_and(|p| p.alive())).then_some(())).await;

    let mut second = Agent::open(&data).unwrap();
    let report = second.apply(units(yaml)).await;
    assert_eq!(
        (report.stopped.as_slice(), report.started.as_slice()),
        (&["w".to_string()][..], &["w".to_string()][..])
    );
    assert!(!ProcId::of(worker).is_some_and(|p| p.alive()), "the old generation's worker was stopped");
    wait_for(&second, "w", "running again", |s| s.state == State::Running && s.pid != Some(main)).await;
    second.shutdown(OnExit::Stop).await;
}
