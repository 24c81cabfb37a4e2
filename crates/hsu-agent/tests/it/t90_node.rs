//! Per-unit CPU use, running as another user, and starting recorded units again after a reboot
//! (every recorded process gone, no other source of desired state).

use hsu_agent::{Agent, OnExit, State};

use crate::{units, wait_for, Cleanup};

#[tokio::test]
async fn cpu_use_is_measured_per_unit() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = "units:\n  - {name: busy, command: [sh, -c, 'while :; do :; done']}\n  - {name: idle, command: [sleep, '1000']}\n";
    agent.apply(units(yaml)).await;
    let busy = wait_for(&agent, "busy", "measured busy", |s| s.cpu_millicores.is_some_and(|m| m > 300)).await;
    let idle = wait_for(&agent, "idle", "measured", |s| s.cpu_millicores.is_some()).await;
    assert!(idle.cpu_millicores.unwrap() < 100, "idle {idle:?}, busy {busy:?}");
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn a_unit_runs_as_the_user_it_names() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("id");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let _cleanup = Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: as-nobody\n    command: [sh, -c, 'id -u > {o}; id -g >> {o}; ulimit -n >> {o}; exec sleep 1000']\n    user: nobody\n    group: '65534'\n    limits: {{memory: 256MiB, open_files: 100}}\n",
        o = out.display()
    );
    agent.apply(units(&yaml)).await;
    wait_for(&agent, "as-nobody", "running", |s| s.state == State::Running).await;
    let ids =
        crate::poll("the unit's ids", || std::fs::read_to_string(&out).ok().filter(|t| t.lines().count() == 3)).await;
    assert_eq!(ids, "65534\n65534\n100\n", "limits need root and the identity switch comes after them");
    agent.shutdown(OnExit::Stop).await;
}

#[tokio::test]
async fn after_a_reboot_the_recorded_units_start_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = Cleanup(data.clone());
    let yaml = "units:\n  - {name: a, command: [sleep, '1000']}\n  - {name: b, command: [sleep, '1000']}\n";
    let mut first = Agent::open(&data).unwrap();
    first.apply(units(yaml)).await;
    let mut old = Vec::new();
    for n in ["a", "b"] {
        old.push(wait_for(&first, n, "running", |s| s.state == State::Running).await.pid.unwrap());
    }
    first.shutdown(OnExit::Keep).await;
    // The machine goes down: every process is gone, the records stay.
    for pid in &old {
        hsu_agent::process::signal_group(*pid, rustix::process::Signal::KILL).unwrap();
        crate::poll("the unit to die", || {
            (!hsu_agent::process::ProcId::of(*pid).is_some_and(|p| p.alive())).then_some(())
        })
        .await;
    }
    let mut second = Agent::open(&data).unwrap();
    let recorded = second.recorded_specs();
    assert_eq!(recorded.len(), 2);
    let report = second.apply(recorded).await;
    assert_eq!(report.started, ["a", "b"]);
    for n in ["a", "b"] {
        let s = wait_for(&second, n, "running again", |s| s.state == State::Running).await;
        assert!(!old.contains(&s.pid.unwrap()));
    }
    second.shutdown(OnExit::Stop).await;
}
