//! Tests of the pass plan: data-driven cases (a snapshot in, the writes out as text), and a
//! property test that runs the plan against a simulated store and nodes through random node and
//! report loss, checking the rollout bounds at every step and convergence once the faults stop.

use std::collections::BTreeMap;
use std::time::Duration;

use expect_test::{expect, Expect};
use hsu_model::decode_record;
use hsu_model::deploy::{parse_documents, Object, Source};
use hsu_model::keys;
use hsu_model::state::{Capacity, Phase};
use hsu_store::CompareTarget;
use proptest::prelude::*;

use hsu_model::service::{Endpoint, ServiceRecord};

use super::*;

/// Suffixes `000001`, `000002`, … so that the expected writes are stable.
struct Seq(u32);

impl IdSource for Seq {
    fn suffix(&mut self) -> String {
        self.0 += 1;
        format!("{:06}", self.0)
    }
}

fn parse(yaml: &str) -> Object {
    parse_documents(&[Source { file: "t.yaml", text: yaml }]).unwrap().remove(0).object
}

/// A deployment record (and its revisions) as `apply` makes it for `replicas` and `strategy`.
fn deployment(replicas: u32, strategy: &str, command: &str) -> (DeploymentRecord, Vec<RevisionRecord>) {
    let yaml = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template: {{command: [{command}]}}\n  strategy: {strategy}\n"
    );
    let Object::Deployment(d) = parse(&yaml) else { unreachable!() };
    let a = rollout::apply(None, &[], &d, "uid-1", 0);
    (a.record, a.new_revision.into_iter().collect())
}

fn job_record(extra: &str) -> JobRecord {
    let yaml = format!(
        "apiVersion: hsu/v1\nkind: Job\nmetadata: {{name: batch}}\nspec:\n  template: {{command: [x]}}\n{extra}"
    );
    let Object::Job(j) = parse(&yaml) else { unreachable!() };
    jobs::apply(None, &j, "uid-j", 0).expect("a new job makes a record")
}

fn node_report(node: NodeId, instances: Vec<InstanceReport>, seen_revision: u64) -> NodeReport {
    NodeReport {
        node,
        name: format!("n{node}"),
        labels: BTreeMap::new(),
        capacity: Capacity { cpu_millis: 4000, memory_bytes: 8 << 30 },
        instances,
        seen_revision,
    }
}

fn running(id: &str, ready_for_ms: u64) -> InstanceReport {
    InstanceReport {
        id: id.into(),
        state: "running".into(),
        ready: true,
        ready_for_ms,
        restarts: 0,
        exit_code: None,
        finished: false,
        message: None,
        ports: Default::default(),
    }
}

fn instance_of(rec: &DeploymentRecord, id: &str, node: NodeId, mod_revision: u64) -> Versioned<InstanceRecord> {
    let mut unit = rec.spec.0.template.clone();
    unit.name = UnitName::new(id).unwrap();
    let value = InstanceRecord {
        id: id.into(),
        namespace: rec.namespace.clone(),
        owner: rec.name.clone(),
        owner_kind: OwnerKind::Deployment,
        owner_uid: rec.uid.clone(),
        revision: rec.revision,
        node,
        unit: Json(unit),
        resources: Json(rec.spec.0.resources),
        desired: Desired::Run,
        created_ms: 0,
    };
    Versioned { key: keys::INSTANCES.key_of(node, id).into_bytes(), mod_revision, value }
}

fn versioned<T>(key: impl Into<String>, mod_revision: u64, value: T) -> Versioned<T> {
    Versioned { key: key.into().into_bytes(), mod_revision, value }
}

