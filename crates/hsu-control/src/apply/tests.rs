//! Tests of applying documents: created, unchanged and configured objects, the revisions a
//! change writes and prunes, and the compares that make a concurrent writer fail the whole.

use hsu_model::decode_record;
use hsu_model::deploy::{parse_documents, Source};
use hsu_model::keys;
use hsu_store::CompareTarget;

use super::*;

fn docs(yaml: &str) -> Vec<Document> {
    parse_documents(&[Source { file: "t.yaml", text: yaml }]).unwrap()
}

fn web(command: &str) -> String {
    format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  template: {{command: [{command}]}}\n  revisionHistoryLimit: 1\n"
    )
}

const JOB: &str = "apiVersion: hsu/v1\nkind: Job\nmetadata: {name: batch}\nspec:\n  template: {command: [x]}\n";

/// Applies `yaml` over `existing`; returns the transaction and the objects as `kind name result revision`.
fn check(yaml: &str, existing: &Existing) -> (Txn, Vec<String>) {
    let mut n = 0;
    let (txn, applied) = plan(&docs(yaml), existing, 1_000, &mut || {
        n += 1;
        format!("uid-{n}")
    })
    .unwrap();
    let lines = applied.iter().map(|a| format!("{} {} {} {}", a.kind, a.name, a.result, a.revision)).collect();
    (txn, lines)
}

fn keys(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, .. } => format!("put {}", String::from_utf8_lossy(key)),
            Op::Delete { range: KeyRange::Key(k) } => format!("delete {}", String::from_utf8_lossy(k)),
            other => format!("{other:?}"),
        })
        .collect()
}

/// What `txn` would leave in a store that held `existing`, read back as the next `Existing`.
fn after(txn: &Txn, mut existing: Existing, mod_revision: u64) -> Existing {
    for op in &txn.success {
        match op {
            Op::Put { key, value, .. } => {
                let key = String::from_utf8_lossy(key).into_owned();
                if key.starts_with(keys::DEPLOYMENTS.prefix()) {
                    let value = decode_record(value).unwrap();
                    existing.deployments.insert(key.clone(), Versioned { key: key.into_bytes(), mod_revision, value });
                } else if key.starts_with(keys::REVISIONS.prefix()) {
                    existing.revisions.entry("default/web".into()).or_default().push(decode_record(value).unwrap());
                } else {
                    let value = decode_record(value).unwrap();
                    existing.jobs.insert(key.clone(), Versioned { key: key.into_bytes(), mod_revision, value });
                }
            }
            Op::Delete { range: KeyRange::Key(k) } => {
                let k = String::from_utf8_lossy(k);
                existing
                    .revisions
                    .get_mut("default/web")
                    .unwrap()
                    .retain(|r| keys::REVISIONS.key_of("default", "web", r.number).as_str() != k);
            }
            other => panic!("apply writes {other:?}"),
        }
    }
    existing
}

#[test]
fn new_objects_are_created_then_unchanged_then_configured() {
    let yaml = format!("{}---\n{JOB}", web("a"));
    let (txn, applied) = check(&yaml, &Existing::default());
    assert_eq!(applied, ["Deployment web created 1", "Job batch created 1"]);
    // Created over nothing: each key compared as absent.
    let compares: Vec<(String, CompareTarget)> =
        txn.compare.iter().map(|c| (String::from_utf8_lossy(&c.key).into_owned(), c.target.clone())).collect();
    assert_eq!(
        compares,
        [
            (keys::DEPLOYMENTS.key_of("default", "web").to_string(), CompareTarget::ModRevision(0)),
            (keys::JOBS.key_of("default", "batch").to_string(), CompareTarget::ModRevision(0)),
        ]
    );
    assert_eq!(
        keys(&txn.success),
        [
            format!("put {}", keys::DEPLOYMENTS.key_of("default", "web")),
            format!("put {}", keys::REVISIONS.key_of("default", "web", 1)),
            format!("put {}", keys::JOBS.key_of("default", "batch")),
        ]
    );

    // The same documents again: nothing to write, every record compared at its revision.
    let existing = after(&txn, Existing::default(), 5);
    let (again, applied) = check(&yaml, &existing);
    assert_eq!(applied, ["Deployment web unchanged 1", "Job batch unchanged 1"]);
    assert!(again.success.is_empty(), "{:?}", keys(&again.success));
    assert!(again.compare.iter().all(|c| c.target == CompareTarget::ModRevision(5)));

    // A new template: a new revision; with revisionHistoryLimit 1 the old one is kept, a third
    // prunes the first.
    let (changed, applied) = check(&web("b"), &existing);
    assert_eq!(applied, ["Deployment web configured 2"]);
    assert_eq!(
        keys(&changed.success),
        [
            format!("put {}", keys::DEPLOYMENTS.key_of("default", "web")),
            format!("put {}", keys::REVISIONS.key_of("default", "web", 2)),
        ]
    );
    let existing = after(&changed, existing, 6);
    let (third, applied) = check(&web("c"), &existing);
    assert_eq!(applied, ["Deployment web configured 3"]);
    assert_eq!(
        keys(&third.success),
        [
            format!("put {}", keys::DEPLOYMENTS.key_of("default", "web")),
            format!("put {}", keys::REVISIONS.key_of("default", "web", 3)),
            format!("delete {}", keys::REVISIONS.key_of("default", "web", 1)),
        ]
    );
}

fn serving(name: &str) -> String {
    format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  template: {{command: [x], ports: [{{name: http}}]}}\n  service: {{name: web, port: http}}\n"
    )
}

fn refusal(yaml: &str, existing: &Existing) -> String {
    match plan(&docs(yaml), existing, 1_000, &mut || "uid".to_string()) {
        Ok(_) => panic!("applied: {yaml}"),
        Err(e) => {
            assert!(e.is_refusal(), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_service_has_one_deployment() {
    let provided = Existing {
        services: BTreeMap::from([(("default".to_string(), "web".to_string()), "web-a".to_string())]),
        ..Existing::default()
    };
    let err = refusal(&serving("web-b"), &provided);
    assert!(
        err.contains(
            "t.yaml: line 1: Deployment default/web-b: service \"web\" is already provided by deployment default/web-a"
        ),
        "{err}"
    );
    let err = refusal(&format!("{}---\n{}", serving("web-a"), serving("web-b")), &Existing::default());
    assert!(err.contains("line 8: Deployment default/web-b"), "{err}");

    // The provider itself may apply again, and an apply that moves the service from web-a
    // (which no longer names it) to web-b is one change.
    check(&serving("web-a"), &provided);
    let moved = format!("{}---\n{}", web("x").replace("name: web}", "name: web-a}"), serving("web-b"));
    check(&moved, &provided);
    // Another namespace has its own services.
    check(&serving("web-b").replace("name: web-b}", "name: web-b, namespace: other}"), &provided);
}
