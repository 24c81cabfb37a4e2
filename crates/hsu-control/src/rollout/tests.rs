//! Tests of the rollout plan: surge and unavailability bounds, canaries, pauses and rollbacks.

use super::*;
use std::collections::BTreeMap;

use hsu_model::deploy::{parse_documents, Object, Source};

fn deployment(replicas: u32, strategy: &str, command: &str) -> Deployment {
    let text = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template: {{command: [{command}]}}\n  strategy: {strategy}\n  revisionHistoryLimit: 2\n"
    );
    let docs = parse_documents(&[Source { file: "t.yaml", text: &text }]).unwrap();
    match docs.into_iter().next().unwrap().object {
        Object::Deployment(d) => d,
        Object::Job(_) => unreachable!(),
    }
}

/// A little world: instances become ready `ready_after` ticks after they start; stopped ones
/// disappear after one tick. Every tick runs one controller step.
struct World {
    rec: DeploymentRecord,
    revisions: Vec<RevisionRecord>,
    instances: BTreeMap<String, (InstanceView, u32)>,
    ready_after: u32,
    /// Revisions whose instances never become ready.
    broken: Vec<u64>,
    next_id: u32,
    now_ms: u64,
}

impl World {
    fn new(d: &Deployment) -> World {
        let a = apply(None, &[], d, "u1", 0);
        World {
            rec: a.record,
            revisions: a.new_revision.into_iter().collect(),
            instances: BTreeMap::new(),
            ready_after: 2,
            broken: vec![],
            next_id: 0,
            now_ms: 0,
        }
    }

    fn apply(&mut self, d: &Deployment) {
        let a = apply(Some(&self.rec), &self.revisions, d, "u1", self.now_ms);
        self.rec = a.record;
        self.revisions.extend(a.new_revision);
        self.revisions.retain(|r| !a.prune.contains(&r.number));
    }

    fn views(&self) -> Vec<InstanceView> {
        self.instances.values().map(|(v, _)| v.clone()).collect()
    }

    fn tick(&mut self) -> Step {
        self.now_ms += 100;
        // The nodes act: age, become ready, stop.
        for (v, age) in self.instances.values_mut() {
            *age += 1;
            let ready = v.desired == Desired::Run && *age >= self.ready_after && !self.broken.contains(&v.revision);
            let state = if v.desired == Desired::Stop { "stopped" } else { "running" };
            v.observed = Observed::Reported(InstanceReport {
                id: v.id.clone(),
                state: state.into(),
                ready,
                ready_for_ms: if ready { u64::from(*age - self.ready_after) * 100 } else { 0 },
                restarts: 0,
                exit_code: None,
                finished: false,
                message: None,
                ports: Default::default(),
            });
        }
        let stable = self.revisions.iter().find(|r| r.number == self.rec.stable_revision);
        let stable = stable.map(|r| Stable { template: &r.template.0, resources: r.resources.0 });
        let s = step(&self.rec, &self.views(), stable, self.now_ms);
        for id in &s.delete {
            self.instances.remove(id);
        }
        for id in &s.stop {
            self.instances.get_mut(id).unwrap().0.desired = Desired::Stop;
        }
        for _ in 0..s.create {
            self.next_id += 1;
            let id = format!("i{}", self.next_id);
            let v = InstanceView {
                id: id.clone(),
                revision: self.rec.revision,
                node: 1,
                desired: Desired::Run,
                created_ms: self.now_ms,
                observed: Observed::Absent,
            };
            self.instances.insert(id, (v, 0));
        }
        if let Some(r) = &s.record {
            self.rec = r.clone();
        }
        s
    }

    fn ready(&self) -> u32 {
        self.instances
            .values()
            .filter(|(v, _)| matches!(&v.observed, Observed::Reported(r) if r.ready && v.desired == Desired::Run))
            .count() as u32
    }

    fn of_revision(&self, rev: u64) -> u32 {
        self.instances.values().filter(|(v, _)| v.revision == rev && v.desired == Desired::Run).count() as u32
    }

