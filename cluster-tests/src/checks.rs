//! The checkers: linearizability of the register history, no acknowledged set add lost (and no
//! add that was reported as failed present), counter increments applied exactly once, at most
//! one leader per term, recovery time, and enough acknowledged operations for any of it to mean
//! something.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hsu_lincheck::{Checker, Outcome, Verdict};
use hsu_proto::v1 as pb;
use hsu_sdk::client::ClientConfig;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::workload::{FinalCounter, History};

/// One checker's verdict: a short cell for the table and, when it fails, the details.
#[derive(Clone, Debug)]
pub struct Check {
    pub ok: bool,
    pub cell: String,
    pub detail: String,
}

impl Check {
    pub fn pass(cell: impl Into<String>) -> Check {
        Check { ok: true, cell: cell.into(), detail: String::new() }
    }

    pub fn fail(cell: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { ok: false, cell: cell.into(), detail: detail.into() }
    }
}

/// The register history against the linearizability checker (on a blocking thread: the search
/// is CPU-bound).
pub async fn linearizable(history: &History) -> Check {
    let ops = history.ops.clone();
    let started = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || Checker::new().check(&ops)).await;
    let took = started.elapsed();
    match verdict {
        Ok(Verdict::Linearizable) => Check::pass(format!("ok ({:.1}s)", took.as_secs_f64())),
        Ok(Verdict::NotLinearizable { key, ops, reason }) => Check::fail(
            "NOT LINEARIZABLE",
            format!(
                "key {:?} ({} operations: {:?}...): {reason}",
                String::from_utf8_lossy(&key),
                ops.len(),
                &ops[..ops.len().min(20)]
            ),
        ),
        Ok(Verdict::Unknown { key, explored }) => Check::fail(
            "unknown",
            format!("the search gave up on key {:?} after {explored} configurations", String::from_utf8_lossy(&key)),
        ),
        Err(e) => Check::fail("checker panicked", e.to_string()),
    }
}

/// Every acknowledged add is in the final set; no add the server refused before proposing is.
pub fn nothing_lost(history: &History, final_set: &Result<Vec<String>, String>) -> Check {
    let present: HashSet<&str> = match final_set {
        Ok(keys) => keys.iter().map(String::as_str).collect(),
        Err(e) => return Check::fail("no final read", e.clone()),
    };
    let acked: Vec<&str> = history.adds.iter().filter(|(_, o)| *o == Outcome::Ok).map(|(k, _)| k.as_str()).collect();
    let lost: Vec<&str> = acked.iter().copied().filter(|k| !present.contains(k)).collect();
    let phantom: Vec<&str> = history
        .adds
        .iter()
        .filter(|(k, o)| *o == Outcome::Failed && present.contains(k.as_str()))
        .map(|(k, _)| k.as_str())
        .collect();
    if lost.is_empty() && phantom.is_empty() {
        return Check::pass(format!("ok ({} acked)", acked.len()));
    }
    let mut detail = String::new();
    if !lost.is_empty() {
        detail += &format!(
            "{} of {} acknowledged adds are missing: {:?}. ",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(20)]
        );
    }
    if !phantom.is_empty() {
        detail += &format!(
            "{} adds reported as not proposed are present: {:?}",
            phantom.len(),
            &phantom[..phantom.len().min(20)]
        );
    }
    Check::fail(if lost.is_empty() { "failed add applied" } else { "LOST WRITES" }, detail)
}

/// The counter ends equal to its recorded increments, one per value, each increment's id at
/// most once (a write applied twice shows as its id under two values); every acknowledged
/// increment is there, none reported as not applied is, and the rest are indeterminate ones.
pub fn exactly_once(history: &History, final_counter: &Result<FinalCounter, String>) -> Check {
    let (value, incs) = match final_counter {
        Ok(c) => c,
        Err(e) => return Check::fail("no final read", e.clone()),
    };
    let told: BTreeMap<&str, Outcome> = history.increments.iter().map(|(u, o)| (u.as_str(), *o)).collect();
    let mut problems = Vec::new();
    let values: Vec<u64> = incs.iter().map(|(n, _)| *n).collect();
    if values != (1..=*value).collect::<Vec<u64>>() {
        problems.push(format!("the counter is {value} but the increments recorded are for {values:?}"));
    }
    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (n, uid) in incs {
        seen.entry(uid.as_str()).or_default().push(*n);
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, ns)| ns.len() > 1).collect();
    if !duplicates.is_empty() {
        problems.push(format!("{} increments applied more than once: {:?}", duplicates.len(), duplicates));
    }
    let acked: Vec<&str> = told.iter().filter(|(_, o)| **o == Outcome::Ok).map(|(u, _)| *u).collect();
    let lost: Vec<&&str> = acked.iter().filter(|u| !seen.contains_key(**u)).collect();
    if !lost.is_empty() {
        problems.push(format!("{} acknowledged increments are missing: {lost:?}", lost.len()));
    }
    let phantom: Vec<&str> =
        seen.keys().copied().filter(|u| !matches!(told.get(u), Some(Outcome::Ok | Outcome::Indeterminate))).collect();
    if !phantom.is_empty() {
        problems.push(format!(
            "{} increments applied that were reported as not applied (or never sent): {phantom:?}",
            phantom.len()
        ));
    }
    if problems.is_empty() {
        let maybe = seen.len() - acked.len();
        Check::pass(format!("ok ({} acked + {maybe} indeterminate = {value}, 0 dup)", acked.len()))
    } else {
        Check::fail(if duplicates.is_empty() { "WRONG COUNT" } else { "DUPLICATES" }, problems.join(". "))
    }
}