/// The writes as text: every compare, and every put or delete with what it writes.
fn render(writes: &[Write]) -> String {
    let mut out = String::new();
    for w in writes {
        out.push_str(&format!("write {}\n", w.what));
        for c in &w.txn.compare {
            let CompareTarget::ModRevision(m) = c.target else { panic!("the plan compares mod revisions only") };
            out.push_str(&format!("  unchanged {} @{m}\n", String::from_utf8_lossy(&c.key)));
        }
        for op in &w.txn.success {
            match op {
                Op::Put { key, value, .. } => {
                    let key = String::from_utf8_lossy(key);
                    let what = if key.starts_with(keys::INSTANCES.prefix()) {
                        let i: InstanceRecord = decode_record(value).unwrap();
                        format!("instance rev {} {:?}", i.revision, i.desired)
                    } else if key.starts_with(keys::DEPLOYMENTS.prefix()) {
                        let d: DeploymentRecord = decode_record(value).unwrap();
                        let event = d.events.last().map_or(String::new(), |e| format!(" last event {:?}", e.message));
                        format!("deployment steps {} {:?} unplaced {:?}{event}", d.steps, d.phase, d.unplaced)
                    } else if key.starts_with(keys::SERVICES.prefix()) {
                        let r: ServiceRecord = decode_record(value).unwrap();
                        let endpoints: Vec<String> = r
                            .endpoints
                            .iter()
                            .map(|e| {
                                format!(
                                    "{}@n{}:{}{}",
                                    e.instance,
                                    e.node,
                                    e.port,
                                    if e.ready { "" } else { " (not ready)" }
                                )
                            })
                            .collect();
                        format!("service of {} on {}: [{}]", r.deployment, r.port, endpoints.join(", "))
                    } else {
                        let j: JobRecord = decode_record(value).unwrap();
                        format!("job steps {} unplaced {:?}", j.steps, j.unplaced)
                    };
                    out.push_str(&format!("  put {key}: {what}\n"));
                }
                Op::Delete { range: KeyRange::Key(key) } => {
                    out.push_str(&format!("  delete {}\n", String::from_utf8_lossy(key)))
                }
                other => out.push_str(&format!("  {other:?}\n")),
            }
        }
    }
    if out.is_empty() {
        out.push_str("no writes\n");
    }
    out
}

/// Nodes silent for this long are down.
const GRACE: Duration = Duration::from_secs(3);

fn check(snap: &Snapshot, expected: Expect) {
    let writes = plan(snap, GRACE, 1_000, &mut Seq(0)).expect("a plan");
    expected.assert_eq(&render(&writes));
}

/// A snapshot that holds deployment `default/web` (record at `mod_revision`) and its revisions.
fn web(rec: DeploymentRecord, revisions: Vec<RevisionRecord>, mod_revision: u64) -> Snapshot {
    Snapshot {
        deployments: vec![versioned(keys::DEPLOYMENTS.key_of("default", "web"), mod_revision, rec)],
        revisions: BTreeMap::from([("default/web".to_string(), revisions)]),
        ..Snapshot::default()
    }
}

fn two_nodes(instances: [Vec<InstanceReport>; 2], seen_revision: u64) -> BTreeMap<NodeId, (Duration, NodeReport)> {
    let [a, b] = instances;
    BTreeMap::from([
        (1, (Duration::ZERO, node_report(1, a, seen_revision))),
        (2, (Duration::ZERO, node_report(2, b, seen_revision))),
    ])
}