    /// Ticks until the phase is Complete (or `max` ticks), checking the bounds at every tick.
    fn run(&mut self, max: u32, check_min: bool) -> u32 {
        let r = self.rec.spec.0.replicas;
        let (surge, unavailable) = self.rec.spec.0.strategy.counts(r);
        for t in 0..max {
            self.tick();
            let total = self.instances.len() as u32;
            assert!(total <= r + surge, "tick {t}: {total} instances > {r} + {surge}");
            if check_min {
                assert!(self.ready() >= r - unavailable, "tick {t}: {} ready < {r} - {unavailable}", self.ready());
            }
            if self.rec.phase == Phase::Complete {
                return t;
            }
        }
        panic!("no convergence in {max} ticks: {:?}", self.rec);
    }
}

#[test]
fn a_new_deployment_starts_its_replicas_and_completes() {
    let d = deployment(3, "{maxSurge: 1, maxUnavailable: 0}", "a");
    let mut w = World::new(&d);
    w.run(20, false);
    assert_eq!(w.of_revision(1), 3);
    assert_eq!(w.rec.stable_revision, 1);
}

#[test]
fn rolling_updates_keep_both_bounds_for_many_strategies() {
    for (r, strategy) in [
        (3, "{maxSurge: 1, maxUnavailable: 0}"),
        (3, "{maxSurge: 0, maxUnavailable: 1}"),
        (5, "{maxSurge: 2, maxUnavailable: 1}"),
        (10, "{}"),
        (4, "{maxSurge: 100%, maxUnavailable: 0}"),
        (1, "{maxSurge: 0, maxUnavailable: 1}"),
        (7, "{maxSurge: 30%, maxUnavailable: 30%, minReady: 300ms}"),
    ] {
        let mut w = World::new(&deployment(r, strategy, "a"));
        w.run(50, false);
        w.apply(&deployment(r, strategy, "b"));
        assert_eq!(w.rec.revision, 2);
        w.run(200, true);
        assert_eq!((w.of_revision(2), w.of_revision(1)), (r, 0), "{strategy}");
        assert_eq!(w.instances.len() as u32, r, "{strategy}: stopped instances are deleted");
        assert_eq!(w.ready(), r);
    }
}

#[test]
fn scaling_down_stops_surplus_instances() {
    let mut w = World::new(&deployment(5, "{}", "a"));
    w.run(50, false);
    w.apply(&deployment(2, "{}", "a"));
    assert_eq!(w.rec.revision, 1, "only the replica count changed: same revision");
    w.tick();
    w.run(20, false);
    assert_eq!(w.instances.len(), 2);
}

#[test]
fn a_rollout_without_progress_fails_at_the_deadline_and_rolls_back() {
    let strategy = "{maxSurge: 1, maxUnavailable: 0, progressDeadline: 2s, autoRollback: true}";
    let mut w = World::new(&deployment(3, strategy, "a"));
    w.run(50, false);
    w.apply(&deployment(3, strategy, "b"));
    w.broken = vec![2];
    let mut saw_rolling_back = false;
    for _ in 0..100 {
        w.tick();
        assert!(w.ready() >= 3, "old instances stay while the new one never becomes ready");
        saw_rolling_back |= w.rec.phase == Phase::RollingBack;
        if w.rec.phase == Phase::Complete {
            break;
        }
    }
    assert!(saw_rolling_back);
    assert_eq!(w.rec.phase, Phase::Complete);
    assert_eq!((w.rec.revision, w.rec.rolled_back_from), (1, Some(2)));
    assert_eq!(w.rec.spec.0.template.command.as_ref().unwrap().program(), "a");
    assert_eq!((w.of_revision(1), w.of_revision(2)), (3, 0));
    assert!(w.rec.events.iter().any(|e| e.message.contains("no progress for 2s")), "{:?}", w.rec.events);
}

