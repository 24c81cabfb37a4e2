//! Stopping: the configured signal reaches the whole group; what ignores it is SIGKILLed after
//! the grace period; nothing is left behind, not even a zombie.

use std::time::Duration;

use hsu_agent::process::group_members_with_zombies;
use hsu_agent::{Agent, Exit, OnExit, State};
use tokio::time::Instant;

use crate::{lines, poll, units, wait_for};

#[tokio::test]
async fn the_stop_signal_reaches_every_process_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got");
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    // A parent and a child, each noting the signal it received before exiting. (USR1: a shell
    // starts background jobs with SIGINT ignored, so SIGINT would not reach them.)
    let script = format!(
        "sh -c 'trap \"echo child >> {g}; exit 0\" USR1; sleep 1000 & wait' & trap 'echo parent >> {g}; wait; exit 0' USR1; sleep 1000 & wait",
        g = got.display()
    );
    let yaml =
        format!("units:\n  - name: u\n    command: [sh, -c, {script:?}]\n    stop: {{signal: USR1, grace: 10s}}\n");
    agent.apply(units(&yaml)).await;
    let s = wait_for(&agent, "u", "running", |s| s.state == State::Running).await;
    let pgid = s.pid.unwrap();
    poll("the child to start", || (group_members_with_zombies(pgid).len() >= 4).then_some(())).await;
    let started = Instant::now();
    agent.apply(units("units: []\n")).await;
    assert!(started.elapsed() < Duration::from_secs(10), "both exited on SIGUSR1, before the grace period");
    let mut who = lines(&got);
    who.sort();
    assert_eq!(who, ["child", "parent"]);
    assert_eq!(group_members_with_zombies(pgid), [], "nothing of group {pgid} is left");
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn a_group_that_ignores_the_signal_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    // An ignored signal stays ignored across fork and exec: the whole group ignores SIGTERM.
    let yaml = "units:\n  - name: stubborn\n    command: [sh, -c, 'trap \"\" TERM; sleep 1000 & sleep 1000 & wait']\n    stop: {grace: 700ms}\n";
    agent.apply(units(yaml)).await;
    let s = wait_for(&agent, "stubborn", "running", |s| s.state == State::Running).await;
    let pgid = s.pid.unwrap();
    poll("both sleeps to start", || (group_members_with_zombies(pgid).len() >= 3).then_some(())).await;
    let mut rx = agent.watch("stubborn").unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        agent.shutdown(OnExit::Stop).await;
    });
    let s = rx.wait_for(|s| s.state == State::Stopped).await.unwrap().clone();
    stopping.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700), "SIGKILL only after the grace period");
    assert_eq!(s.last_exit, Some(Exit::Signal(9)));
    assert_eq!(group_members_with_zombies(pgid), [], "nothing of group {pgid} is left");
}

#[tokio::test]
async fn what_a_crashed_main_process_leaves_in_its_group_is_killed_before_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = "units:\n  - name: leaky\n    command: [sh, -c, 'sleep 1000 & sleep 0.2; exit 1']\n    restart: {policy: on-failure, backoff: {initial: 5s}}\n";
    agent.apply(units(yaml)).await;
    let s = wait_for(&agent, "leaky", "running", |s| s.state == State::Running).await;
    let pgid = s.pid.unwrap();
    wait_for(&agent, "leaky", "waiting to restart", |s| s.state == State::Backoff).await;
    assert_eq!(group_members_with_zombies(pgid), [], "the background sleep went with its parent");
    agent.shutdown(OnExit::Stop).await;
}