#[test]
fn a_new_deployment_gets_its_replicas_spread_over_the_nodes() {
    let (rec, revisions) = deployment(3, "{maxSurge: 1, maxUnavailable: 0}", "a");
    let snap = Snapshot { reports: two_nodes([vec![], vec![]], 7), ..web(rec, revisions, 7) };
    check(
        &snap,
        expect![[r#"
            write default/web
              unchanged /deployments/default/web @7
              unchanged /instances/00000000000000000001/web-000001 @0
              unchanged /instances/00000000000000000002/web-000002 @0
              unchanged /instances/00000000000000000001/web-000003 @0
              put /instances/00000000000000000001/web-000001: instance rev 1 Run
              put /instances/00000000000000000002/web-000002: instance rev 1 Run
              put /instances/00000000000000000001/web-000003: instance rev 1 Run
              put /deployments/default/web: deployment steps 1 Progressing unplaced None last event "created with revision 1"
        "#]],
    );
}

#[test]
fn nothing_is_written_once_a_deployment_is_complete() {
    let (rec, revisions) = deployment(3, "{maxSurge: 1, maxUnavailable: 0}", "a");
    let mut sim = Sim::new(rec, revisions);
    let quiet = Faults { down: vec![false; NODES as usize], lost: vec![false; NODES as usize] };
    let mut last = Vec::new();
    for _ in 0..30 {
        last = sim.tick(&quiet).1;
    }
    assert_eq!(sim.record().phase, Phase::Complete);
    assert_eq!(render(&last), "no writes\n");
}

#[test]
fn an_instance_lost_with_its_node_is_deleted_and_replaced_elsewhere() {
    let (mut rec, revisions) = deployment(2, "{maxSurge: 1, maxUnavailable: 0}", "a");
    rec.phase = Phase::Complete;
    rec.stable_revision = rec.revision;
    let a = instance_of(&rec, "web-a", 1, 10);
    let b = instance_of(&rec, "web-b", 2, 11);
    let mut reports = two_nodes([vec![running("web-a", 60_000)], vec![running("web-b", 60_000)]], 11);
    reports.get_mut(&2).unwrap().0 = Duration::from_secs(4);
    let snap =
        Snapshot { instances: vec![a, b], reports, leading_for: Duration::from_secs(60), ..web(rec, revisions, 9) };
    check(
        &snap,
        expect![[r#"
            write default/web
              unchanged /deployments/default/web @9
              unchanged /instances/00000000000000000002/web-b @11
              unchanged /instances/00000000000000000001/web-000001 @0
              delete /instances/00000000000000000002/web-b
              put /instances/00000000000000000001/web-000001: instance rev 1 Run
              put /deployments/default/web: deployment steps 1 Progressing unplaced None last event "instance web-b lost with node 2; replacing it"
        "#]],
    );
}

#[test]
fn orphans_are_stopped_or_deleted_and_undecodable_owners_keep_theirs() {
    let (rec, _) = deployment(1, "{}", "a");
    // Its deployment is gone: running on an up node, so it is stopped first.
    let gone = instance_of(&rec, "web-a", 1, 10);
    // Its deployment was deleted and made anew under the same name: another uid.
    let (mut again, revisions) = deployment(0, "{}", "a");
    again.uid = "uid-2".into();
    let old = instance_of(&rec, "web-b", 2, 11);
    // Its node does not have it although it has seen it: deleted at once.
    let mut stopped = instance_of(&rec, "web-c", 1, 12);
    stopped.value.owner = "other".into();
    // Its deployment's record does not decode: left alone.
    let mut kept = instance_of(&rec, "web-d", 1, 13);
    kept.value.owner = "broken".into();
    let snap = Snapshot {
        instances: vec![gone, old, stopped, kept],
        undecodable_owners: [keys::DEPLOYMENTS.key_of("default", "broken").into_bytes()].into(),
        reports: two_nodes([vec![running("web-a", 1_000), running("web-d", 1_000)], vec![running("web-b", 1_000)]], 13),
        leading_for: Duration::from_secs(60),
        ..web(again, revisions, 9)
    };
    check(
        &snap,
        expect![[r#"
            write default/web
              unchanged /deployments/default/web @9
              put /deployments/default/web: deployment steps 0 Complete unplaced None last event "revision 1 rolled out: 0/0 available"
            write orphans
              unchanged /instances/00000000000000000001/web-a @10
              unchanged /instances/00000000000000000002/web-b @11
              unchanged /instances/00000000000000000001/web-c @12
              put /instances/00000000000000000001/web-a: instance rev 1 Stop
              put /instances/00000000000000000002/web-b: instance rev 1 Stop
              delete /instances/00000000000000000001/web-c
        "#]],
    );
}

#[test]
fn without_nodes_nothing_is_placed_and_the_record_says_why_once() {
    let (rec, revisions) = deployment(2, "{}", "a");
    let mut snap = web(rec, revisions, 7);
    let writes = plan(&snap, GRACE, 1_000, &mut Seq(0)).unwrap();
    check(
        &snap,
        expect![[r#"
            write default/web
              unchanged /deployments/default/web @7
              put /deployments/default/web: deployment steps 0 Progressing unplaced Some("no node has reported to the master yet") last event "cannot place instances: no node has reported to the master yet"
        "#]],
    );
    // The next pass, from the record it wrote: the same reason is not written again.
    let Op::Put { value, .. } = &writes[0].txn.success[0] else { panic!() };
    snap.deployments[0] = versioned(keys::DEPLOYMENTS.key_of("default", "web"), 8, decode_record(value).unwrap());
    check(&snap, expect!["no writes\n"]);
}

#[test]
fn a_job_starts_its_first_run() {
    let rec = job_record("  completions: 2\n  parallelism: 2\n");
    let snap = Snapshot {
        jobs: vec![versioned(keys::JOBS.key_of("default", "batch"), 5, rec)],
        reports: two_nodes([vec![], vec![]], 5),
        ..Snapshot::default()
    };
    check(
        &snap,
        expect![[r#"
            write default/batch
              unchanged /jobs/default/batch @5
              unchanged /instances/00000000000000000001/batch-000001 @0
              unchanged /instances/00000000000000000002/batch-000002 @0
              put /instances/00000000000000000001/batch-000001: instance rev 1 Run
              put /instances/00000000000000000002/batch-000002: instance rev 1 Run
              put /jobs/default/batch: job steps 1 unplaced None
        "#]],
    );
}

#[test]
fn taken_ids_are_drawn_again() {
    /// Gives `000001` twice, then counts on.
    struct Repeats(u32);
    impl IdSource for Repeats {
        fn suffix(&mut self) -> String {
            self.0 += 1;
            format!("{:06}", self.0.max(2) - 1)
        }
    }
    let (rec, revisions) = deployment(2, "{}", "a");
    let snap = Snapshot { reports: two_nodes([vec![], vec![]], 7), ..web(rec, revisions, 7) };
    let writes = plan(&snap, GRACE, 1_000, &mut Repeats(0)).unwrap();
    let keys: Vec<String> = writes[0]
        .txn
        .success
        .iter()
        .filter_map(|op| match op {
            Op::Put { key, .. } if key.starts_with(keys::INSTANCES.prefix().as_bytes()) => {
                Some(String::from_utf8_lossy(key).into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        [keys::INSTANCES.key_of(1, "web-000001").to_string(), keys::INSTANCES.key_of(2, "web-000002").to_string()]
    );
}

// ----- the plan against a simulated cluster -----

/// The store as the plan's transactions see it: key → (mod revision, value).
#[derive(Default)]
struct Kv {
    revision: u64,
    keys: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
}

impl Kv {
    /// Applies `txn` as the store does: all compares hold, or nothing changes.
    fn commit(&mut self, txn: &Txn) -> bool {
        let holds = txn.compare.iter().all(|c| {
            let CompareTarget::ModRevision(m) = c.target else { return false };
            self.keys.get(&c.key).map_or(0, |(r, _)| *r) == m
        });
        if !holds {
            return false;
        }
        self.revision += 1;
        for op in &txn.success {
            match op {
                Op::Put { key, value, .. } => {
                    self.keys.insert(key.clone(), (self.revision, value.clone()));
                }
                Op::Delete { range: KeyRange::Key(k) } => {
                    self.keys.remove(k);
                }
                other => panic!("the plan wrote {other:?}"),
            }
        }
        true
    }

    fn list<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<Versioned<T>> {
        self.keys
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, (r, v))| Versioned { key: k.clone(), mod_revision: *r, value: decode_record(v).unwrap() })
            .collect()
    }
}

/// A node of the simulation: the instances it runs, with the step each became ready.
#[derive(Default)]
struct SimNode {
    up: bool,
    running: BTreeMap<String, u64>,
    /// When its last report reached the leader, and the report.
    last: Option<(u64, NodeReport)>,
}

/// One step's faults: which nodes are down, and which nodes' reports are lost.
#[derive(Clone, Debug)]
struct Faults {
    down: Vec<bool>,
    lost: Vec<bool>,
}

const NODES: u64 = 3;
const STEP_MS: u64 = 1_000;
/// Instances become ready this many steps after they start.
const READY_AFTER: u64 = 2;

struct Sim {
    kv: Kv,
    nodes: BTreeMap<NodeId, SimNode>,
    step: u64,
    revisions: Vec<RevisionRecord>,
    ids: Seq,
}

impl Sim {
    fn new(rec: DeploymentRecord, revisions: Vec<RevisionRecord>) -> Sim {
        let mut kv = Kv::default();
        kv.commit(&Txn {
            success: vec![put(keys::DEPLOYMENTS.key_of("default", "web").into_bytes(), encode(&rec).unwrap())],
            ..Txn::default()
        });
        let nodes = (1..=NODES).map(|id| (id, SimNode { up: true, ..SimNode::default() })).collect();
        Sim { kv, nodes, step: 0, revisions, ids: Seq(0) }
    }

    fn record(&self) -> DeploymentRecord {
        self.kv.list::<DeploymentRecord>(keys::DEPLOYMENTS.prefix()).remove(0).value
    }

    fn instances(&self) -> Vec<InstanceRecord> {
        self.kv.list::<InstanceRecord>(keys::INSTANCES.prefix()).into_iter().map(|v| v.value).collect()
    }

    /// Instances that run, are ready and are not being stopped, by what the nodes really do.
    fn ready(&self) -> Vec<String> {
        self.instances()
            .into_iter()
            .filter(|i| i.desired == Desired::Run)
            .filter(|i| {
                let n = &self.nodes[&i.node];
                n.up && n.running.get(&i.id).is_some_and(|since| self.step >= since + READY_AFTER)
            })
            .map(|i| i.id)
            .collect()
    }

    /// The nodes act on their records and report (unless down or their report is lost); then
    /// the leader plans once and commits. Returns what the leader planned from, and its writes.
    fn tick(&mut self, faults: &Faults) -> (Snapshot, Vec<Write>) {
        self.step += 1;
        let instances = self.instances();
        for (idx, (id, node)) in self.nodes.iter_mut().enumerate() {
            let was_up = node.up;
            node.up = !faults.down[idx];
            if !node.up {
                // A node that goes down loses what it ran.
                node.running.clear();
                continue;
            }
            if !was_up {
                node.running.clear();
            }
            let mine: Vec<&InstanceRecord> = instances.iter().filter(|i| i.node == *id).collect();
            node.running.retain(|rid, _| mine.iter().any(|i| i.id == *rid && i.desired == Desired::Run));
            for i in mine.iter().filter(|i| i.desired == Desired::Run) {
                node.running.entry(i.id.clone()).or_insert(self.step);
            }
            if faults.lost[idx] {
                continue;
            }
            let reports = node
                .running
                .iter()
                .map(|(rid, since)| {
                    let ready = self.step >= since + READY_AFTER;
                    let mut r = running(rid, if ready { (self.step - since - READY_AFTER) * STEP_MS } else { 0 });
                    r.ready = ready;
                    r
                })
                .collect();
            node.last = Some((self.step, node_report(*id, reports, self.kv.revision)));
        }
        let now = self.step * STEP_MS;
        let reports = self
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                n.last.as_ref().map(|(at, r)| (*id, (Duration::from_millis(now - at * STEP_MS), r.clone())))
            })
            .collect();
        let snap = Snapshot {
            deployments: self.kv.list(keys::DEPLOYMENTS.prefix()),
            revisions: BTreeMap::from([("default/web".to_string(), self.revisions.clone())]),
            instances: self.kv.list(keys::INSTANCES.prefix()),
            reports,
            leading_for: Duration::from_secs(3600),
            ..Snapshot::default()
        };
        let writes = plan(&snap, GRACE, now, &mut self.ids).expect("a plan");
        for w in &writes {
            assert!(self.kv.commit(&w.txn), "a write planned from the latest state lost a race: {w:?}");
        }
        (snap, writes)
    }
}

/// The instances the snapshot shows ready and not being stopped, on nodes within the grace.
fn seen_ready(snap: &Snapshot) -> Vec<String> {
    snap.instances
        .iter()
        .map(|v| &v.value)
        .filter(|i| i.desired == Desired::Run)
        .filter(|i| {
            snap.reports
                .get(&i.node)
                .is_some_and(|(age, r)| *age < GRACE && r.instances.iter().any(|x| x.id == i.id && x.ready))
        })
        .map(|i| i.id.clone())
        .collect()
}

fn faults(max_steps: usize) -> impl Strategy<Value = Vec<Faults>> {
    let n = NODES as usize;
    prop::collection::vec(
        (prop::collection::vec(prop::bool::weighted(0.08), n), prop::collection::vec(prop::bool::weighted(0.25), n))
            .prop_map(|(down, lost)| Faults { down, lost }),
        10..max_steps,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Through node loss and lost reports, a rollout never has more than `replicas + maxSurge`
    /// instance records, the plan's own stops never take the ready instances below
    /// `replicas - maxUnavailable` (when that many were ready), and once the faults stop the
    /// deployment completes on the new revision with exactly `replicas` instances.
    #[test]
    fn rollouts_keep_their_bounds_through_faults_and_converge(
        replicas in 1u32..6,
        (surge, unavailable) in prop::sample::select(vec![(1u32, 0u32), (0, 1), (2, 1), (1, 1), (3, 0)]),
        faults in faults(60),
        update_at in 0usize..30,
    ) {
        let strategy = format!("{{maxSurge: {surge}, maxUnavailable: {unavailable}}}");
        let (rec, revisions) = deployment(replicas, &strategy, "a");
        let mut sim = Sim::new(rec, revisions);
        let quiet = Faults { down: vec![false; NODES as usize], lost: vec![false; NODES as usize] };
        // A first rollout without faults, then an update while the faults run.
        for _ in 0..30 {
            sim.tick(&quiet);
        }
        prop_assert_eq!(sim.record().phase, Phase::Complete);
        for (t, f) in faults.iter().enumerate() {
            if t == update_at {
                let yaml = format!("apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template: {{command: [b]}}\n  strategy: {strategy}\n");
                let Object::Deployment(d) = parse(&yaml) else { unreachable!() };
                let kv = sim.kv.list::<DeploymentRecord>(keys::DEPLOYMENTS.prefix()).remove(0);
                let a = rollout::apply(Some(&kv.value), &sim.revisions, &d, "uid-1", sim.step * STEP_MS);
                sim.revisions.extend(a.new_revision);
                let txn = Txn {
                    compare: vec![unchanged(&kv.key, kv.mod_revision)],
                    success: vec![put(kv.key.clone(), encode(&a.record).unwrap())],
                    ..Txn::default()
                };
                prop_assert!(sim.kv.commit(&txn), "the update was not written");
            }
            let (snap, writes) = sim.tick(f);
            let records = sim.instances().len() as u32;
            prop_assert!(records <= replicas + surge, "step {}: {} instance records > {} + {}", t, records, replicas, surge);
            // Among the instances the leader saw ready, those its writes took out of service.
            let ready_seen = seen_ready(&snap);
            let still: Vec<String> = sim.instances().into_iter().filter(|i| i.desired == Desired::Run).map(|i| i.id).collect();
            let kept = ready_seen.iter().filter(|id| still.contains(id)).count() as u32;
            let floor = (replicas - unavailable).min(ready_seen.len() as u32);
            prop_assert!(kept >= floor, "step {}: {} of {} ready instances kept (floor {}), writes {:?}", t, kept, ready_seen.len(), floor, writes);
        }
        // The faults stop: the deployment converges.
        for _ in 0..60 {
            sim.tick(&quiet);
        }
        let rec = sim.record();
        let instances = sim.instances();
        prop_assert_eq!(rec.phase, Phase::Complete, "events {:?}", rec.events);
        prop_assert_eq!(instances.len() as u32, replicas);
        prop_assert!(instances.iter().all(|i| i.revision == rec.revision && i.desired == Desired::Run));
        prop_assert_eq!(sim.ready().len() as u32, replicas);
    }
}

/// Deployment `default/NAME` with a port `http`, providing service `web` on it, created at
/// `created_ms`.
fn serving(name: &str, replicas: u32, created_ms: u64) -> DeploymentRecord {
    let yaml = format!(
        "apiVersion: hsu/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template: {{command: [x], ports: [{{name: http}}]}}\n  service: {{name: web, port: http}}\n"
    );
    let Object::Deployment(d) = parse(&yaml) else { unreachable!() };
    let mut rec = rollout::apply(None, &[], &d, &format!("uid-{name}"), created_ms).record;
    rec.created_ms = created_ms;
    rec
}

fn on_port(mut r: InstanceReport, port: u16) -> InstanceReport {
    r.ports.insert("http".into(), port);
    r
}

fn service_record(endpoints: Vec<Endpoint>) -> Versioned<ServiceRecord> {
    let value = ServiceRecord {
        namespace: "default".into(),
        name: "web".into(),
        deployment: "web".into(),
        port: "http".into(),
        endpoints,
    };
    versioned(keys::SERVICES.key_of("default", "web"), 20, value)
}

/// Only the service writes of a pass.
fn check_services(snap: &Snapshot, expected: Expect) {
    let writes: Vec<Write> = plan(snap, GRACE, 1_000, &mut Seq(0))
        .expect("a plan")
        .into_iter()
        .filter(|w| w.what.starts_with("service "))
        .collect();
    expected.assert_eq(&render(&writes));
}

#[test]
fn a_service_lists_the_running_instances_on_their_ports_and_says_which_are_ready() {
    let rec = serving("web", 3, 0);
    let instances =
        vec![instance_of(&rec, "web-a", 1, 10), instance_of(&rec, "web-b", 2, 11), instance_of(&rec, "web-c", 2, 12)];
    let mut not_ready = on_port(running("web-b", 0), 4002);
    not_ready.ready = false;
    let starting = InstanceReport { state: "starting".into(), ..on_port(running("web-c", 0), 4003) };
    let reports = two_nodes([vec![on_port(running("web-a", 500), 4001)], vec![not_ready, starting]], 12);
    let snap = Snapshot { instances, reports, ..web(rec, vec![], 9) };
    check_services(
        &snap,
        expect![[r#"
            write service default/web
              unchanged /services/default/web @0
              put /services/default/web: service of web on http: [web-a@n1:4001, web-b@n2:4002 (not ready)]
        "#]],
    );
    // Once written, the same world writes nothing.
    let writes = plan(&snap, GRACE, 1_000, &mut Seq(0)).unwrap();
    let Op::Put { value, .. } = &writes.iter().find(|w| w.what == "service default/web").unwrap().txn.success[0] else {
        panic!("a put")
    };
    let written = decode_record::<ServiceRecord>(value).unwrap();
    let snap = Snapshot { services: vec![versioned(keys::SERVICES.key_of("default", "web"), 20, written)], ..snap };
    check_services(&snap, expect!["no writes\n"]);
}

#[test]
fn a_new_master_without_reports_keeps_the_endpoints_it_knows_and_a_down_node_loses_them() {
    let rec = serving("web", 2, 0);
    let instances = vec![instance_of(&rec, "web-a", 1, 10), instance_of(&rec, "web-b", 2, 11)];
    let known = vec![
        Endpoint { instance: "web-a".into(), node: 1, port: 4001, ready: true },
        Endpoint { instance: "web-b".into(), node: 2, port: 4002, ready: true },
    ];
    let snap = Snapshot { instances, services: vec![service_record(known)], ..web(rec, vec![], 9) };
    check_services(&snap, expect!["no writes\n"]);

    // Node 2 reports nothing for the grace period; node 1 still runs web-a.
    let mut reports = two_nodes([vec![on_port(running("web-a", 500), 4001)], vec![]], 12);
    reports.get_mut(&2).unwrap().0 = GRACE;
    let snap = Snapshot { reports, ..snap };
    check_services(
        &snap,
        expect![[r#"
            write service default/web
              unchanged /services/default/web @20
              put /services/default/web: service of web on http: [web-a@n1:4001]
        "#]],
    );
}

#[test]
fn instances_marked_to_stop_leave_the_service_and_a_service_nobody_provides_is_deleted() {
    let rec = serving("web", 1, 0);
    let mut stopping = instance_of(&rec, "web-a", 1, 10);
    stopping.value.desired = Desired::Stop;
    let reports = two_nodes([vec![on_port(running("web-a", 500), 4001)], vec![]], 12);
    let known = vec![Endpoint { instance: "web-a".into(), node: 1, port: 4001, ready: true }];
    let snap =
        Snapshot { instances: vec![stopping], reports, services: vec![service_record(known)], ..web(rec, vec![], 9) };
    check_services(
        &snap,
        expect![[r#"
            write service default/web
              unchanged /services/default/web @20
              put /services/default/web: service of web on http: []
        "#]],
    );
    let snap = Snapshot { deployments: vec![], ..snap };
    check_services(
        &snap,
        expect![[r#"
            write service default/web
              unchanged /services/default/web @20
              delete /services/default/web
        "#]],
    );
}

#[test]
fn of_two_deployments_that_name_one_service_the_older_provides_it() {
    let (old, new) = (serving("web-old", 1, 5), serving("web-new", 1, 3_000));
    let instances = vec![instance_of(&old, "web-old-a", 1, 10), instance_of(&new, "web-new-a", 2, 11)];
    let reports =
        two_nodes([vec![on_port(running("web-old-a", 500), 4001)], vec![on_port(running("web-new-a", 500), 4002)]], 12);
    let deployments = vec![
        versioned(keys::DEPLOYMENTS.key_of("default", "web-new"), 8, new),
        versioned(keys::DEPLOYMENTS.key_of("default", "web-old"), 7, old),
    ];
    let snap = Snapshot { deployments, instances, reports, ..Snapshot::default() };
    check_services(
        &snap,
        expect![[r#"
            write service default/web
              unchanged /services/default/web @0
              put /services/default/web: service of web-old on http: [web-old-a@n1:4001]
        "#]],
    );
}
