//! Tests of the single-object edits: each compares the record as read, writes only its own key
//! (and a deployment's revisions on delete), and refuses bad input with what was expected.

use hsu_model::decode_record;
use hsu_model::deploy::{parse_documents, Source};
use hsu_model::keys;
use hsu_store::CompareTarget;

use super::*;
use crate::apply::{self, Existing};

const WEB: &str = "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  template: {command: [first]}\n";
const JOB: &str = "apiVersion: hsu/v1\nkind: Job\nmetadata: {name: batch}\nspec:\n  template: {command: [x]}\n";

/// The records that applying `yaml` to an empty store writes, as read back at mod revision 7.
fn applied(yaml: &str) -> (Vec<Versioned<DeploymentRecord>>, Vec<RevisionRecord>, Vec<Versioned<JobRecord>>) {
    let docs = parse_documents(&[Source { file: "t.yaml", text: yaml }]).unwrap();
    let (txn, _) = apply::plan(&docs, &Existing::default(), 1_000, &mut || "uid".to_string()).unwrap();
    let (mut deployments, mut revisions, mut jobs) = (vec![], vec![], vec![]);
    for op in txn.success {
        let Op::Put { key, value, .. } = op else { panic!("applying to an empty store only puts: {op:?}") };
        if key.starts_with(keys::DEPLOYMENTS.prefix().as_bytes()) {
            deployments.push(Versioned { key, mod_revision: 7, value: decode_record(&value).unwrap() });
        } else if key.starts_with(keys::REVISIONS.prefix().as_bytes()) {
            revisions.push(decode_record(&value).unwrap());
        } else {
            jobs.push(Versioned { key, mod_revision: 7, value: decode_record(&value).unwrap() });
        }
    }
    (deployments, revisions, jobs)
}

fn compared_on(txn: &Txn, key: &[u8]) -> u64 {
    assert_eq!(txn.compare.len(), 1, "one compare: {:?}", txn.compare);
    assert_eq!(txn.compare[0].key, key);
    match txn.compare[0].target {
        CompareTarget::ModRevision(r) => r,
        ref other => panic!("compared on {other:?}, not the mod revision"),
    }
}

/// The record a one-put transaction writes at `key`.
fn written<T: serde::de::DeserializeOwned>(txn: &Txn, key: &[u8]) -> T {
    match &txn.success[..] {
        [Op::Put { key: k, value, .. }] if k == key => decode_record(value).unwrap(),
        other => panic!("expected one put of {}, got {other:?}", String::from_utf8_lossy(key)),
    }
}

#[test]
fn rollout_actions_are_parsed_with_what_was_expected() {
    assert_eq!(RolloutAction::parse("undo", Some(3)).unwrap(), RolloutAction::Undo { to_revision: Some(3) });
    assert_eq!("pause".parse::<RolloutAction>().unwrap(), RolloutAction::Pause);
    assert_eq!("resume".parse::<RolloutAction>().unwrap(), RolloutAction::Resume);
    let e = RolloutAction::parse("rewind", None).unwrap_err().to_string();
    assert_eq!(e, "unknown rollout action \"rewind\"; expected undo, pause or resume");
    let e = RolloutAction::parse("pause", Some(2)).unwrap_err().to_string();
    assert_eq!(e, "pause takes no revision (got 2); only undo goes to a revision");
}

#[test]
fn pause_and_resume_rewrite_only_the_deployment_as_read() {
    let (d, revisions, _) = applied(WEB);
    let (txn, paused) = rollout(&d[0], &revisions, RolloutAction::Pause, 2_000).unwrap();
    assert_eq!(compared_on(&txn, &d[0].key), 7);
    let stored: DeploymentRecord = written(&txn, &d[0].key);
    assert_eq!(stored, paused);
    assert!(paused.paused);
    assert_eq!(paused.events.last().map(|e| (e.at_ms, e.message.as_str())), Some((2_000, "paused")));

    let read = Versioned { key: d[0].key.clone(), mod_revision: 9, value: paused };
    let (txn, resumed) = rollout(&read, &revisions, RolloutAction::Resume, 3_000).unwrap();
    assert_eq!(compared_on(&txn, &read.key), 9);
    assert!(!resumed.paused && resumed.canary_passed);
    assert_eq!(resumed.progress_ms, 3_000);
    assert_eq!(resumed.revision, read.value.revision, "resume changes no revision");
}