#[test]
fn without_auto_rollback_a_stuck_rollout_is_failed() {
    let strategy = "{maxSurge: 1, maxUnavailable: 0, progressDeadline: 1s}";
    let mut w = World::new(&deployment(2, strategy, "a"));
    w.run(50, false);
    w.apply(&deployment(2, strategy, "b"));
    w.broken = vec![2];
    for _ in 0..30 {
        w.tick();
    }
    assert_eq!(w.rec.phase, Phase::Failed);
    assert_eq!(w.rec.revision, 2);
    assert_eq!(w.of_revision(1), 2, "the old instances keep serving");
}

#[test]
fn lost_instances_are_replaced() {
    let mut w = World::new(&deployment(3, "{}", "a"));
    w.run(50, false);
    let lost = w.instances.keys().next().unwrap().clone();
    w.instances.get_mut(&lost).unwrap().0.observed = Observed::NodeDown;
    let s = step(&w.rec, &w.views(), None, w.now_ms);
    assert_eq!(s.delete, std::slice::from_ref(&lost));
    w.instances.remove(&lost);
    w.run(50, false);
    assert_eq!(w.of_revision(1), 3);
    assert!(!w.instances.contains_key(&lost));
}

#[test]
fn unknown_instances_are_neither_deleted_nor_counted_available() {
    let mut w = World::new(&deployment(2, "{maxSurge: 1, maxUnavailable: 0}", "a"));
    w.run(50, false);
    for (v, _) in w.instances.values_mut() {
        v.observed = Observed::Unknown;
    }
    w.apply(&deployment(2, "{maxSurge: 1, maxUnavailable: 0}", "b"));
    let s = step(&w.rec, &w.views(), None, w.now_ms);
    assert!(s.delete.is_empty() && s.stop.is_empty(), "{s:?}");
    assert_eq!(s.create, 1);
}

#[test]
fn a_canary_pauses_until_resumed() {
    let strategy = "{maxSurge: 1, maxUnavailable: 0, canary: 1}";
    let mut w = World::new(&deployment(3, strategy, "a"));
    w.run(50, false);
    w.apply(&deployment(3, strategy, "b"));
    for _ in 0..30 {
        w.tick();
    }
    assert!(w.rec.paused);
    assert_eq!((w.of_revision(2), w.of_revision(1)), (1, 2));
    assert!(w.rec.events.last().unwrap().message.contains("hsu rollout resume web"));
    w.rec.paused = false;
    w.rec.canary_passed = true;
    w.run(100, true);
    assert_eq!(w.of_revision(2), 3);
}

#[test]
fn a_paused_deployment_takes_no_step_and_its_deadline_does_not_run() {
    let strategy = "{progressDeadline: 1s}";
    let mut w = World::new(&deployment(2, strategy, "a"));
    w.run(50, false);
    w.apply(&deployment(2, strategy, "b"));
    w.rec.paused = true;
    for t in 0..30 {
        let s = w.tick();
        assert_eq!((s.create, s.stop.len()), (0, 0));
        assert!(t == 0 || s.record.is_none(), "tick {t}: a paused deployment writes nothing: {:?}", s.record);
    }
    assert_eq!(w.rec.phase, Phase::Progressing);
}

#[test]
fn apply_reuses_revisions_and_prunes_history() {
    let mut w = World::new(&deployment(1, "{}", "a"));
    w.apply(&deployment(1, "{}", "a"));
    assert_eq!((w.rec.generation, w.rec.revision), (1, 1), "same spec: nothing changes");
    for (i, cmd) in ["b", "c", "d", "e"].iter().enumerate() {
        w.rec.stable_revision = w.rec.revision;
        w.apply(&deployment(1, "{}", cmd));
        assert_eq!(w.rec.revision, i as u64 + 2);
    }
    // Current (5), stable (4) and the 2 newest others (3, 2) are kept.
    let mut kept: Vec<u64> = w.revisions.iter().map(|r| r.number).collect();
    kept.sort();
    assert_eq!(kept, [2, 3, 4, 5]);
    w.apply(&deployment(1, "{}", "c"));
    assert_eq!(w.rec.revision, 3, "a template seen before gets its old number back");
}

