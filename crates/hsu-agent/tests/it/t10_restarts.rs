//! Restart policies, growing backoff and the flap limit.

use hsu_agent::{Agent, Exit, State};

use crate::{lines, units, wait_for};

#[tokio::test]
async fn a_crashing_unit_backs_off_more_each_time_and_stops_at_the_flap_limit() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: crasher\n    command: [sh, -c, 'date +%s%N >> {}; exit 3']\n    restart: {{policy: always, backoff: {{initial: 100ms, max: 400ms}}, flap: {{max_restarts: 4, window: 1m}}}}\n",
        starts.display()
    );
    agent.apply(units(&yaml)).await;
    let s = wait_for(&agent, "crasher", "failed", |s| s.state == State::Failed).await;
    assert_eq!(s.restarts, 4);
    assert_eq!(s.last_exit, Some(Exit::Code(3)));
    let msg = s.message.unwrap_or_default();
    assert!(msg.contains("flap limit") && msg.contains("4 times within 1m"), "{msg}");
    // 1 start + 4 restarts, and the gaps between starts grow: 100, 200, 400, 400 ms at least.
    let t: Vec<u128> = lines(&starts).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(t.len(), 5, "{t:?}");
    let gaps_ms: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    for (gap, min) in gaps_ms.iter().zip([100, 200, 400, 400]) {
        assert!(*gap >= min, "gaps {gaps_ms:?}: expected at least {min} ms");
    }
    // Failed is final: no further start.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(lines(&starts).len(), 5);
    agent.shutdown(hsu_agent::OnExit::Stop).await;
}

#[tokio::test]
async fn on_failure_leaves_a_clean_exit_down_and_never_never_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, never) = (dir.path().join("clean"), dir.path().join("never"));
    let _cleanup = crate::Cleanup(dir.path().join("data"));
    let mut agent = Agent::open(&dir.path().join("data")).unwrap();
    let yaml = format!(
        "units:\n  - name: clean\n    command: [sh, -c, 'echo run >> {}; exit 0']\n    restart: {{policy: on-failure, backoff: {{initial: 10ms}}}}\n  - name: never\n    command: [sh, -c, 'echo run >> {}; exit 1']\n    restart: {{policy: never}}\n  - name: retried\n    command: [sh, -c, 'exit 2']\n    restart: {{policy: on-failure, backoff: {{initial: 10ms, max: 10ms}}, flap: {{max_restarts: 2}}}}\n",
        clean.display(),
        never.display()
    );
    agent.apply(units(&yaml)).await;
    let c = wait_for(&agent, "clean", "exited", |s| s.state == State::Exited).await;
    assert_eq!((c.restarts, c.last_exit), (0, Some(Exit::Code(0))));
    let n = wait_for(&agent, "never", "exited", |s| s.state == State::Exited).await;
    assert_eq!((n.restarts, n.last_exit), (0, Some(Exit::Code(1))));
    // The same policy does restart a failure, so the two above stayed down for their reason.
    let r = wait_for(&agent, "retried", "failed", |s| s.state == State::Failed).await;
    assert_eq!(r.restarts, 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(lines(&clean).len(), 1);
    assert_eq!(lines(&never).len(), 1);
    agent.shutdown(hsu_agent::OnExit::Stop).await;
}