#[test]
fn undo_goes_to_a_kept_revision_and_names_the_kept_ones_otherwise() {
    let (d1, mut revisions, _) = applied(WEB);
    // A second revision applied over the first.
    let docs = parse_documents(&[Source { file: "t.yaml", text: &WEB.replace("[first]", "[second]") }]).unwrap();
    let existing = Existing {
        deployments: [(String::from_utf8(d1[0].key.clone()).unwrap(), d1[0].clone())].into(),
        revisions: [("default/web".to_string(), revisions.clone())].into(),
        jobs: Default::default(),
        services: Default::default(),
    };
    let (txn, _) = apply::plan(&docs, &existing, 1_500, &mut || "uid".to_string()).unwrap();
    let mut current = d1[0].clone();
    for op in &txn.success {
        if let Op::Put { key, value, .. } = op {
            if key == &current.key {
                current.value = decode_record(value).unwrap();
            } else {
                revisions.push(decode_record(value).unwrap());
            }
        }
    }
    assert_eq!(current.value.revision, 2);

    let (txn, back) = rollout(&current, &revisions, RolloutAction::Undo { to_revision: None }, 4_000).unwrap();
    assert_eq!(back.revision, 1);
    let first = revisions.iter().find(|r| r.number == 1).unwrap();
    assert_eq!(back.spec.0.template, first.template.0, "the template of revision 1");
    assert_ne!(back.spec.0.template, current.value.spec.0.template);
    assert_eq!(written::<DeploymentRecord>(&txn, &current.key), back);

    let e = rollout(&current, &revisions, RolloutAction::Undo { to_revision: Some(5) }, 4_000).unwrap_err();
    assert_eq!(e.to_string(), "deployment web has no revision 5 (kept: 1, 2)");
    let e = rollout(&current, &revisions, RolloutAction::Undo { to_revision: Some(2) }, 4_000).unwrap_err();
    assert_eq!(e.to_string(), "deployment web already runs revision 2");
}

#[test]
fn deleting_a_deployment_deletes_its_revisions_and_nothing_else() {
    let (d, _, _) = applied(WEB);
    let txn = delete_deployment(&d[0]);
    assert_eq!(compared_on(&txn, &d[0].key), 7);
    assert_eq!(
        txn.success,
        vec![
            Op::Delete { range: KeyRange::Key(d[0].key.clone()) },
            Op::Delete { range: KeyRange::Prefix(b"/revisions/default/web/".to_vec()) },
        ]
    );
}

#[test]
fn a_dispatch_starts_the_next_run_and_refuses_a_parameter_that_is_no_variable_name() {
    let (_, _, jobs) = applied(JOB);
    let before = jobs[0].value.runs.len();
    let env: BTreeMap<String, String> = [("SHARD".to_string(), "3".to_string())].into();
    let (txn, run) = dispatch_job(&jobs[0], env.clone(), 5_000).unwrap();
    assert_eq!(compared_on(&txn, &jobs[0].key), 7);
    let stored: JobRecord = written(&txn, &jobs[0].key);
    assert_eq!(stored.runs.len(), before + 1);
    let last = stored.runs.last().unwrap();
    assert_eq!((last.id, &last.env, last.started_ms), (run, &env, 5_000));

    let bad: BTreeMap<String, String> = [("1-BAD".to_string(), "x".to_string())].into();
    match dispatch_job(&jobs[0], bad, 5_000).unwrap_err() {
        Error::Parameter { name, .. } => assert_eq!(name, "1-BAD"),
        other => panic!("expected a parameter error, got {other}"),
    }

    let txn = delete_job(&jobs[0]);
    assert_eq!(compared_on(&txn, &jobs[0].key), 7);
    assert_eq!(txn.success, vec![Op::Delete { range: KeyRange::Key(jobs[0].key.clone()) }]);
}
