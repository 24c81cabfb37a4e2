//! Tests of deployment and job specs: parsing, validation and errors.

use super::*;
use std::time::Duration;

const WEB: &str = r#"apiVersion: hsu/v1
kind: Deployment
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 3
  template:                  # a unit, as in the agent issue
    kind: managed
    command: ["python3", "-m", "http.server", "--bind", "127.0.0.1", "${HSU_PORT_HTTP}"]
    ports: [{name: http}]    # allocated per instance, passed as HSU_PORT_HTTP
    readiness: {http: {port: http, path: /}, period: 500ms}
  resources: {cpu: 250m, memory: 64MiB}
  placement:
    nodeSelector: {zone: a}
    constraints: [{key: disk, operator: In, values: [ssd]}]
    maxPerNode: 1
  strategy: {maxSurge: 1, maxUnavailable: 0, minReady: 1s, progressDeadline: 60s, autoRollback: true}
---
apiVersion: hsu/v1
kind: Job
metadata: {name: migrate}
spec:
  template: {command: [sh, -c, "exit 0"]}
  retries: 2
"#;

fn parse(text: &str) -> Result<Vec<Document>, SpecError> {
    parse_documents(&[Source { file: "app.yaml", text }])
}

#[test]
fn a_deployment_and_a_job_parse_from_one_file() {
    let docs = parse(WEB).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].line, docs[1].line), (1, 18));
    let Object::Deployment(d) = &docs[0].object else { panic!("not a deployment") };
    assert_eq!(d.metadata.name.as_str(), "web");
    assert_eq!(d.spec.replicas, 3);
    assert_eq!(d.spec.template.ports[0].env_name(), "HSU_PORT_HTTP");
    assert_eq!(d.spec.resources.cpu_millis(), 250);
    assert_eq!(d.spec.resources.memory_bytes(), 64 << 20);
    assert_eq!(d.spec.placement.max_per_node, Some(1));
    let s = &d.spec.strategy;
    assert_eq!((s.max_surge, s.max_unavailable), (IntOrPercent::Int(1), IntOrPercent::Int(0)));
    assert_eq!((s.min_ready.0, s.progress_deadline.0), (Duration::from_secs(1), Duration::from_secs(60)));
    assert!(s.auto_rollback);
    assert_eq!(d.spec.revision_history_limit, 10);
    let Object::Job(j) = &docs[1].object else { panic!("not a job") };
    assert_eq!(j.metadata.namespace.as_str(), "default");
    assert_eq!((j.spec.retries, j.spec.completions, j.spec.parallelism), (2, 1, 1));
}

#[test]
fn a_deployment_names_the_services_it_provides() {
    let text = "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template: {command: [x], ports: [{name: http}, {name: admin}]}\n  service: {name: web, port: http}\n  services: [{name: web-admin, port: admin}]\n";
    let docs = parse(text).unwrap();
    let Object::Deployment(d) = &docs[0].object else { panic!("not a deployment") };
    let named: Vec<(&str, &str)> = d.spec.all_services().map(|s| (s.name.as_str(), s.port.as_str())).collect();
    assert_eq!(named, [("web", "http"), ("web-admin", "admin")]);
}

#[test]
fn strategy_counts_round_like_kubernetes() {
    let s = Strategy::default();
    assert_eq!(s.counts(4), (1, 1));
    assert_eq!(s.counts(10), (3, 2));
    assert_eq!(s.counts(1), (1, 0));
    let s = Strategy { max_surge: IntOrPercent::Percent(10), max_unavailable: IntOrPercent::Percent(10), ..s };
    assert_eq!(s.counts(3), (1, 0));
    let s = Strategy { max_surge: IntOrPercent::Int(0), max_unavailable: IntOrPercent::Percent(10), ..s };
    assert_eq!(s.counts(3), (0, 1), "both zero after rounding: one may be unavailable");
}