/// At least `min` operations were acknowledged: checkers over an empty history pass on nothing.
pub fn enough(counts: (usize, usize, usize), min: usize) -> Check {
    if counts.0 >= min {
        Check::pass(format!("ok ({} acked)", counts.0))
    } else {
        Check::fail("TOO FEW", format!("only {} operations were acknowledged (at least {min} needed)", counts.0))
    }
}

/// (term, leader id, observer index, milliseconds since the epoch of the run).
pub type LeaderSample = (u64, u64, usize, u64);

/// Polls `Cluster/Status` of every endpoint every ~100 ms and records (term, leader) pairs.
pub struct LeaderPoller {
    samples: Arc<Mutex<Vec<LeaderSample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LeaderPoller {
    pub fn start(
        admin: &ClientConfig,
        endpoints: Vec<String>,
        epoch: Instant,
        stop: watch::Receiver<bool>,
        max: Duration,
    ) -> LeaderPoller {
        let samples: Arc<Mutex<Vec<LeaderSample>>> = Default::default();
        let tasks = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                let (admin, samples, mut stop) = (admin.clone(), samples.clone(), stop.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + max;
                    let mut client = None;
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !*stop.borrow() && Instant::now() < deadline {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stop.changed() => break,
                        }
                        if client.is_none() {
                            client = Cluster::connect(&admin, &ep).await.ok().map(|(c, _)| c);
                        }
                        let Some(c) = client.as_mut() else { continue };
                        match tokio::time::timeout(Duration::from_secs(1), c.status(pb::StatusRequest {})).await {
                            Ok(Ok(s)) => {
                                let s = s.into_inner();
                                if s.leader_id != 0 {
                                    let at = epoch.elapsed().as_millis() as u64;
                                    samples.lock().unwrap_or_else(|p| p.into_inner()).push((
                                        s.term,
                                        s.leader_id,
                                        i,
                                        at,
                                    ));
                                }
                            }
                            Ok(Err(_)) => {}
                            Err(_) => client = None,
                        }
                    }
                })
            })
            .collect();
        LeaderPoller { samples, tasks }
    }

    pub async fn finish(self) -> Vec<LeaderSample> {
        for t in self.tasks {
            let _ = t.await;
        }
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        samples
    }
}

/// At most one leader per term among everything the nodes reported.
pub fn one_leader_per_term(samples: &[LeaderSample]) -> Check {
    let mut by_term: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(term, leader, _, _) in samples {
        by_term.entry(term).or_default().insert(leader);
    }
    let bad: Vec<(u64, &BTreeSet<u64>)> = by_term.iter().filter(|(_, l)| l.len() > 1).map(|(t, l)| (*t, l)).collect();
    if samples.is_empty() {
        return Check::fail("no samples", "no node ever reported a leader");
    }
    if bad.is_empty() {
        return Check::pass(format!("ok ({} terms)", by_term.len()));
    }
    let mut detail = String::new();
    for (term, leaders) in &bad {
        let seen: Vec<String> = samples
            .iter()
            .filter(|s| s.0 == *term)
            .map(|s| format!("node {} by observer h{} at {} ms", s.1, s.2 + 1, s.3))
            .collect();
        detail += &format!("term {term} had leaders {leaders:?}: {}; ", seen.join(", "));
    }
    Check::fail("TWO LEADERS", detail)
}

/// The cluster must serve writes again within `limit` after the faults stop.
pub fn recovered(measured: &Result<Duration, String>, limit: Duration) -> Check {
    match measured {
        Ok(d) if *d <= limit => Check::pass(format!("{:.1}s", d.as_secs_f64())),
        Ok(d) => Check::fail(format!("{:.1}s > {}s", d.as_secs_f64(), limit.as_secs()), "too slow"),
        Err(e) => Check::fail("no writes", e.clone()),
    }
}
