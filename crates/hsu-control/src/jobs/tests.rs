//! Tests of the job controller's decisions: runs, parallelism, retries, finished and dropped runs.

use super::*;
use hsu_model::deploy::{parse_documents, Object, Source};
use hsu_model::state::InstanceReport;

fn job(extra: &str) -> Job {
    let text = format!(
        "apiVersion: hsu/v1\nkind: Job\nmetadata: {{name: batch}}\nspec:\n  template: {{command: [x]}}\n{extra}"
    );
    match parse_documents(&[Source { file: "j.yaml", text: &text }]).unwrap().remove(0).object {
        Object::Job(j) => j,
        Object::Deployment(_) => unreachable!(),
    }
}

fn view(id: &str, run: u64, observed: Observed) -> InstanceView {
    InstanceView { id: id.into(), revision: run, node: 1, desired: Desired::Run, created_ms: 0, observed }
}

fn exited(id: &str, code: i32) -> Observed {
    Observed::Reported(InstanceReport {
        id: id.into(),
        state: "exited".into(),
        ready: false,
        ready_for_ms: 0,
        restarts: 0,
        exit_code: Some(code),
        finished: true,
        message: None,
        ports: Default::default(),
    })
}

fn running(id: &str) -> Observed {
    Observed::Reported(InstanceReport {
        id: id.into(),
        state: "running".into(),
        ready: true,
        ready_for_ms: 0,
        restarts: 0,
        exit_code: None,
        finished: false,
        message: None,
        ports: Default::default(),
    })
}

#[test]
fn applying_starts_a_run_unless_dispatch_only_and_only_when_changed() {
    let rec = apply(None, &job(""), "u1", 1).unwrap();
    assert_eq!(rec.runs.len(), 1);
    assert_eq!(rec.runs[0].phase, JobPhase::Running);
    assert_eq!(apply(Some(&rec), &job(""), "u1", 2), None, "the same spec again changes nothing");
    let changed = apply(Some(&rec), &job("  retries: 5\n"), "u1", 3).unwrap();
    assert_eq!((changed.generation, changed.runs.len(), changed.runs[1].id), (2, 2, 2));
    let param = apply(None, &job("  dispatchOnly: true\n"), "u1", 1).unwrap();
    assert!(param.runs.is_empty());
}

#[test]
fn a_run_starts_instances_up_to_parallelism_until_completions_succeed() {
    let rec = apply(None, &job("  completions: 3\n  parallelism: 2\n"), "u1", 1).unwrap();
    let s = step(&rec, &[], 2);
    assert_eq!(s.create, [(1, 2)]);
    // One finished well, one still runs: one more starts.
    let s = step(&rec, &[view("a", 1, exited("a", 0)), view("b", 1, running("b"))], 3);
    assert_eq!((s.create.as_slice(), s.delete.as_slice()), (&[(1, 1)][..], &["a".to_string()][..]));
    let rec = s.record.unwrap();
    assert_eq!(rec.runs[0].succeeded, 1);
    let s = step(&rec, &[view("b", 1, exited("b", 0)), view("c", 1, exited("c", 0))], 4);
    let rec = s.record.unwrap();
    assert_eq!((rec.runs[0].phase, rec.runs[0].succeeded), (JobPhase::Succeeded, 3));
    assert!(s.create.is_empty());
    assert!(rec.events.last().unwrap().message.contains("run 1 succeeded: 3 succeeded, 0 failed"));
}

#[test]
fn failures_are_retried_until_the_retries_run_out() {
    let rec = apply(None, &job("  retries: 1\n"), "u1", 1).unwrap();
    let s = step(&rec, &[view("a", 1, exited("a", 3))], 2);
    assert_eq!(s.create, [(1, 1)], "one retry");
    let rec = s.record.unwrap();
    assert!(rec.events.iter().any(|e| e.message.contains("instance a failed (exit code 3)")), "{:?}", rec.events);
    let s = step(&rec, &[view("b", 1, Observed::NodeDown)], 3);
    let rec = s.record.unwrap();
    assert_eq!((rec.runs[0].phase, rec.runs[0].failed), (JobPhase::Failed, 2));
    assert!(s.create.is_empty());
    assert_eq!(s.delete, ["b"]);
}

#[test]
fn a_finished_run_stops_what_still_runs_and_dispatch_parameters_reach_the_unit() {
    let mut rec = apply(None, &job("  completions: 1\n  parallelism: 1\n"), "u1", 1).unwrap();
    let s = step(&rec, &[view("a", 1, exited("a", 0)), view("late", 1, running("late"))], 2);
    assert_eq!(s.stop, ["late"]);
    let run = rec.start_run([("DATE".to_string(), "2026-11-26".to_string())].into(), 3);
    let unit = unit_for(&rec, run).unwrap();
    assert_eq!(unit.restart.policy, RestartPolicy::Never);
    assert_eq!(unit.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), [("DATE", "2026-11-26")]);
    rec.runs.last_mut().unwrap().env.insert("HSU_X".into(), "1".into());
    assert!(unit_for(&rec, run).unwrap_err().to_string().contains("HSU_"));
}

#[test]
fn instances_of_dropped_runs_are_stopped_then_deleted() {
    let rec = apply(None, &job(""), "u1", 1).unwrap();
    let s = step(&rec, &[view("old", 0, running("old")), view("gone", 0, exited("gone", 0))], 2);
    assert_eq!(s.stop, ["old"]);
    assert_eq!(s.delete, ["gone"]);
}