#[test]
fn constraints_match_labels() {
    let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
    let c = |op, values: &[&str]| Constraint {
        key: LabelKey::new("zone").unwrap(),
        operator: op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    assert!(c(Operator::In, &["a", "b"]).matches(&labels));
    assert!(!c(Operator::In, &["b"]).matches(&labels));
    assert!(c(Operator::NotIn, &["b"]).matches(&labels));
    assert!(!c(Operator::NotIn, &["a"]).matches(&labels));
    assert!(c(Operator::Exists, &[]).matches(&labels));
    assert!(!c(Operator::DoesNotExist, &[]).matches(&labels));
    assert!(c(Operator::NotIn, &["a"]).matches(&BTreeMap::new()));
}

/// Each bad document names the file, the line and the field, and nothing is returned.
#[test]
fn bad_documents_name_file_line_and_field() {
    let head = "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {name: web}\n";
    let cases: &[(&str, String, &[&str])] = &[
        ("unknown field", format!("{head}spec:\n  replicas: 2\n  replica: 3\n  template: {{command: [x]}}\n"), &["app.yaml", "line 6", "unknown field `replica`"]),
        ("template field", format!("{head}spec:\n  template: {{command: [x], comand: [y]}}\n"), &["line 5", "comand"]),
        ("template name", format!("{head}spec:\n  template:\n    name: x\n    command: [x]\n"), &["line 6", "spec.template.name is not allowed"]),
        ("no command", format!("{head}spec:\n  template: {{env: {{A: b}}}}\n"), &["line 5", "spec.template", "missing field `command`"]),
        ("bad surge", format!("{head}spec:\n  template: {{command: [x]}}\n  strategy: {{maxSurge: lots}}\n"), &["line 6", "percentage", "field `maxSurge`"]),
        ("surge over 100", format!("{head}spec:\n  template: {{command: [x]}}\n  strategy: {{maxSurge: 150%}}\n"), &["line 6", "above 100%"]),
        ("both zero", format!("{head}spec:\n  template: {{command: [x]}}\n  strategy: {{maxSurge: 0, maxUnavailable: 0%}}\n"), &["line 6", "cannot both be 0"]),
        ("deadline", format!("{head}spec:\n  template: {{command: [x]}}\n  strategy: {{minReady: 1m, progressDeadline: 30s}}\n"), &["line 6", "progressDeadline (30s) must be longer than minReady (1m)"]),
        ("kind", "apiVersion: hsu/v1\nkind: Pod\nmetadata: {name: x}\n".to_string(), &["line 2", "kind \"Pod\" is not known"]),
        ("api version", "apiVersion: apps/v1\nkind: Deployment\n".to_string(), &["line 1", "apiVersion \"apps/v1\""]),
        ("no api version", "kind: Deployment\n".to_string(), &["missing field `apiVersion`"]),
        ("long name", format!("apiVersion: hsu/v1\nkind: Job\nmetadata: {{name: {}}}\nspec: {{template: {{command: [x]}}}}\n", "a".repeat(57)), &["line 3", "at most 56"]),
        ("bad name", "apiVersion: hsu/v1\nkind: Job\nmetadata: {name: Web}\nspec: {template: {command: [x]}}\n".to_string(), &["line 3", "lowercase"]),
        ("unmanaged", format!("{head}spec:\n  template: {{kind: unmanaged, attach: {{port: 5432}}}}\n"), &["line 5", "cannot be scheduled"]),
        ("constraint", format!("{head}spec:\n  template: {{command: [x]}}\n  placement: {{constraints: [{{key: zone, operator: In}}]}}\n"), &["line 6", "needs at least one value"]),
        ("operator", format!("{head}spec:\n  template: {{command: [x]}}\n  placement: {{constraints: [{{key: zone, operator: Near}}]}}\n"), &["line 6", "Near"]),
        ("canary", format!("{head}spec:\n  replicas: 2\n  template: {{command: [x]}}\n  strategy: {{canary: 3}}\n"), &["line 7", "canary (3) is more than replicas (2)"]),
        ("second document", format!("{WEB}---\n{head}spec:\n  template: {{command: [x]}}\n  replicas: -1\n"), &["line 30", "invalid u32", "field `replicas`"]),
        ("duplicate", format!("{WEB}---\n{head}spec:\n  template: {{command: [x]}}\n"), &["line 25", "Deployment default/web is also defined in app.yaml at line 1"]),
        ("too many", format!("{head}spec:\n  replicas: 10001\n  template: {{command: [x]}}\n"), &["line 5", "spec.replicas (10001) is more than 10000"]),
        ("huge surge", format!("{head}spec:\n  template: {{command: [x]}}\n  strategy: {{maxSurge: 4294967295}}\n"), &["line 6", "maxSurge (4294967295) is more than 10000"]),
        ("hsu var", format!("{head}spec:\n  template: {{command: [x, \"${{HSU_PORT_WEB}}\"]}}\n"), &["line 5", "HSU_PORT_WEB"]),
        ("service port", format!("{head}spec:\n  template: {{command: [x], ports: [{{name: http}}]}}\n  service: {{name: web, port: htp}}\n"), &["line 6", "spec.service.port \"htp\" is not among spec.template.ports (http)"]),
        ("service no ports", format!("{head}spec:\n  template: {{command: [x]}}\n  services: [{{name: web, port: http}}]\n"), &["line 6", "spec.services[0].port \"http\"", "it has none"]),
        ("service twice", format!("{head}spec:\n  template: {{command: [x], ports: [{{name: a}}, {{name: b}}]}}\n  service: {{name: web, port: a}}\n  services: [{{name: web, port: b}}]\n"), &["line 7", "spec.services[0].name \"web\" is also the name of spec.service"]),
        ("service name", format!("{head}spec:\n  template: {{command: [x], ports: [{{name: a}}]}}\n  service: {{name: Web, port: a}}\n"), &["line 6", "lowercase"]),
        ("service field", format!("{head}spec:\n  template: {{command: [x], ports: [{{name: a}}]}}\n  service: {{name: web, port: a, protocol: udp}}\n"), &["line 6", "unknown field `protocol`"]),
    ];
    for (what, text, wants) in cases {
        let err = parse(text).expect_err(what).to_string();
        for want in *wants {
            assert!(err.contains(want), "{what}: {want:?} not in:\n{err}");
        }
    }
}

#[test]
fn empty_input_and_comments_only_are_refused() {
    assert!(parse("").unwrap_err().to_string().contains("no documents"));
    assert!(parse("# nothing\n---\n").unwrap_err().to_string().contains("no documents"));
}

#[test]
fn objects_survive_the_record_codec_as_json() {
    let docs = parse(WEB).unwrap();
    for d in docs {
        let json = serde_json::to_string(&d.object).unwrap();
        let back: Object = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d.object);
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Edits of a valid file: deletions, insertions of YAML's own characters, replacements.
    fn mangled() -> impl proptest::strategy::Strategy<Value = String> {
        let edit = (
            0usize..WEB.len(),
            0usize..6,
            prop::sample::select(vec![
                ":", "-", " ", "\n", "{", "}", "[", "]", "'", "\"", "#", "&a", "*a", "!!", "0", "-1", "1e400", "\t",
                "---\n",
            ]),
        );
        proptest::strategy::Strategy::prop_map(proptest::collection::vec(edit, 1..8), |edits| {
            let mut text = WEB.to_string();
            for (at, delete, insert) in edits {
                let at = at.min(text.len());
                let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                let end = (at + delete).min(text.len());
                let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                text.replace_range(at..end, insert);
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// A mangled file is parsed or refused with an error that names the file; never a panic.
        #[test]
        fn mangled_specs_fail_cleanly(text in mangled()) {
            if let Err(e) = parse(&text) {
                prop_assert!(e.0.contains("app.yaml"), "an error without the file name: {}", e.0);
            }
        }

        /// Arbitrary text, likewise.
        #[test]
        fn arbitrary_text_fails_cleanly(text in ".{0,200}") {
            if let Err(e) = parse(&text) {
                prop_assert!(!e.0.is_empty());
            }
        }
    }
}
