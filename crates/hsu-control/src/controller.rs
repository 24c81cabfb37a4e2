//! The controller loop, run by every server and active only while it leads: read → plan →
//! commit. Each pass reads a [`Snapshot`] (deployments, revisions, jobs and instances from the
//! store; the nodes' last reports from [`Reports`], memory only), runs the pure [`plan`], and
//! commits its writes one transaction per owner, each compared on the mod revision of every
//! record it was planned from. A write that loses a race changes nothing and the next pass plans
//! again from the store, so nothing is kept between passes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsu_model::keys::{self, Within};
use hsu_model::state::NodeReport;
use hsu_model::NodeId;
use hsu_store::{KeyRange, Store, Txn};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::plan::{plan, RandomIds, Snapshot, Versioned};
use crate::Error;

/// The nodes' last reports, kept by the leader (heartbeats never go through Raft).
#[derive(Default)]
pub struct Reports {
    inner: Mutex<BTreeMap<NodeId, (Instant, NodeReport)>>,
    changed: Notify,
}

impl Reports {
    pub fn record(&self, report: NodeReport) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let changed = map.get(&report.node).is_none_or(|(_, old)| old.instances != report.instances);
        map.insert(report.node, (Instant::now(), report));
        drop(map);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Every node's last report and how long ago it came.
    pub fn snapshot(&self) -> BTreeMap<NodeId, (Duration, NodeReport)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(id, (at, r))| (*id, (at.elapsed(), r.clone()))).collect()
    }

    /// Forgets everything (a node that stops leading must not trust old reports later).
    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A node that has not reported for this long is down; its instances are replaced.
    pub node_grace: Duration,
    /// The longest pause between passes: changes of deployments, jobs and instances and changed
    /// reports start one at once.
    pub interval: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { node_grace: Duration::from_secs(10), interval: Duration::from_millis(250) }
    }
}

/// Runs until `stop` resolves: passes while this store's member leads.
pub async fn run(
    store: Store,
    reports: Arc<Reports>,
    config: ControllerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut status = store.status_watch();
    loop {
        // Wait to lead.
        let lead = status.wait_for(|s| s.leader == Some(store.id()) && s.is_leader());
        let leading = tokio::select! {
            l = lead => l,
            () = &mut stop => return,
        };
        let Ok(leading) = leading else { return };
        let term = leading.term;
        info!(term, "leading: the controllers run here");
        reports.clear();
        let since = Instant::now();
        let from = store.applied_index() + 1;
        let mut watchers: Vec<hsu_store::Watcher> =
            [keys::DEPLOYMENTS.prefix(), keys::JOBS.prefix(), keys::INSTANCES.prefix()]
                .iter()
                .filter_map(|p| store.watch(KeyRange::Prefix(p.as_bytes().to_vec()), from).ok())
                .collect();
        loop {
            let still = {
                let s = status.current();
                s.leader == Some(store.id()) && s.term == term
            };
            if !still {
                info!("no longer leading: the controllers stop here");
                reports.clear();
                break;
            }
            if let Err(e) = pass(&store, &reports, &config, since.elapsed()).await {
                debug!("controller pass: {e}");
            }
            // The next pass: when deployments, jobs or instances change, when a report changes,
            // or after `interval` (deadlines, node liveness, leadership).
            tokio::select! {
                () = tokio::time::sleep(config.interval) => {}
                () = reports.changed.notified() => {}
                () = state_changed(&mut watchers) => {}
                () = &mut stop => return,
            }
        }
    }
}

async fn commit(store: &Store, txn: Txn, what: &str) -> Result<(), Error> {
    if txn.success.is_empty() {
        return Ok(());
    }
    match store.txn(txn).await {
        Ok(r) if r.succeeded => Ok(()),
        Ok(_) => {
            debug!(%what, "step lost a race; next pass");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Resolves when any of `watchers` sees a change (never, when there are none), after taking
/// every change already there: one pass covers them all. A watcher that fails (its history was
/// compacted) is dropped; the interval still starts passes.
async fn state_changed(watchers: &mut Vec<hsu_store::Watcher>) {
    use futures::FutureExt;
    if watchers.is_empty() {
        return std::future::pending().await;
    }
    let (result, index, rest) = futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.next()))).await;
    drop(rest);
    if result.is_err() {
        watchers.remove(index);
        return;
    }
    for w in watchers.iter_mut() {
        for _ in 0..10_000 {
            match w.next().now_or_never() {
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
}

/// Reads what a pass plans from: the records in `within` that decode, and the keys of those
/// that do not.
fn read<T: serde::de::DeserializeOwned>(store: &Store, within: &Within<T>) -> (Vec<Versioned<T>>, Vec<Vec<u8>>) {
    let r = store.range_local(&KeyRange::from(within), 0);
    let (good, bad) = hsu_store::record::records_in(within, r.kvs);
    for (key, e) in &bad {
        warn!(key = %String::from_utf8_lossy(key), "record does not decode: {e}");
    }
    (good, bad.into_iter().map(|(key, _)| key).collect())
}

/// Everything one pass plans from, read from this member's applied state.
fn snapshot(store: &Store, reports: &Reports, leading_for: Duration) -> Snapshot {
    let (deployments, bad_deployments) = read(store, &keys::DEPLOYMENTS.all());
    let (jobs, bad_jobs) = read(store, &keys::JOBS.all());
    let (instances, _) = read(store, &keys::INSTANCES.all());
    let (services, _) = read(store, &keys::SERVICES.all());
    let revisions = deployments
        .iter()
        .map(|d| {
            let (ns, name) = (&d.value.namespace, &d.value.name);
            let (revs, _) = read(store, &keys::REVISIONS.of(ns, name));
            (format!("{ns}/{name}"), revs.into_iter().map(|r| r.value).collect())
        })
        .collect();
    Snapshot {
        deployments,
        revisions,
        jobs,
        instances,
        services,
        undecodable_owners: bad_deployments.into_iter().chain(bad_jobs).collect(),
        reports: reports.snapshot(),
        leading_for,
    }
}

/// One pass over every deployment and job: read, [`plan`], commit each write in turn.
/// `leading_for`: how long this node has led.
pub async fn pass(
    store: &Store,
    reports: &Reports,
    config: &ControllerConfig,
    leading_for: Duration,
) -> Result<(), Error> {
    let snap = snapshot(store, reports, leading_for);
    for write in plan(&snap, config.node_grace, now_ms(), &mut RandomIds)? {
        debug!(owner = %write.what, ops = write.txn.success.len(), "controller write");
        commit(store, write.txn, &write.what).await?;
    }
    Ok(())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