#[test]
fn undo_goes_to_the_previous_or_a_named_revision() {
    let mut w = World::new(&deployment(1, "{}", "a"));
    w.apply(&deployment(1, "{}", "b"));
    w.apply(&deployment(1, "{}", "c"));
    let back = undo(&w.rec, &w.revisions, None, 5).unwrap();
    assert_eq!(back.revision, 2);
    assert_eq!(back.spec.0.template.command.as_ref().unwrap().program(), "b");
    let first = undo(&w.rec, &w.revisions, Some(1), 5).unwrap();
    assert_eq!(first.revision, 1);
    assert!(undo(&w.rec, &w.revisions, Some(9), 5).unwrap_err().to_string().contains("no revision 9 (kept: 1, 2, 3)"));
    assert!(undo(&w.rec, &w.revisions, Some(3), 5).unwrap_err().to_string().contains("already runs revision 3"));
}

/// Found by the end-to-end sampler: instances that are ready but not yet ready for `minReady`
/// still serve, so an update applied right after they came up must not stop them for free.
#[test]
fn ready_old_instances_are_kept_even_before_min_ready() {
    let strategy = "{maxSurge: 1, maxUnavailable: 0, minReady: 1s}";
    let mut w = World::new(&deployment(3, strategy, "a"));
    while w.ready() < 3 {
        w.tick();
    }
    w.apply(&deployment(3, strategy, "b"));
    w.run(300, true);
    assert_eq!(w.of_revision(2), 3);
}

#[test]
fn dead_instances_of_the_current_revision_are_replaced() {
    let mut w = World::new(&deployment(3, "{}", "a"));
    w.run(50, false);
    let dead = w.instances.keys().next().unwrap().clone();
    w.broken = vec![];
    // The agent gave up on it (flap limit): it stays down for good unless replaced.
    let (v, _) = w.instances.get_mut(&dead).unwrap();
    v.observed = Observed::Reported(InstanceReport {
        id: dead.clone(),
        state: "failed".into(),
        ready: false,
        ready_for_ms: 0,
        restarts: 10,
        exit_code: Some(1),
        finished: false,
        message: Some("flapping".into()),
        ports: Default::default(),
    });
    let s = step(&w.rec, &w.views(), None, w.now_ms);
    assert_eq!(s.delete, std::slice::from_ref(&dead));
    assert_eq!(s.create, 1, "replaced at once");
    assert!(s.record.unwrap().events.last().unwrap().message.contains("is down (it is failed)"));
}

#[test]
fn lowering_the_canary_keeps_the_availability_bound() {
    let strategy = |c| format!("{{maxSurge: 1, maxUnavailable: 0, canary: {c}}}");
    let mut w = World::new(&deployment(3, &strategy(2), "a"));
    w.run(50, false);
    w.apply(&deployment(3, &strategy(2), "b"));
    for _ in 0..40 {
        w.tick();
    }
    assert_eq!((w.of_revision(2), w.of_revision(1)), (2, 1), "canary of 2 reached and paused");
    assert!(w.rec.paused);
    w.apply(&deployment(3, &strategy(1), "b"));
    // Unpaused but not past the canary: one instance of revision 2 is now one too many.
    w.rec.paused = false;
    for t in 0..40 {
        w.tick();
        assert!(w.ready() >= 3, "tick {t}: only {} ready", w.ready());
    }
}

#[test]
fn a_complete_deployment_that_loses_progress_does_not_roll_back_to_itself() {
    let strategy = "{maxSurge: 1, maxUnavailable: 0, progressDeadline: 1s, autoRollback: true}";
    let mut w = World::new(&deployment(2, strategy, "a"));
    w.run(50, false);
    // Its only revision cannot get ready any more (say a dependency is gone).
    w.broken = vec![1];
    let lost = w.instances.keys().next().unwrap().clone();
    w.instances.get_mut(&lost).unwrap().0.observed = Observed::NodeDown;
    for _ in 0..40 {
        w.tick();
    }
    assert_eq!((w.rec.phase, w.rec.revision, w.rec.rolled_back_from), (Phase::Failed, 1, None));
}
