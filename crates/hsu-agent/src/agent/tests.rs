//! Tests of the agent's reconcile: only what changed is touched; records of a previous agent are adopted or stopped.

use super::*;
use hsu_model::unit::parse_units;

fn specs(yaml: &str) -> Vec<UnitSpec> {
    parse_units(yaml).unwrap().units
}

fn by_name(v: &[UnitSpec]) -> BTreeMap<String, UnitSpec> {
    v.iter().map(|u| (u.name.as_str().to_string(), u.clone())).collect()
}

const V1: &str = "units:\n  - {name: a, command: [sleep, '100']}\n  - {name: b, command: [sleep, '100']}\n";
const V2: &str = "units:\n  - {name: a, command: [sleep, '100']}\n  - {name: b, command: [sleep, '200']}\n  - {name: c, command: [sleep, '1']}\n";

#[test]
fn only_what_changed_is_touched() {
    let now = by_name(&specs(V1));
    let got = plan(&specs(V2), &now, &BTreeMap::new());
    assert_eq!(got, [Action::Replace("b".into()), Action::Start("c".into())]);
    assert_eq!(plan(&specs(V1), &now, &BTreeMap::new()), [], "the same spec again changes nothing");
    let got = plan(&specs("units: []\n"), &now, &BTreeMap::new());
    assert_eq!(got, [Action::Stop("a".into()), Action::Stop("b".into())]);
}

#[test]
fn records_of_a_previous_agent_are_adopted_or_stopped() {
    let v1 = specs(V1);
    let rec = |spec: &UnitSpec, alive| Recorded { spec: spec.clone(), alive, leftovers: false };
    let recorded: BTreeMap<String, Recorded> =
        [("a".to_string(), rec(&v1[0], true)), ("b".to_string(), rec(&v1[1], true))].into();
    // Same specs and alive: adopted, nothing started twice.
    assert_eq!(plan(&v1, &BTreeMap::new(), &recorded), [Action::Adopt("a".into()), Action::Adopt("b".into())]);
    // b changed meanwhile: its old process is stopped and the new spec started; c is new.
    assert_eq!(
        plan(&specs(V2), &BTreeMap::new(), &recorded),
        [
            Action::StopRecorded("b".into()),
            Action::Adopt("a".into()),
            Action::Start("b".into()),
            Action::Start("c".into())
        ]
    );
    // After a reboot nothing recorded is alive: everything desired starts again.
    let dead: BTreeMap<String, Recorded> = [("a".to_string(), rec(&v1[0], false))].into();
    assert_eq!(plan(&v1, &BTreeMap::new(), &dead), [Action::Start("a".into()), Action::Start("b".into())]);
    // The main process died while no agent watched but its workers run on: they go first.
    let leftovers: BTreeMap<String, Recorded> =
        [("a".to_string(), Recorded { spec: v1[0].clone(), alive: false, leftovers: true })].into();
    assert_eq!(
        plan(&v1, &BTreeMap::new(), &leftovers),
        [Action::StopRecorded("a".into()), Action::Start("a".into()), Action::Start("b".into())]
    );
    // A record of a unit nobody wants any more, and nothing runs: forgotten.
    assert_eq!(plan(&v1[1..], &BTreeMap::new(), &dead), [Action::Forget("a".into()), Action::Start("b".into())]);
}
